"""Converting pytorch-fid's Inception weights to ``evaluation.inception.InceptionV3``.

pytorch-fid ports the 2015-12-05 TensorFlow Inception graph to torchvision's module layout and
ships it as ``pt_inception-2015-12-05-6726825d.pth`` (a state dict; read here with
``torch.load(weights_only=True)``, or from ``.safetensors``/``.npz`` copies). Nothing is
downloaded: pass the path of a copy you have.

Key mapping (module names are identical, joined by ``.`` in torch and ``/`` in flax):

=================================  ==============================================
torch                              flax
=================================  ==============================================
``<conv>.conv.weight``             ``params/<conv>/conv/kernel`` (OIHW -> HWIO)
``<conv>.bn.weight``, ``.bias``    ``params/<conv>/bn/scale``, ``.../bn/bias``
``<conv>.bn.running_mean``, ``_var``  ``batch_stats/<conv>/bn/mean``, ``.../bn/var``
``<conv>.bn.num_batches_tracked``  (not used: the statistics are fixed)
``fc.weight`` [1008, 2048]         ``params/fc/kernel`` [2048, 1008]
``fc.bias``                        ``params/fc/bias``
=================================  ==============================================
"""

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax.convert.checkpoint_io import Checkpoint, load_state_dict
from diffseg_jax.evaluation.inception import INPUT_SIZE, InceptionV3

Path = tuple[str, ...]

_BN_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"),
              "running_mean": ("batch_stats", "mean"), "running_var": ("batch_stats", "var")}
_UNUSED_LEAF = "num_batches_tracked"


def convert_entry(key: str, value: np.ndarray) -> tuple[Path, np.ndarray]:
  """One torch entry -> ``((collection, *module path, leaf), float32 array in flax layout)``."""
  *modules, leaf = key.split(".")
  value = np.asarray(value, np.float32)
  if modules and modules[-1] == "bn":
    collection, leaf = _BN_LEAVES[leaf]
    return (collection, *modules, leaf), value
  if leaf == "weight":
    axes = {4: (2, 3, 1, 0), 2: (1, 0)}[value.ndim]
    return ("params", *modules, "kernel"), np.ascontiguousarray(value.transpose(axes))
  return ("params", *modules, leaf), value


def torch_key(path: Path) -> str:
  """The torch key of a flax variable path ``(collection, *modules, leaf)``."""
  _, *modules, leaf = path
  if modules[-1] == "bn":
    leaf = {flax_leaf: torch_leaf for torch_leaf, (_, flax_leaf) in _BN_LEAVES.items()}[leaf]
  elif leaf == "kernel":
    leaf = "weight"
  return ".".join([*modules, leaf])


def expected_variable_shapes() -> dict[Path, tuple[int, ...]]:
  """``{(collection, *modules, leaf): shape}`` of every variable of ``InceptionV3``."""
  variables = jax.eval_shape(InceptionV3().init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32))
  flat = flax.traverse_util.flatten_dict(variables)
  return {path: tuple(leaf.shape) for path, leaf in flat.items()}


def torch_shape(path: Path, shape: tuple[int, ...]) -> tuple[int, ...]:
  """The torch shape of a flax variable of ``shape`` (inverse of :func:`convert_entry`)."""
  if path[-1] != "kernel":
    return shape
  axes = {4: (3, 2, 0, 1), 2: (1, 0)}[len(shape)]
  return tuple(shape[a] for a in axes)


def from_pytorch_fid(checkpoint: Checkpoint) -> dict[str, dict]:
  """Reads pytorch-fid's Inception state dict into ``InceptionV3`` variables.

  Args:
    checkpoint: the path of ``pt_inception-2015-12-05-6726825d.pth`` (or a ``.safetensors``/
      ``.npz`` copy), or a mapping of its keys to arrays or tensors.

  Returns:
    ``{"params": ..., "batch_stats": ...}`` float32 trees for ``InceptionV3().apply``.

  Raises:
    ValueError: listing every missing, unexpected and mis-shaped key.
  """
  state = load_state_dict(checkpoint)
  converted = {}
  sources: dict[Path, str] = {}
  unexpected = []
  for key, value in state.items():
    if key.endswith("." + _UNUSED_LEAF):
      continue
    try:
      path, array = convert_entry(key, value)
    except KeyError:  # a BatchNorm leaf of another name
      unexpected.append(f"  {key} {tuple(value.shape)}")
      continue
    converted[path], sources[path] = array, key
  expected = expected_variable_shapes()
  lines = [f"  {torch_key(p)} (expected shape {torch_shape(p, expected[p])})"
           for p in sorted(set(expected) - set(converted))]
  if lines:
    lines.insert(0, f"missing ({len(lines)}):")
  unexpected += [f"  {sources[p]} {tuple(state[sources[p]].shape)}"
                 for p in sorted(set(converted) - set(expected))]
  if unexpected:
    lines += [f"unexpected ({len(unexpected)}):", *unexpected]
  misshaped = [f"  {sources[p]}: {tuple(state[sources[p]].shape)}, expected "
               f"{torch_shape(p, expected[p])}"
               for p in sorted(set(converted) & set(expected))
               if converted[p].shape != expected[p]]
  if misshaped:
    lines += [f"mis-shaped ({len(misshaped)}):", *misshaped]
  if lines:
    raise ValueError("The checkpoint is not pytorch-fid's Inception "
                     "(pt_inception-2015-12-05-6726825d.pth):\n" + "\n".join(lines))
  variables = flax.traverse_util.unflatten_dict(
      {path: jnp.asarray(array) for path, array in converted.items()})
  return {"params": variables["params"], "batch_stats": variables["batch_stats"]}
