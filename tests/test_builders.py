"""The TFDS builders on the real files in DIFFSEG_DATA_DIR (facts from each DATASET.md), on
small files written in the official layouts, and catalogue datasets under
``tfds.testing.mock_data``; the errors for missing, corrupt and inconsistent files."""

import collections
import gzip
import os
import pathlib
import shutil

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from diffseg_jax import config as config_lib
from diffseg_jax.data import input_pipeline
from diffseg_jax.data.builders import common
from test_data import write_idx

IGNORE = common.IGNORE_ID
FASHION_MNIST_DIR = config_lib.base_config().data.manual_dir


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  return tmp_path_factory.mktemp("tfds")


def _data_config(name, manual_dir, tfds_dir, channels, mask_classes=0):
  config = config_lib.base_config().data
  config.name, config.manual_dir, config.tfds_data_dir = name, str(manual_dir), str(tfds_dir)
  config.channels, config.mask_classes = channels, mask_classes
  return config


def _all(source):
  return [source[i] for i in range(len(source))]


def _file_names(config, split):
  """The ``file_name`` of each example of a prepared split, in the split's order."""
  raw = input_pipeline.tfds_builder(config).as_data_source(split)
  return [raw[i]["file_name"].decode() for i in range(len(raw))]


def _real(data_dir, folder):
  path = data_dir / folder
  if not path.is_dir():
    pytest.skip(f"{path} is missing.")
  return path


def test_isbi2012_slices_and_membrane_masks(data_dir, tfds_dir):
  root = _real(data_dir, "isbi2012_em_membrane")
  config = _data_config("isbi2012", root, tfds_dir, channels=1, mask_classes=2)
  train, test = (input_pipeline.load_source(config, s) for s in ("train", "test"))
  assert (len(train), len(test)) == (20, 10)
  examples = _all(train) + _all(test)
  for e in examples:
    assert e["image"].shape == (512, 512, 1) and e["image"].dtype == np.uint8
    assert e["mask"].shape == (512, 512) and set(np.unique(e["mask"])) == {0, 1}
  membrane = np.mean([e["mask"].mean() for e in examples])
  assert 0.20 < membrane < 0.24  # "about 22% of pixels are 0" (membrane) in the labels
  # Which slice is which: compare each stored example with the PNG files themselves.
  stored = {int(e["image"].sum()): e for e in examples}
  for i in (0, 19, 20, 29):
    image = np.asarray(Image.open(root / f"data/membrane/train/image/{i}.png"))
    label = np.asarray(Image.open(root / f"data/membrane/train/label/{i}.png"))
    e = stored[int(image.sum())]
    np.testing.assert_array_equal(e["image"][..., 0], image)
    np.testing.assert_array_equal(e["mask"], label == 0)
  train_sums = {int(e["image"].sum()) for e in _all(train)}
  for i in range(30):  # slices 0..19 train, 20..29 test
    image_sum = int(np.asarray(Image.open(root / f"data/membrane/train/image/{i}.png")).sum())
    assert (image_sum in train_sums) == (i < 20), i


