"""Files a run keeps (PNG, npz, JSON), written atomically and durably.

Each file is written to a temporary name in its folder, flushed to disk and renamed into place
(and the rename itself made durable), so an interrupted run or a crash never leaves a
half-written file behind, nor clobbers a good one.
"""

import io
import json
import os
import pathlib
import uuid
from typing import Any

import numpy as np
from PIL import Image


def _fsync_dir(directory: pathlib.Path) -> None:
  """Makes a rename in ``directory`` durable (POSIX: fsync of the folder itself)."""
  fd = os.open(directory, os.O_RDONLY)
  try:
    os.fsync(fd)
  finally:
    os.close(fd)


def write_bytes(path: str | pathlib.Path, payload: bytes) -> None:
  """Writes ``payload`` to ``path`` atomically, creating the folder if needed.

  The file gets the permissions of a plain ``open(path, "w")``: 0o666 less the umask.
  """
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")
  # Created like open() creates files (the kernel applies the umask), unlike mkstemp's 0o600.
  fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(payload)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    os.unlink(tmp)
    raise
  _fsync_dir(path.parent)


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
