"""Data: the IDX reader, preprocessing, the deterministic resumable batches, per-host slicing,
the evaluation pass, prefetching."""

import gzip
import os
import pathlib
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from diffseg_jax import config as config_lib
from diffseg_jax.data import idx
from diffseg_jax.data import input_pipeline
from diffseg_jax.data import preprocess
from diffseg_jax.data.prefetch import Prefetcher


def write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  opener = gzip.open if path.suffix == ".gz" else open
  with opener(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
  array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
  write_idx(tmp_path / "x-idx3-ubyte.gz", array)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "x-idx3-ubyte.gz"), array)


def test_read_idx_truncated_names_file(tmp_path):
  path = tmp_path / "bad-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 2]) + struct.pack(">2I", 4, 4) + b"\x00" * 10)
  with pytest.raises(ValueError, match="bad-idx3-ubyte.gz.*truncated"):
    idx.read_idx(path)


def _source(n=10):
  images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1) * np.ones((1, 2, 2, 1), np.uint8)
  return input_pipeline.ArraySource(images, np.arange(n, dtype=np.int32))


def _take(iterator, k):
  return [next(iterator) for _ in range(k)]


def test_batches_visit_each_example_once_per_epoch_and_scale_to_unit_range():
  batches = _take(input_pipeline.train_batches(_source(10), global_batch_size=5, seed=3), 4)
  first_epoch = np.concatenate([b["label"] for b in batches[:2]])
  second_epoch = np.concatenate([b["label"] for b in batches[2:]])
  assert sorted(first_epoch) == list(range(10)) == sorted(second_epoch)
  assert not np.array_equal(first_epoch, second_epoch)  # reshuffled each epoch
  for b in batches:  # image pixel value == label, mapped to [-1, 1]
    assert b["image"].dtype == np.float32 and b["label"].dtype == np.int32
    np.testing.assert_allclose(b["image"][:, 0, 0, 0], b["label"] / 127.5 - 1.0, rtol=1e-6)


def test_resuming_at_a_step_reproduces_the_same_batches():
  full = _take(input_pipeline.train_batches(_source(7), global_batch_size=3, seed=1), 9)
  resumed = _take(input_pipeline.train_batches(_source(7), global_batch_size=3, seed=1,
                                               start_step=5), 4)
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])


def _position_source(n=12, size=16):
  """Images whose channels hold each pixel's (row, column, example); masks a function of it."""
  rows, cols = np.mgrid[:size, :size].astype(np.uint8)
  images = np.stack([np.stack([rows, cols, np.full_like(rows, i)], -1) for i in range(n)])
  masks = ((3 * rows.astype(int) + cols) % 11).astype(np.uint8)
  return input_pipeline.ArraySource(images, np.arange(n, dtype=np.int32),
                                    np.repeat(masks[None], n, axis=0))


def _uint8(images):
  return np.round((images + 1.0) * 127.5).astype(int)


def test_hosts_rows_and_augmentation_make_up_the_one_host_batch():
  transform = preprocess.Preprocess(image_size=8, crop="random", random_flip=True)
  kwargs = dict(global_batch_size=4, seed=2, transform=transform, mask_classes=11)
  whole = _take(input_pipeline.train_batches(_position_source(), **kwargs), 5)
  parts = [_take(input_pipeline.train_batches(_position_source(), process_index=p,
                                              process_count=2, **kwargs), 5)
           for p in range(2)]
  for step in range(5):
    for key in ("label", "image", "mask"):  # same examples, same crops and flips
      joined = np.concatenate([parts[0][step][key], parts[1][step][key]])
      np.testing.assert_array_equal(joined, whole[step][key])


def test_random_crop_and_flip_move_image_and_mask_together():
  transform = preprocess.Preprocess(image_size=8, crop="random", random_flip=True)
  batches = _take(input_pipeline.train_batches(_position_source(), global_batch_size=6, seed=0,
                                               transform=transform, mask_classes=11), 4)
  tops, flips = set(), set()
  for batch in batches:
    pixels = _uint8(batch["image"])
    rows, cols = pixels[..., 0], pixels[..., 1]
    np.testing.assert_array_equal(batch["mask"], (3 * rows + cols) % 11)
    tops.update(rows[:, 0, 0].tolist())
    flips.update((cols[:, 0, 0] > cols[:, 0, -1]).tolist())
  assert len(tops) > 3 and flips == {True, False}  # the windows and flips do vary