def test_camvid_test_split_classes_and_void(data_dir, tfds_dir):
  root = _real(data_dir, "camvid_segnet")
  config = _data_config("camvid_segnet", root, tfds_dir, channels=3, mask_classes=11)
  test = input_pipeline.load_source(config, "test")
  assert len(test) == 233
  with pytest.raises(ValueError, match=r"Unknown split 'train'. Should be one of \["):
    input_pipeline.load_source(config, "train")  # train/ is not in the data folder
  names = _file_names(config, "test")
  sequences = collections.Counter(pathlib.Path(n).name.split("_")[0] for n in names)
  assert sequences == {"0001TP": 62, "Seq05VD": 171}
  for sequence, count in sequences.items():  # the per-sequence splits hold exactly its frames
    split_names = _file_names(config, f"test_{sequence.lower()}")
    assert len(split_names) == count
    assert {n for n in names if pathlib.Path(n).name.startswith(sequence + "_")} == set(
        split_names)
  counts = np.zeros(256, np.int64)
  for e in _all(test):
    assert e["image"].shape == (360, 480, 3) and e["image"].dtype == np.uint8
    assert e["mask"].shape == (360, 480) and e["mask"].dtype == np.uint8
    counts += np.bincount(e["mask"].ravel(), minlength=256)
  assert set(np.flatnonzero(counts)) == set(range(11)) | {IGNORE}
  share = counts / counts.sum()
  assert abs(share[IGNORE] - 0.038) < 0.001 and abs(share[3] - 0.258) < 0.001  # void, road
  name = names[0]
  annotation = np.asarray(Image.open(root / name.replace("/test/", "/testannot/")))
  np.testing.assert_array_equal(test[0]["mask"], np.where(annotation == 11, IGNORE, annotation))
  np.testing.assert_array_equal(test[0]["image"], np.asarray(Image.open(root / name)))


def test_magnetic_tile_split_labels_and_binarised_masks(data_dir, tfds_dir):
  root = _real(data_dir, "magnetic_tile_defects")
  config = _data_config("magnetic_tile", root, tfds_dir, channels=1, mask_classes=2)
  train, test = (input_pipeline.load_source(config, s) for s in ("train", "test"))
  builder = input_pipeline.tfds_builder(config)
  classes = builder.info.features["label"].names
  defect_counts = {"blowhole": 115, "break": 85, "crack": 57, "fray": 32, "uneven": 103}
  assert len(train) == 952 - 191 and len(test) == 191 + sum(defect_counts.values())
  labels = collections.Counter(classes[e["label"]] for e in _all(test))
  assert labels == {"free": 191, **defect_counts}
  assert {e["label"] for e in _all(train)} == {0}
  names = _file_names(config, "test")
  empty_defects, sizes = set(), set()
  for i in range(len(test)):
    e, name = test[i], names[i]
    assert e["image"].dtype == np.uint8 and e["image"].shape[:2] == e["mask"].shape
    assert set(np.unique(e["mask"])) <= {0, 1}
    sizes.add(e["mask"].shape)
    if e["label"] == 0:
      assert not e["mask"].any()
    elif not e["mask"].any():
      empty_defects.add(pathlib.Path(name).stem)
  assert empty_defects == {"exp3_num_45042", "exp4_num_124690", "exp4_num_352527",
                           "exp4_num_45057"}  # the four all-zero Uneven masks
  assert len(sizes) > 100  # sizes vary
  e, name = test[len(test) - 1], names[-1]
  source_mask = np.asarray(Image.open(root / name.replace(".jpg", ".png")))
  np.testing.assert_array_equal(e["mask"], source_mask > 127)


def test_magnetic_tile_to_128_batches(data_dir, tfds_dir):
  root = _real(data_dir, "magnetic_tile_defects")
  config = _data_config("magnetic_tile", root, tfds_dir, channels=1, mask_classes=2)
  config.image_size = 128
  batch = next(input_pipeline.train_batches(
      input_pipeline.load_source(config, "test"), global_batch_size=4, seed=0,
      transform=input_pipeline.preprocessing(config), mask_classes=2))
  assert batch["image"].shape == (4, 128, 128, 1) and batch["mask"].shape == (4, 128, 128)
  assert -1.0 <= batch["image"].min() and batch["image"].max() <= 1.0


@pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_fashion_mnist_from_debian_files(tfds_dir):
  config = _data_config("fashion_mnist_idx", FASHION_MNIST_DIR, tfds_dir, channels=1)
  train, test = (input_pipeline.load_source(config, s) for s in ("train", "test"))
  assert (len(train), len(test)) == (60_000, 10_000)
  examples = _all(test)
  assert examples[0]["image"].shape == (28, 28, 1) and examples[0]["image"].dtype == np.uint8
  np.testing.assert_array_equal(np.bincount([e["label"] for e in examples]), np.full(10, 1000))
  with gzip.open(os.path.join(FASHION_MNIST_DIR, "t10k-images-idx3-ubyte.gz")) as f:
    raw = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 28, 28)
  # The same images (the prepared order is TFDS's): compare the sorted pixel sums.
  np.testing.assert_array_equal(sorted(int(e["image"].sum()) for e in examples),
                                sorted(raw.reshape(10_000, -1).sum(1).tolist()))


@pytest.mark.parametrize("gzipped", [True, False])
def test_mnist_idx_from_written_files(tmp_path, gzipped):
  rng = np.random.default_rng(0)
  suffix = ".gz" if gzipped else ""
  data = {}
  for split, n in (("train", 6), ("t10k", 3)):
    data[split] = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), np.arange(n) % 10
    write_idx(tmp_path / f"{split}-images-idx3-ubyte{suffix}", data[split][0])
    write_idx(tmp_path / f"{split}-labels-idx1-ubyte{suffix}", data[split][1])
  config = _data_config("mnist_idx", tmp_path, tmp_path / "tfds", channels=1)
  test = input_pipeline.load_source(config, "test")
  got = sorted((int(e["label"]), e["image"][..., 0].tobytes()) for e in _all(test))
  want = sorted((int(l), im.tobytes()) for im, l in zip(*data["t10k"]))
  assert got == want


def test_missing_manual_files_name_the_dataset_files_and_source(tmp_path):
  config = _data_config("fashion_mnist_idx", tmp_path, tmp_path / "tfds", channels=1)
  with pytest.raises(FileNotFoundError) as e:
    input_pipeline.load_source(config, "train")
  for part in ("fashion_mnist_idx", "train-images-idx3-ubyte.gz", "dataset-fashion-mnist",
               "data.manual_dir"):
    assert part in str(e.value)
  for name, expected in (("isbi2012", "label/0.png"), ("camvid_segnet", "CamVid/test.txt"),
                         ("magnetic_tile", "MT_Free/Imgs"), ("tiny_imagenet",
                                                             "tiny-imagenet-200.zip"),
                         ("label_efficient_segmentation/ffhq_34", "ffhq_34/real/train"),
                         ("image_mask_folder", "classes.txt")):
    config = _data_config(name, tmp_path, tmp_path / "tfds", channels=3)
    with pytest.raises(FileNotFoundError, match=f"(?s){name}.*{expected}.*To get them"):
      input_pipeline.load_source(config, "train")


def _tiny_imagenet_layout(root: pathlib.Path) -> dict[str, np.ndarray]:
  """Writes a two-class Tiny ImageNet in the distributed layout; returns image by path."""
  rng = np.random.default_rng(0)
  base = root / "tiny-imagenet-200"
  wnids = ["n02", "n01"]  # not sorted: labels must follow the file's order
  base.mkdir(parents=True)
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


def test_tiny_imagenet_from_folder_and_zip_agree(tmp_path):
  written = _tiny_imagenet_layout(tmp_path / "unpacked")
  (tmp_path / "zipped").mkdir()
  shutil.make_archive(str(tmp_path / "zipped" / "tiny-imagenet-200"), "zip",
                      tmp_path / "unpacked")
  results = []
  for folder in ("unpacked", "zipped"):
    config = _data_config("tiny_imagenet", tmp_path / folder, tmp_path / f"tfds_{folder}", 3)
    train = input_pipeline.load_source(config, "train")
    names = _file_names(config, "train")
    results.append({n: e for n, e in zip(names, _all(train))})
    val = input_pipeline.load_source(config, "validation")
    assert len(val) == 1 and val[0]["label"] == 1 and val[0]["image"].shape == (64, 64, 3)
    np.testing.assert_array_equal(val[0]["image"][..., 0], val[0]["image"][..., 2])  # grey
  unpacked, zipped = results
  assert sorted(unpacked) == sorted(zipped) == sorted(written)
  for name, image in written.items():
    assert unpacked[name]["label"] == (0 if "n02" in name else 1)  # wnids.txt order
    assert unpacked[name]["image"].shape == (64, 64, 3)
    assert np.abs(unpacked[name]["image"].astype(int) - image).max() <= 2, name
    np.testing.assert_array_equal(unpacked[name]["image"], zipped[name]["image"])


