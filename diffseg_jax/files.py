"""Files a run keeps (PNG, npz, JSON), written atomically.

Each file is written to a temporary name in its folder and renamed into place, so an
interrupted run never leaves a half-written file behind, nor clobbers a good one.
"""

import io
import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np
from PIL import Image


def write_bytes(path: str | pathlib.Path, payload: bytes) -> None:
  """Writes ``payload`` to ``path`` atomically, creating the folder if needed."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise


def write_png(path: str | pathlib.Path, image: np.ndarray) -> None:
  """Writes a uint8 [H, W] or [H, W, C] (C in 1, 3, 4) image as PNG."""
  image = np.asarray(image)
  if image.ndim == 3 and image.shape[-1] == 1:
    image = image[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(image).save(buffer, format="PNG")
  write_bytes(pathlib.Path(path), buffer.getvalue())


def write_npz(path: str | pathlib.Path, **arrays: np.ndarray) -> None:
  """Writes numeric arrays as an uncompressed ``.npz`` (object arrays are refused)."""
  buffer = io.BytesIO()
  np.savez(buffer, allow_pickle=False, **arrays)
  write_bytes(pathlib.Path(path), buffer.getvalue())


def write_json(path: str | pathlib.Path, value: Any) -> None:
  """Writes ``value`` as indented JSON (non-JSON values as their ``str``)."""
  write_bytes(path, json.dumps(value, indent=2, sort_keys=True, default=str).encode())