def test_random_flip_flips_some_images_left_right():
  images = np.zeros((8, 2, 2, 1), np.uint8)
  images[:, :, 0] = 255  # left column white
  source = input_pipeline.ArraySource(images, None)
  batch = next(input_pipeline.train_batches(
      source, global_batch_size=8, seed=0,
      transform=preprocess.Preprocess(image_size=2, random_flip=True)))
  left_white = batch["image"][:, 0, 0, 0] > 0
  assert "label" not in batch
  assert 0 < left_white.sum() < 8
  np.testing.assert_array_equal(batch["image"][:, 0, 1, 0] > 0, ~left_white)


def test_resize_area_average_of_constant_blocks():
  image = np.kron(np.array([[10, 200], [90, 30]], np.uint8), np.ones((4, 4), np.uint8))
  out = preprocess.resize_image(image[:, :, None], 2, 2)
  np.testing.assert_array_equal(out[:, :, 0], [[10, 200], [90, 30]])


@pytest.mark.parametrize("size", [32, 20])  # enlarging (bilinear), shrinking (area)
def test_resize_by_a_non_integer_factor_keeps_constants_and_gradients(size):
  constant = np.full((28, 28, 3), 77, np.uint8)
  out = preprocess.resize_image(constant, size, size)
  assert out.shape == (size, size, 3) and out.dtype == np.uint8
  assert (out == 77).all()
  ramp = np.broadcast_to(np.linspace(0, 255, 28).astype(np.uint8)[None, :, None], (28, 28, 1))
  out = preprocess.resize_image(ramp, size, size)[..., 0]
  assert (out == out[:1]).all()  # still constant down each column
  assert (np.diff(out[0].astype(int)) >= 0).all() and out[0, -1] - out[0, 0] > 200


def test_masks_are_resized_by_nearest_neighbour_and_keep_their_ids():
  mask = np.zeros((30, 40), np.uint8)
  mask[5:20, 10:33] = 7
  mask[0, 0] = input_pipeline.IGNORE_ID
  out = preprocess.resize_mask(mask, 12, 16)
  assert set(np.unique(out)) <= {0, 7, input_pipeline.IGNORE_ID}
  # Nearest neighbour: output pixel (i, j) is source pixel (floor((i + .5) * 30 / 12), ...).
  src_rows = np.floor((np.arange(12) + 0.5) * 30 / 12).astype(int)
  src_cols = np.floor((np.arange(16) + 0.5) * 40 / 16).astype(int)
  np.testing.assert_array_equal(out, mask[np.ix_(src_rows, src_cols)])


def test_shorter_side_resize_then_centre_crop():
  example = {"image": np.zeros((60, 90, 1), np.uint8), "mask": np.zeros((60, 90), np.uint8)}
  p = preprocess.Preprocess(image_size=32, resize=40, crop="random")
  out = preprocess.apply(example, p, rng=None)  # evaluation: the centre
  assert out["image"].shape == (32, 32, 1) and out["mask"].shape == (32, 32)
  assert preprocess.shorter_side_size(60, 90, 40) == (40, 60)
  with pytest.raises(ValueError, match="set data.resize >= 64"):
    preprocess.apply(example, preprocess.Preprocess(image_size=64, crop="center"), rng=None)