def _label_efficient_layout(root, name, labels_by_split):
  rng = np.random.default_rng(1)
  for split, labels in labels_by_split.items():
    folder = root / name / "real" / split
    folder.mkdir(parents=True)
    for i, label in enumerate(labels):
      image = rng.integers(0, 256, label.shape + (3,), dtype=np.uint8)
      Image.fromarray(image).save(folder / f"image_{i}.png")
      np.save(folder / f"image_{i}.npy", label)


def test_label_efficient_sets_map_their_ignore_label(tmp_path):
  label = np.array([[0, 1, 28], [5, 0, 2]], np.int64)
  _label_efficient_layout(tmp_path, "bedroom_28", {"train": [label], "test": [label, label]})
  config = _data_config("label_efficient_segmentation/bedroom_28", tmp_path, tmp_path / "tfds",
                        channels=3, mask_classes=29)
  train = input_pipeline.load_source(config, "train")
  assert len(train) == 1 and len(input_pipeline.load_source(config, "test")) == 2
  np.testing.assert_array_equal(train[0]["mask"], [[IGNORE, 1, 28], [5, IGNORE, 2]])
  assert train[0]["image"].shape == (2, 3, 3) and train[0]["image"].dtype == np.uint8


def test_label_efficient_label_outside_the_classes_names_the_file(tmp_path):
  good, bad = np.zeros((2, 2), np.int64), np.full((2, 2), 34, np.int64)
  _label_efficient_layout(tmp_path, "ffhq_34", {"train": [good, bad], "test": [good]})
  config = _data_config("label_efficient_segmentation/ffhq_34", tmp_path, tmp_path / "tfds",
                        channels=3, mask_classes=34)
  with pytest.raises(ValueError, match=r"image_1.npy holds values \[34\] outside"):
    input_pipeline.load_source(config, "train")


def _folder_dataset(root, masks, classes="0 background\n255 lesion\n128 ignore\n", size=(4, 5)):
  (root / "train" / "images").mkdir(parents=True)
  (root / "train" / "masks").mkdir(parents=True)
  (root / "classes.txt").write_text(classes)
  for i, mask in enumerate(masks):
    Image.fromarray(np.full(size + (3,), 40 * i, np.uint8)).save(
        root / "train" / "images" / f"case{i}.jpg" if i % 2 else
        root / "train" / "images" / f"case{i}.png")
    Image.fromarray(mask).save(root / "train" / "masks" / f"case{i}.png")


def test_image_mask_folder_maps_declared_values(tmp_path):
  mask = np.array([[0, 255, 128, 0, 0]] * 4, np.uint8)
  _folder_dataset(tmp_path / "mine", [mask, mask[::-1]])
  config = _data_config("image_mask_folder", tmp_path / "mine", tmp_path / "tfds", channels=3,
                        mask_classes=2)
  train = input_pipeline.load_source(config, "train")
  assert len(train) == 2
  by_name = dict(zip(_file_names(config, "train"), _all(train)))
  np.testing.assert_array_equal(by_name["train/images/case0.png"]["mask"],
                                [[0, 1, IGNORE, 0, 0]] * 4)
  assert by_name["train/images/case0.png"]["image"].shape == (4, 5, 3)


