"""Tiny ImageNet (200 classes, 64x64 RGB) from ``tiny-imagenet-200.zip`` as distributed.

Reads the zip itself or the folder it unpacks to::

  tiny-imagenet-200/wnids.txt                       200 WordNet ids, one per line (class order)
  tiny-imagenet-200/train/<wnid>/images/*.JPEG      500 images per class
  tiny-imagenet-200/val/images/*.JPEG               10,000 images
  tiny-imagenet-200/val/val_annotations.txt         "<file>\t<wnid>\t<bbox...>" per image

Get it from http://cs231n.stanford.edu/tiny-imagenet-200.zip (about 240 MB) and put the zip
(or the unpacked folder) in ``data.manual_dir``. Splits: ``train`` (100,000 images, 500 per
class) and ``validation`` (10,000, 50 per class); the test images carry no labels and are left
out. Labels follow the order of ``wnids.txt``. RGB JPEGs are stored as they are; the few
greyscale ones are converted to RGB (stored as PNG).
"""

import io
import pathlib
import zipfile

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from diffseg_jax.data.builders import common

ZIP_NAME = "tiny-imagenet-200.zip"


class _Archive:
  """Uniform read access to the zip or to the unpacked folder, by path below the root.

  A context manager: leaving it closes the zip file.
  """

  def __init__(self, source: pathlib.Path):
    self._zip = None
    if (source / ZIP_NAME).is_file():
      source = source / ZIP_NAME
    if source.is_file() and zipfile.is_zipfile(source):
      self._zip = zipfile.ZipFile(source)
      names = self._zip.namelist()
      roots = {n.split("/")[0] for n in names if n.endswith("wnids.txt")}
      self._root = f"{roots.pop()}/" if roots else ""
      self._names = set(names)
    elif (source / "tiny-imagenet-200" / "wnids.txt").exists():
      self._root = source / "tiny-imagenet-200"
    else:
      self._root = source
    self.source = source

  def __enter__(self) -> "_Archive":
    return self

  def __exit__(self, *exc_info) -> None:
    if self._zip is not None:
      self._zip.close()

  def exists(self, name: str) -> bool:
    if self._zip is not None:
      return self._root + name in self._names
    return (self._root / name).exists()

  def read(self, name: str) -> bytes:
    if self._zip is not None:
      return self._zip.read(self._root + name)
    return (self._root / name).read_bytes()

  def list(self, prefix: str, suffix: str) -> list[str]:
    if self._zip is not None:
      start = len(self._root)
      return sorted(n[start:] for n in self._names
                    if n.startswith(self._root + prefix) and n.endswith(suffix))
    return sorted(str(p.relative_to(self._root))
                  for p in (self._root / prefix).rglob(f"*{suffix}"))


def _image_bytes(archive: _Archive, name: str) -> bytes:
  """The stored bytes of an image: the JPEG itself if RGB, else its RGB conversion as PNG."""
  data = archive.read(name)
  try:
    with Image.open(io.BytesIO(data)) as image:
      image.load()  # decodes: a corrupt file fails here, named below
      if image.mode == "RGB" and image.format == "JPEG":
        return data
      return common.encode_png(np.asarray(image.convert("RGB")))
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"Corrupt image {name} in {archive.source}: {e}") from e


class TinyImagenet(common.ManualBuilder):
  """Tiny ImageNet: 64x64 RGB images of 200 classes."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "From tiny-imagenet-200.zip or its unpacked folder."}
  EXPECTED_FILES = (ZIP_NAME,)
  WHERE_TO_GET = f"download http://cs231n.stanford.edu/{ZIP_NAME} into data.manual_dir"
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."

  def check_manual_dir(self, manual_dir):
    path = pathlib.Path(manual_dir)
    with _Archive(path) as archive:
      if archive.exists("wnids.txt"):
        return path
    return super().check_manual_dir(path)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(64, 64, 3)),
            "label": tfds.features.ClassLabel(num_classes=200),
            "file_name": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"),
        homepage="http://cs231n.stanford.edu/")

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager)
    return {split: self._generate_examples(root, split) for split in ("train", "validation")}

  def _generate_examples(self, root: pathlib.Path, split: str):
    with _Archive(root) as archive:
      wnids = archive.read("wnids.txt").decode().split()
      index = {w: i for i, w in enumerate(wnids)}
      if split == "train":
        names = archive.list("train/", ".JPEG")
        labels = [index[n.split("/")[1]] for n in names]
      else:
        rows = [line.split("\t") for line in archive.read("val/val_annotations.txt").decode()
                .splitlines() if line.strip()]
        names = [f"val/images/{r[0]}" for r in rows]
        labels = [index[r[1]] for r in rows]
      if not names:
        raise common.missing_files_error(self.name, root, [f"{split} images"], self.WHERE_TO_GET)
      for name, label in zip(names, labels):
        yield name, {"image": _image_bytes(archive, name), "label": label, "file_name": name}