@pytest.mark.parametrize("hosts", [1, 2, 8])
def test_eval_pass_covers_every_example_once_and_marks_padding(hosts):
  source = _source(13)
  per_host = [list(input_pipeline.eval_batches(source, global_batch_size=8, process_index=p,
                                               process_count=hosts))
              for p in range(hosts)]
  assert {len(batches) for batches in per_host} == {2}  # ceil(13 / 8) on every host
  valid_labels = []
  for p, batches in enumerate(per_host):
    for b, batch in enumerate(batches):
      assert batch["image"].shape[0] == batch["valid"].shape[0] == 8 // hosts
      positions = b * 8 + p * (8 // hosts) + np.arange(8 // hosts)
      np.testing.assert_array_equal(batch["valid"], positions < 13)
      np.testing.assert_array_equal(batch["index"], np.where(positions < 13, positions, -1))
      valid_labels += batch["label"][batch["valid"]].tolist()
  assert sorted(valid_labels) == list(range(13))


def test_read_split_holds_the_first_examples_as_the_eval_pass_sees_them():
  config = config_lib.base_config().data
  config.name, config.image_size, config.channels = "shapes", 8, 3
  config.crop, config.resize = "center", 12  # upsample to 12, then cut the centre 8x8
  examples = input_pipeline.read_split(config, "train", limit=5)
  assert examples["image"].dtype == np.uint8 and examples["image"].shape == (5, 8, 8, 3)
  first = next(input_pipeline.eval_batches(
      input_pipeline.load_source(config, "train"), global_batch_size=8,
      transform=input_pipeline.preprocessing(config)))
  np.testing.assert_array_equal(input_pipeline.to_model_range(examples["image"]),
                                first["image"][:5])
  np.testing.assert_array_equal(examples["label"], first["label"][:5])


_MESH_EVAL = """
import sys
import jax, numpy as np
from diffseg_jax.data import input_pipeline
from diffseg_jax.data.prefetch import Prefetcher
from diffseg_jax.train import sharding
n = 21
images = np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1)
source = input_pipeline.ArraySource(images, np.arange(n, dtype=np.int32))
for devices in (1, 2, 8):
  mesh = sharding.make_mesh(jax.devices()[:devices])
  batches = input_pipeline.eval_batches(source, global_batch_size=8)
  seen = []
  with Prefetcher(batches, lambda b: sharding.put_batch(b, mesh), 2) as device_batches:
    for batch in device_batches:
      assert len(batch["label"].sharding.device_set) == devices
      valid = np.asarray(batch["valid"])
      seen += np.asarray(batch["label"])[valid].tolist()
  assert sorted(seen) == list(range(n)), (devices, seen)
  print(devices, "ok")
"""


def test_eval_pass_on_1_2_and_8_devices_covers_every_example_once():
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  result = subprocess.run([sys.executable, "-c", _MESH_EVAL], env=env, capture_output=True,
                          text=True, timeout=300, cwd=pathlib.Path(__file__).parent.parent)
  assert result.returncode == 0, result.stderr[-3000:]
  assert result.stdout.split() == ["1", "ok", "2", "ok", "8", "ok"]


def test_mask_ids_outside_the_declared_classes_are_an_error():
  masks = np.full((4, 2, 2), 3, np.uint8)
  source = input_pipeline.ArraySource(np.zeros((4, 2, 2, 1), np.uint8), None, masks)
  with pytest.raises(ValueError, match=r"class ids \[3\] outside 0..2.*data.mask_classes"):
    next(input_pipeline.train_batches(source, global_batch_size=2, seed=0, mask_classes=3))
  batch = next(input_pipeline.train_batches(source, global_batch_size=2, seed=0,
                                            mask_classes=4))
  assert batch["mask"].dtype == np.int32 and (batch["mask"] == 3).all()


def test_prefetcher_keeps_the_order_and_raises_the_threads_error():
  def numbers():
    yield from range(5)
    raise OSError("disk gone")

  with Prefetcher(numbers(), lambda x: x * 10, size=2) as prefetched:
    assert [next(prefetched) for _ in range(5)] == [0, 10, 20, 30, 40]
    with pytest.raises(OSError, match="disk gone"):
      next(prefetched)
  with Prefetcher(iter(range(3)), lambda x: x, size=0) as inline:
    assert list(inline) == [0, 1, 2]


def test_prefetcher_close_stops_an_endless_producer():
  def endless():
    i = 0
    while True:
      yield i
      i += 1

  prefetched = Prefetcher(endless(), lambda x: x, size=2)
  assert next(prefetched) == 0
  prefetched.close()
  assert not any(t.name == "prefetch" and t.is_alive() for t in threading.enumerate())


@pytest.mark.parametrize("key, value, message", [
    ("crop", "corner", "data.crop='corner' must be one of"),
    ("resize", 16, "data.resize=16 only applies before a crop"),
    ("mask_classes", 300, "data.mask_classes=300 must be at most 255"),
])
def test_config_rejects_bad_data_settings(key, value, message):
  config = config_lib.base_config()
  setattr(config.data, key, value)
  with pytest.raises(ValueError, match=message):
    config_lib.validate(config)