@pytest.mark.parametrize("problem, match", [
    ("undeclared", r"case1.png holds values \[7\] not declared in classes.txt"),
    ("size", r"case1.jpg is 4x5 but its mask .*case1.png is 3x5"),
    ("corrupt", r"Corrupt or unreadable image .*case1.jpg"),
    ("unpaired", r"no mask .* for case1.jpg"),
])
def test_image_mask_folder_bad_files_are_named(tmp_path, problem, match):
  good = np.zeros((4, 5), np.uint8)
  second = {"undeclared": np.full((4, 5), 7, np.uint8), "size": np.zeros((3, 5), np.uint8)}
  _folder_dataset(tmp_path / "mine", [good, second.get(problem, good)])
  image = tmp_path / "mine" / "train" / "images" / "case1.jpg"
  if problem == "corrupt":
    image.write_bytes(image.read_bytes()[:40])
  if problem == "unpaired":
    (tmp_path / "mine" / "train" / "masks" / "case1.png").unlink()
  config = _data_config("image_mask_folder", tmp_path / "mine", tmp_path / "tfds", channels=3,
                        mask_classes=2)
  with pytest.raises((ValueError, FileNotFoundError), match=match):
    input_pipeline.load_source(config, "train")


def test_camvid_mask_values_beyond_void_are_an_error(tmp_path):
  camvid = tmp_path / "CamVid"
  for folder in ("test", "testannot"):
    (camvid / folder).mkdir(parents=True)
  Image.fromarray(np.zeros((360, 480, 3), np.uint8)).save(camvid / "test" / "a.png")
  Image.fromarray(np.full((360, 480), 12, np.uint8)).save(camvid / "testannot" / "a.png")
  (camvid / "test.txt").write_text("/SegNet/CamVid/test/a.png /SegNet/CamVid/testannot/a.png\n")
  for split in ("train", "val"):
    (camvid / f"{split}.txt").write_text(f"/SegNet/CamVid/{split}/b.png x\n")
  config = _data_config("camvid_segnet", tmp_path, tmp_path / "tfds", channels=3,
                        mask_classes=11)
  with pytest.raises(ValueError, match=r"testannot/a.png holds values \[12\] outside"):
    input_pipeline.load_source(config, "test")


def test_catalogue_oxford_pet_trimap_and_binary_masks_under_mock_data():
  for mask_classes, allowed in ((3, {0, 1, 2, IGNORE}), (2, {0, 1})):
    config = _data_config("oxford_iiit_pet", "", "", channels=3, mask_classes=mask_classes)
    config.image_size, config.crop, config.resize = 32, "center", 32
    with tfds.testing.mock_data(num_examples=6, max_value=4):
      source = input_pipeline.load_source(config, "train")
      batch = next(input_pipeline.train_batches(
          source, global_batch_size=6, seed=0, transform=input_pipeline.preprocessing(config),
          mask_classes=mask_classes))
      raw = source._data_source[0]["segmentation_mask"][..., 0]  # values 0..3 (max_value=4)
      example = source[0]
    assert len(source) == 6
    assert batch["image"].shape == (6, 32, 32, 3) and batch["mask"].shape == (6, 32, 32)
    assert set(np.unique(batch["mask"])) <= allowed and batch["label"].dtype == np.int32
    expected = np.where((raw >= 1) & (raw <= 3), raw - 1, IGNORE) if mask_classes == 3 else (
        raw == 1)
    np.testing.assert_array_equal(example["mask"], expected)


def test_catalogue_cifar10_under_mock_data():
  config = _data_config("cifar10", "", "", channels=3)
  config.image_size = 32
  with tfds.testing.mock_data(num_examples=10):
    source = input_pipeline.load_source(config, "train")
    batches = list(input_pipeline.eval_batches(source, global_batch_size=4))
  assert len(source) == 10 and len(batches) == 3
  assert batches[0]["image"].shape == (4, 32, 32, 3) and batches[0]["label"].dtype == np.int32
  assert batches[-1]["valid"].tolist() == [True, True, False, False]
