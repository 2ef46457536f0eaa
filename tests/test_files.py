"""Atomic PNG/npz/JSON writing and image grids."""

import json

import numpy as np
from PIL import Image

from diffseg_jax import files
from diffseg_jax import images


def test_to_uint8_maps_range_and_clips():
  np.testing.assert_array_equal(images.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])),
                                [0, 0, 128, 255, 255])


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


def test_failed_write_keeps_the_previous_file(tmp_path):
  path = tmp_path / "s.npz"
  files.write_npz(path, arr_0=np.zeros(3))
  try:
    files.write_npz(path, arr_0=object())  # cannot be saved without pickling
  except ValueError:
    pass
  with np.load(path) as npz:
    np.testing.assert_array_equal(npz["arr_0"], np.zeros(3))
  assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]
