"""Data: the IDX reader, the deterministic resumable batches, per-host slicing."""

import gzip
import os
import pathlib
import shutil
import struct
import zipfile

import numpy as np
import pytest
from PIL import Image

from diffseg_jax import config as config_lib
from diffseg_jax.data import idx
from diffseg_jax.data import input_pipeline
from diffseg_jax.data import mnist_like

FASHION_MNIST_DIR = config_lib.base_config().data.source_dir


def _write_idx(path: pathlib.Path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path):
  array = np.random.default_rng(0).integers(0, 256, (5, 3, 4), dtype=np.uint8)
  _write_idx(tmp_path / "x-idx3-ubyte.gz", array)
  np.testing.assert_array_equal(idx.read_idx(tmp_path / "x-idx3-ubyte.gz"), array)


def test_read_idx_truncated_names_file(tmp_path):
  path = tmp_path / "bad-idx3-ubyte.gz"
  with gzip.open(path, "wb") as f:
    f.write(bytes([0, 0, 8, 2]) + struct.pack(">2I", 4, 4) + b"\x00" * 10)
  with pytest.raises(ValueError, match="bad-idx3-ubyte.gz.*truncated"):
    idx.read_idx(path)


def test_missing_files_error_says_which_and_where(tmp_path):
  with pytest.raises(FileNotFoundError) as e:
    mnist_like.load("fashion_mnist", str(tmp_path), "train")
  assert "train-images-idx3-ubyte.gz" in str(e.value)
  assert "dataset-fashion-mnist" in str(e.value)


@pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_files():
  images, labels = mnist_like.load("fashion_mnist", FASHION_MNIST_DIR, "test")
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), np.full(10, 1000))
  assert images.max() == 255 and images.min() == 0


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
    np.testing.assert_allclose(b["image"][:, 0, 0, 0], b["label"] / 127.5 - 1.0, rtol=1e-6)


def test_resuming_at_a_step_reproduces_the_same_batches():
  full = _take(input_pipeline.train_batches(_source(7), global_batch_size=3, seed=1), 9)
  resumed = _take(input_pipeline.train_batches(_source(7), global_batch_size=3, seed=1,
                                               start_step=5), 4)
  for a, b in zip(full[5:], resumed):
    np.testing.assert_array_equal(a["label"], b["label"])


def test_hosts_slices_make_up_the_global_batch():
  whole = _take(input_pipeline.train_batches(_source(12), global_batch_size=4, seed=2), 5)
  parts = [_take(input_pipeline.train_batches(_source(12), global_batch_size=4, seed=2,
                                              process_index=p, process_count=2), 5)
           for p in range(2)]
  for step in range(5):
    joined = np.concatenate([parts[0][step]["label"], parts[1][step]["label"]])
    np.testing.assert_array_equal(joined, whole[step]["label"])


def test_random_flip_flips_some_images_left_right():
  images = np.zeros((8, 2, 2, 1), np.uint8)
  images[:, :, 0] = 255  # left column white
  source = input_pipeline.ArraySource(images, None)
  batch = next(input_pipeline.train_batches(source, global_batch_size=8, seed=0,
                                            random_flip=True))
  left_white = batch["image"][:, 0, 0, 0] > 0
  assert "label" not in batch
  assert 0 < left_white.sum() < 8
  np.testing.assert_array_equal(batch["image"][:, 0, 1, 0] > 0, ~left_white)


def test_resize_area_average_of_constant_blocks():
  images = np.kron(np.array([[10, 200], [90, 30]], np.uint8), np.ones((4, 4), np.uint8))
  out = input_pipeline.resize_images(images[None, :, :, None], 2)
  np.testing.assert_array_equal(out[0, :, :, 0], [[10, 200], [90, 30]])


