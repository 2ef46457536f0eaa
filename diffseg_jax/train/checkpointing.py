"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``, with automatic resume.

A checkpoint is restored only into a state of the same structure and shapes: restoring the
checkpoint of another model fails with the list of differences, never partially. Shapes alone
do not tell every model apart (a different head count or noise schedule has the same
parameters), so each run also keeps the config it started with in ``<workdir>/config.json``
and a resumed run must agree with it on :data:`RESUME_KEYS`.
"""

import json
import pathlib
from typing import Any

import jax
import ml_collections
import orbax.checkpoint as ocp
from absl import logging

from diffseg_jax import config as config_lib
from diffseg_jax import files

CONFIG_FILE = "config.json"
# Config entries (sections or dotted keys) a resumed or sampled run must share with the run
# that wrote the checkpoints: they define the model, its diffusion and the data it models.
RESUME_KEYS = ("method", "model", "diffusion", "segdiff", "data.image_size", "data.channels",
               "data.num_classes", "data.mask_classes")


def _key_name(key) -> str:
  for attr in ("key", "name", "idx"):
    if hasattr(key, attr):
      return str(getattr(key, attr))
  return str(key)


def _shapes_by_path(tree) -> dict[str, tuple[int, ...]]:
  leaves, _ = jax.tree_util.tree_flatten_with_path(tree)
  return {"/".join(_key_name(k) for k in path): tuple(leaf.shape) for path, leaf in leaves}


def structure_differences(saved_tree, target_tree) -> list[str]:
  """Lists the leaves missing from, extra in, or shaped differently in ``saved_tree``."""
  saved, target = _shapes_by_path(saved_tree), _shapes_by_path(target_tree)
  lines = [f"missing in checkpoint: {k} {target[k]}" for k in sorted(target.keys() - saved)]
  lines += [f"not in this model: {k} {saved[k]}" for k in sorted(saved.keys() - target)]
  lines += [f"shape differs: {k} checkpoint {saved[k]} vs model {target[k]}"
            for k in sorted(saved.keys() & target) if saved[k] != target[k]]
  return lines


def _resume_entries(config: dict[str, Any]) -> dict[str, Any]:
  """The :data:`RESUME_KEYS` leaves of a config dict, as JSON values (tuples become lists);
  without ``diffusion`` for the supervised segmenter, which has none."""
  flat = config_lib.flatten(ml_collections.ConfigDict(config))
  keys = [k for k in RESUME_KEYS if not (k == "diffusion" and flat.get("method") == "supervised")]
  chosen = {k: v for k, v in flat.items()
            if any(k == key or k.startswith(key + ".") for key in keys)}
  return json.loads(json.dumps(chosen, default=str))


def write_run_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path,
                     start_step: int) -> pathlib.Path:
  """Keeps the config of a run beside its checkpoints (written by process 0 only).

  A fresh run (``start_step == 0``) writes ``<workdir>/config.json``; a resumed run never
  overwrites it and records its own config as ``config_resumed_step<N>.json`` instead.

  Returns:
    The path written (on every process).
  """
  name = CONFIG_FILE if start_step == 0 else f"config_resumed_step{start_step}.json"
  path = pathlib.Path(workdir) / name
  if jax.process_index() == 0:
    files.write_json(path, config.to_dict())
  return path


def check_run_config(config: ml_collections.ConfigDict, workdir: str | pathlib.Path) -> None:
  """Checks that ``config`` describes the model whose checkpoints are in ``workdir``.

  Compares the :data:`RESUME_KEYS` entries of ``config`` with ``<workdir>/config.json``. A
  workdir without that file (written by an older version) is accepted with a warning.

  Raises:
    ValueError: entries differ; lists each dotted key with both values.
  """
  path = pathlib.Path(workdir) / CONFIG_FILE
  if not path.exists():
    logging.warning("%s is missing: cannot check that the config matches the checkpoints in "
                    "%s beyond parameter shapes.", path, workdir)
    return
  saved = _resume_entries(json.loads(path.read_text()))
  current = _resume_entries(config.to_dict())
  missing = "<absent>"
  lines = [f"  {k}: {saved.get(k, missing)!r} in {CONFIG_FILE}, {current.get(k, missing)!r} now"
           for k in sorted(saved.keys() | current.keys()) if saved.get(k, missing) !=
           current.get(k, missing)]
  if lines:
    raise ValueError(
        f"The checkpoints in {workdir} were trained with a different model, diffusion or data "
        f"shape than this config describes ({len(lines)} difference(s)):\n" + "\n".join(lines) +
        f"\nUse a new --workdir for this config, or rerun with the original values (recorded in "
        f"{path}).")


class Checkpointer:
  """Keeps the latest ``keep`` checkpoints of a run and restores the newest one."""

  def __init__(self, workdir: str | pathlib.Path, keep: int):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    """The step of the newest complete checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def _step_or_latest(self, step: int | None) -> int:
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}; train first (--mode=train).")
    return step

  def saved_structure(self, step: int | None = None) -> Any:
    """The tree of checkpoint ``step`` (default: the latest) with shape/dtype leaves.

    Raises:
      FileNotFoundError: no checkpoint in the run directory.
    """
    return self._manager.item_metadata(self._step_or_latest(step)).tree

  def _check_structure(self, step: int, saved: Any, target: Any) -> None:
    differences = structure_differences(saved, target)
    if differences:
      shown = "\n  ".join(differences[:20])
      more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
      raise ValueError(
          f"The checkpoint at step {step} in {self.directory} is of a different model than the "
          f"config describes ({len(differences)} differences):\n  {shown}{more}\n"
          "Use a new --workdir for a new model, or the config the checkpoint was trained with.")

  def restore(self, target: Any, step: int | None = None) -> Any:
    """Restores checkpoint ``step`` (default: the latest) into ``target``'s structure.

    Args:
      target: a state, or its ``jax.ShapeDtypeStruct`` tree (with shardings), giving the
        structure, shapes, dtypes and layout to restore into.
      step: which checkpoint; None for the latest.

    Raises:
      FileNotFoundError: no checkpoint in the run directory.
      ValueError: the checkpoint belongs to a model of another structure; lists the differences.
    """
    step = self._step_or_latest(step)
    self._check_structure(step, self.saved_structure(step), target)
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def restore_entries(self, target: dict[str, Any], step: int | None = None) -> dict[str, Any]:
    """Restores only some top-level entries of checkpoint ``step`` (default: the latest).

    The other entries (e.g. the optimiser state) are not read, so they need not match.

    Args:
      target: ``{entry name: jax.ShapeDtypeStruct tree (with shardings)}``, e.g. for
        ``"step"`` and ``"params"`` of a saved train state.
      step: which checkpoint; None for the latest.

    Returns:
      ``{entry name: restored tree}`` with the structure of ``target``.

    Raises:
      FileNotFoundError: no checkpoint in the run directory.
      ValueError: an entry is missing or its structure differs; lists the differences.
    """
    step = self._step_or_latest(step)
    saved = self.saved_structure(step)
    self._check_structure(step, {k: saved[k] for k in target if k in saved}, target)
    # A StandardSave checkpoint is a PyTree checkpoint: its handler reads a subset of entries.
    reader = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(read_only=True),
        item_handlers=ocp.PyTreeCheckpointHandler())
    try:
      return reader.restore(step, args=ocp.args.PyTreeRestore(
          item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
          partial_restore=True))
    finally:
      reader.close()

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously; the checkpoint becomes visible only once completely written."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def wait(self) -> None:
    """Blocks until every checkpoint being written asynchronously is complete."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's threads."""
    self._manager.close()
