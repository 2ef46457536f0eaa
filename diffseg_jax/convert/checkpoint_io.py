"""Reading PyTorch-style checkpoints into flat ``{state_dict key: numpy array}`` dicts.

Supported sources: ``.pt`` / ``.pth`` files (``torch.load(..., weights_only=True)``; torch is
imported only for these), ``.safetensors`` files, ``.npz`` archives (plain keys, or the parity
fixtures' ``param/<key>`` entries), and in-memory mappings of names to numpy arrays or torch
tensors.
"""

from collections.abc import Mapping
import os
import pathlib
from typing import Any

import numpy as np

Checkpoint = str | os.PathLike | Mapping[str, Any]

_PARAM_PREFIX = "param/"


def _to_numpy(value: Any) -> np.ndarray:
  """Converts a numpy array or torch tensor (any float dtype, incl. bfloat16) to numpy."""
  if hasattr(value, "detach"):
    value = value.detach().cpu()
    if value.is_floating_point():
      value = value.float()
    return value.numpy()
  return np.asarray(value)


def _strip_param_prefix(arrays: Mapping[str, Any]) -> Mapping[str, Any]:
  """Keeps only ``param/<key>`` entries (without prefix) if there are any."""
  if any(key.startswith(_PARAM_PREFIX) for key in arrays):
    return {
        key[len(_PARAM_PREFIX):]: value
        for key, value in arrays.items()
        if key.startswith(_PARAM_PREFIX)
    }
  return arrays


def _read_file(path: pathlib.Path) -> Mapping[str, Any]:
  suffix = path.suffix.lower()
  if suffix in (".pt", ".pth"):
    import torch  # pylint: disable=g-import-not-at-top

    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
      raise ValueError(f"{path} does not hold a state dict (got {type(state).__name__}).")
    return state
  if suffix == ".safetensors":
    from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top

    return load_file(path)
  if suffix == ".npz":
    with np.load(path, allow_pickle=False) as npz:
      return {key: npz[key] for key in npz.files}
  raise ValueError(
      f"unsupported checkpoint format {path.name!r}: expected .pt, .pth, .safetensors or .npz."
  )


def load_state_dict(checkpoint: Checkpoint) -> dict[str, np.ndarray]:
  """Reads a checkpoint into a flat dict of numpy arrays, keyed by state-dict names.

  Args:
    checkpoint: a path to a ``.pt``/``.pth``/``.safetensors``/``.npz`` file, or a mapping of
      state-dict names to numpy arrays or torch tensors.

  Returns:
    ``{name: array}``; floating tensors are returned as float32 (torch) or in their stored
    dtype (numpy, safetensors); ``param/`` prefixes of fixture archives are removed.
  """
  if isinstance(checkpoint, Mapping):
    arrays = checkpoint
  else:
    path = pathlib.Path(checkpoint)
    if not path.is_file():
      raise FileNotFoundError(f"checkpoint {path} does not exist.")
    arrays = _read_file(path)
  return {key: _to_numpy(value) for key, value in _strip_param_prefix(arrays).items()}
