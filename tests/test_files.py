"""Atomic PNG/npz/JSON writing and image grids."""

import errno
import json
import os
import stat

import numpy as np
import pytest
from PIL import Image

from diffseg_jax import files
from diffseg_jax import images


def test_to_uint8_truncates_and_clips_as_guided_diffusion():
  # guided-diffusion: ((x + 1) * 127.5).clamp(0, 255).to(torch.uint8), which truncates.
  x = np.array([-2.0, -1.0, -0.999, 0.0, 0.999, 1.0, 3.0], np.float32)
  np.testing.assert_array_equal(images.to_uint8(x), [0, 0, 0, 127, 254, 255, 255])


def test_grid_places_each_image_in_its_cell():
  tiles = np.stack([np.full((3, 2, 1), i, np.uint8) for i in range(5)])
  g = images.grid(tiles, columns=3, pad=1)
  assert g.shape == (2 * 4 + 1, 3 * 3 + 1, 1)
  for i in range(5):
    r, c = divmod(i, 3)
    np.testing.assert_array_equal(g[1 + r * 4:1 + r * 4 + 3, 1 + c * 3:1 + c * 3 + 2], i)
  assert (g[5:8, 7:9] == 255).all()  # the empty sixth cell stays white


def test_png_npz_json_round_trip_and_leave_no_temporary_files(tmp_path):
  image = np.random.default_rng(0).integers(0, 256, (5, 6, 3), dtype=np.uint8)
  files.write_png(tmp_path / "a" / "x.png", image)
  np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a" / "x.png")), image)
  files.write_npz(tmp_path / "s.npz", arr_0=image[None])
  with np.load(tmp_path / "s.npz") as npz:
    np.testing.assert_array_equal(npz["arr_0"], image[None])
  files.write_json(tmp_path / "c.json", {"a": (1, 2)})
  assert json.loads((tmp_path / "c.json").read_text()) == {"a": [1, 2]}
  assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "c.json", "s.npz", "x.png"]


class _HalfWritingFile:
  """A file whose ``write`` stores the first half of the data, then fails as a full disk."""

  def __init__(self, f):
    self._f = f

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self._f.close()

  def write(self, data):
    self._f.write(data[:len(data) // 2])
    self._f.flush()
    raise OSError(errno.ENOSPC, "No space left on device")

  def __getattr__(self, name):
    return getattr(self._f, name)


def test_failed_write_keeps_the_previous_file(tmp_path, monkeypatch):
  path = tmp_path / "s.npz"
  files.write_npz(path, arr_0=np.zeros(3))
  real_fdopen = os.fdopen
  monkeypatch.setattr(files.os, "fdopen", lambda *a, **k: _HalfWritingFile(real_fdopen(*a, **k)))
  with pytest.raises(OSError, match="No space left"):
    files.write_npz(path, arr_0=np.ones(1000))
  monkeypatch.undo()
  with np.load(path) as npz:
    np.testing.assert_array_equal(npz["arr_0"], np.zeros(3))
  assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # no temporary file is left


@pytest.mark.parametrize("umask", [0o022, 0o027, 0o077])
def test_written_files_get_the_permissions_of_open(tmp_path, umask):
  old = os.umask(umask)
  try:
    files.write_bytes(tmp_path / "x.bin", b"x")
    with open(tmp_path / "y.bin", "wb"):  # what a plain open() gives, for comparison
      pass
  finally:
    os.umask(old)
  mode = stat.S_IMODE((tmp_path / "x.bin").stat().st_mode)
  assert mode == 0o666 & ~umask == stat.S_IMODE((tmp_path / "y.bin").stat().st_mode)


def test_write_is_flushed_to_disk_before_the_rename_and_the_rename_after(tmp_path, monkeypatch):
  events = []
  real_fsync, real_replace = os.fsync, os.replace

  def fsync(fd):
    kind = "dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else f"file of {os.fstat(fd).st_size} bytes"
    events.append(f"fsync {kind}")
    real_fsync(fd)

  def replace(src, dst):
    events.append("replace")
    real_replace(src, dst)

  monkeypatch.setattr(files.os, "fsync", fsync)
  monkeypatch.setattr(files.os, "replace", replace)
  files.write_bytes(tmp_path / "x.bin", b"12345")
  assert events == ["fsync file of 5 bytes", "replace", "fsync dir"]
