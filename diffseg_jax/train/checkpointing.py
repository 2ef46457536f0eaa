"""Orbax checkpoints of the train state in ``<workdir>/checkpoints``, with automatic resume.

A checkpoint is restored only into a state of the same structure and shapes: restoring the
checkpoint of another model fails with the list of differences, never partially.
"""

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp


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


class Checkpointer:
  """Keeps the latest ``keep`` checkpoints of a run and restores the newest one."""

  def __init__(self, workdir: str | pathlib.Path, keep: int):
    self.directory = pathlib.Path(workdir).absolute() / "checkpoints"
    self._manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True),
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

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
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}; train first (--mode=train).")
    saved = self._manager.item_metadata(step).tree
    differences = structure_differences(saved, target)
    if differences:
      shown = "\n  ".join(differences[:20])
      more = f"\n  ... and {len(differences) - 20} more" if len(differences) > 20 else ""
      raise ValueError(
          f"The checkpoint at step {step} in {self.directory} is of a different model than the "
          f"config describes ({len(differences)} differences):\n  {shown}{more}\n"
          "Use a new --workdir for a new model, or the config the checkpoint was trained with.")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self._manager.restore(step, args=ocp.args.StandardRestore(abstract))

  def save(self, step: int, state: Any) -> None:
    """Saves asynchronously; the checkpoint becomes visible only once completely written."""
    self._manager.save(step, args=ocp.args.StandardSave(state))

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()