@pytest.mark.parametrize("size", [32, 20])  # enlarging (bilinear), shrinking (box)
def test_resize_by_a_non_integer_factor_keeps_constants_and_gradients(size):
  constant = np.full((2, 28, 28, 3), 77, np.uint8)
  out = input_pipeline.resize_images(constant, size)
  assert out.shape == (2, size, size, 3) and out.dtype == np.uint8
  assert (out == 77).all()
  ramp = np.broadcast_to(np.linspace(0, 255, 28).astype(np.uint8)[None, None, :, None],
                         (1, 28, 28, 1))
  out = input_pipeline.resize_images(ramp, size)[0, ..., 0]
  assert (out == out[:1]).all()  # still constant down each column
  assert (np.diff(out[0].astype(int)) >= 0).all() and out[0, -1] - out[0, 0] > 200


def _tiny_imagenet_layout(root: pathlib.Path) -> dict[str, np.ndarray]:
  """Writes a two-class Tiny ImageNet in the distributed layout; returns image by path."""
  rng = np.random.default_rng(0)
  base = root / "tiny-imagenet-200"
  wnids = ["n02", "n01"]  # not sorted: labels must follow the file's order
  (base).mkdir(parents=True)
  (base / "wnids.txt").write_text("\n".join(wnids) + "\n")
  written = {}
  for w in wnids:
    folder = base / "train" / w / "images"
    folder.mkdir(parents=True)
    for i in range(2):
      # A flat colour per image survives JPEG coding within a grey level or two.
      image = np.broadcast_to(rng.integers(0, 256, 3, dtype=np.uint8), (64, 64, 3))
      Image.fromarray(image).save(folder / f"{w}_{i}.JPEG", quality=100)
      written[f"train/{w}/images/{w}_{i}.JPEG"] = image
  (base / "val" / "images").mkdir(parents=True)
  grey = rng.integers(0, 256, (64, 64), dtype=np.uint8)
  Image.fromarray(grey).save(base / "val" / "images" / "val_0.JPEG", quality=100)
  (base / "val" / "val_annotations.txt").write_text("val_0.JPEG\tn01\t0\t0\t10\t10\n")
  return written


def test_tiny_imagenet_from_folder_and_zip_agree(tmp_path, monkeypatch):
  from diffseg_jax.data import tiny_imagenet
  written = _tiny_imagenet_layout(tmp_path / "unpacked")
  shutil.make_archive(str(tmp_path / "tiny-imagenet-200"), "zip", tmp_path / "unpacked")
  images, labels = tiny_imagenet.load(str(tmp_path / "unpacked"), "train")
  opened = []

  class RecordedZipFile(zipfile.ZipFile):
    def __init__(self, *args, **kwargs):
      super().__init__(*args, **kwargs)
      opened.append(self)

  monkeypatch.setattr(zipfile, "ZipFile", RecordedZipFile)
  zipped, zip_labels = tiny_imagenet.load(str(tmp_path / "tiny-imagenet-200.zip"), "train")
  assert len(opened) == 1 and opened[0].fp is None  # the zip file was closed
  np.testing.assert_array_equal(images, zipped)
  np.testing.assert_array_equal(labels, [1, 1, 0, 0])  # n01 sorts first, is class 1
  np.testing.assert_array_equal(labels, zip_labels)
  assert images.shape == (4, 64, 64, 3) and images.dtype == np.uint8
  order = ["train/n01/images/n01_0.JPEG", "train/n01/images/n01_1.JPEG",
           "train/n02/images/n02_0.JPEG", "train/n02/images/n02_1.JPEG"]
  for image, name in zip(images, order):
    assert np.abs(image.astype(int) - written[name]).max() <= 2, name
  val, val_labels = tiny_imagenet.load(str(tmp_path / "unpacked"), "validation")
  assert val.shape == (1, 64, 64, 3) and list(val_labels) == [1]
  np.testing.assert_array_equal(val[0, ..., 0], val[0, ..., 2])  # greyscale -> RGB


def test_tiny_imagenet_missing_says_where_to_get_it(tmp_path):
  from diffseg_jax.data import tiny_imagenet
  with pytest.raises(FileNotFoundError, match="tiny-imagenet-200.zip"):
    tiny_imagenet.load(str(tmp_path), "train")
