"""The few-label segmentation sets of Baranchuk et al., "Label-Efficient Semantic Segmentation
with Diffusion Models" (ICLR 2022): one builder config per dataset.

Reads the authors' ``datasets.tar.gz`` (github.com/yandex-research/ddpm-segmentation,
``datasets/download_datasets.sh``) unpacked, unchanged::

  <name>/real/{train,test}/<stem>.{png,jpg}     RGB image
  <name>/real/{train,test}/<stem>.npy           integer label map, same height and width

``data.manual_dir`` is the unpacked folder holding ``<name>/``. Each dataset's class count and
ignore label are those of the authors' experiment configs; the ignore label is stored as the
ignore id (255), other class ids as they are (so ``bedroom_28``, whose ignore label is 0,
keeps ids 1..28 of its 29).
"""

import dataclasses
import pathlib

import numpy as np
import tensorflow_datasets as tfds

from diffseg_jax.data.builders import common

_IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")


@dataclasses.dataclass
class LabelEfficientConfig(tfds.core.BuilderConfig):
  num_classes: int = 0
  ignore_label: int = 255


CONFIGS = (
    LabelEfficientConfig(name="ffhq_34", num_classes=34, ignore_label=255),
    LabelEfficientConfig(name="celeba_19", num_classes=19, ignore_label=255),
    LabelEfficientConfig(name="cat_15", num_classes=15, ignore_label=255),
    LabelEfficientConfig(name="horse_21", num_classes=21, ignore_label=255),
    LabelEfficientConfig(name="bedroom_28", num_classes=29, ignore_label=0),
    LabelEfficientConfig(name="ade_bedroom_30", num_classes=30, ignore_label=255),
)


def label_map(array: np.ndarray, path: pathlib.Path, num_classes: int,
              ignore_label: int) -> np.ndarray:
  """A ``.npy`` label map [H, W] -> uint8 class ids with the ignore label as the ignore id."""
  if array.ndim != 2 or not np.issubdtype(array.dtype, np.integer):
    raise ValueError(f"Label map {path} is {array.dtype} {array.shape}; expected a 2-D "
                     "integer array (height x width).")
  ignored = array == ignore_label
  ids = np.where(ignored, common.IGNORE_ID, array)
  bad = np.setdiff1d(np.unique(ids), [*range(num_classes), common.IGNORE_ID])
  if bad.size:
    raise ValueError(f"Label map {path} holds values {bad.tolist()} outside the dataset's "
                     f"classes 0..{num_classes - 1} (ignore label {ignore_label}).")
  return ids.astype(np.uint8)


class LabelEfficientSegmentation(common.ManualBuilder):
  """Baranchuk et al.'s sets: RGB images with dense part labels, 20..50 to train."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "real/train and real/test of the authors' datasets.tar.gz."}
  BUILDER_CONFIGS = list(CONFIGS)
  WHERE_TO_GET = (
      "download https://storage.yandexcloud.net/yandex-research/ddpm-segmentation/"
      "datasets.tar.gz, unpack it and set data.manual_dir to the folder holding <name>/real")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."

  def expected_files(self):
    return tuple(f"{self.builder_config.name}/real/{split}" for split in ("train", "test"))

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "mask": common.mask_feature(),
            "file_name": tfds.features.Text(),
        }),
        description=f"{self.builder_config.num_classes} classes; ignore label "
                    f"{self.builder_config.ignore_label} stored as {common.IGNORE_ID}.",
        homepage="https://github.com/yandex-research/ddpm-segmentation")

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager) / self.builder_config.name / "real"
    return {split: self._generate_examples(root / split) for split in ("train", "test")}

  def _generate_examples(self, folder: pathlib.Path):
    config = self.builder_config
    images = sorted(p for p in folder.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
    if not images:
      raise common.missing_files_error(f"{self.name}/{config.name}", folder,
                                       ["<stem>.png (or .jpg)", "<stem>.npy"], self.WHERE_TO_GET)
    for image_path in images:
      npy = image_path.with_suffix(".npy")
      if not npy.exists():
        raise FileNotFoundError(f"{image_path} has no label map {npy}.")
      try:
        array = np.load(npy)
      except (OSError, ValueError) as e:
        raise ValueError(f"Corrupt or unreadable label map {npy}: {e}") from e
      mask = label_map(array, npy, config.num_classes, config.ignore_label)
      name = f"{folder.name}/{image_path.name}"
      yield name, common.segmentation_example(image_path, "RGB", npy, mask, config.num_classes,
                                              name)
