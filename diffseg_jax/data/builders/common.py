"""What the project's TFDS builders share: the feature layout, file checks, mask encoding.

Every builder yields examples of the same shape, so the input pipeline reads them alike:

* ``"image"``: ``tfds.features.Image`` uint8 [H, W, C] (the original file's bytes where they
  can be kept, PNG otherwise);
* ``"mask"`` (segmentation sets): ``tfds.features.Image`` uint8 [H, W, 1] holding class ids
  ``0..K-1`` and :data:`IGNORE_ID` for pixels without a label;
* ``"label"`` (classification sets): ``tfds.features.ClassLabel``;
* ``"file_name"``: the source file, relative to the manual folder.
"""

import io
import pathlib
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

IGNORE_ID = 255  # mask value of pixels that carry no class (void, unlabelled)


def missing_files_error(name: str, manual_dir: pathlib.Path, expected: Iterable[str],
                        where_to_get: str) -> FileNotFoundError:
  """The error for manual files that are not there: the dataset, the files and their source."""
  listed = "\n  ".join(expected)
  return FileNotFoundError(
      f"{name}: the manual files are not in {manual_dir} (config field data.manual_dir). "
      f"Expected:\n  {listed}\nTo get them, {where_to_get}.")


def require(name: str, manual_dir: pathlib.Path, relative: Iterable[str],
            where_to_get: str) -> None:
  """Raises :func:`missing_files_error` unless every path below ``manual_dir`` exists."""
  relative = list(relative)
  if not all((manual_dir / r).exists() for r in relative):
    raise missing_files_error(name, manual_dir, relative, where_to_get)


def read_image(path: pathlib.Path, mode: str) -> np.ndarray:
  """Decodes an image file into uint8 [H, W] (``mode="L"``) or [H, W, 3] (``"RGB"``).

  Raises:
    ValueError: naming the file, when it cannot be decoded.
  """
  try:
    with Image.open(path) as image:
      return np.asarray(image.convert(mode))
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"Corrupt or unreadable image {path}: {e}") from e


def read_mask(path: pathlib.Path) -> np.ndarray:
  """Decodes a mask file's stored values (greyscale, or a palette's indices) into [H, W].

  Raises:
    ValueError: naming the file, when it cannot be decoded or is not single-channel.
  """
  try:
    with Image.open(path) as mask:
      if mask.mode not in ("L", "P", "I;16", "I"):
        raise ValueError(f"mode {mask.mode!r}: a mask must be one channel of class values "
                         "(greyscale or palette PNG)")
      return np.asarray(mask)
  except (OSError, SyntaxError, ValueError) as e:
    raise ValueError(f"Corrupt or unreadable mask {path}: {e}") from e


def image_file(path: pathlib.Path, mode: str) -> tuple[np.ndarray, bytes]:
  """Decodes an image (see :func:`read_image`) and returns it with bytes to store for it.

  The file's own bytes are kept when they decode to exactly this array (a PNG or JPEG already
  in ``mode``); anything else (palette, 16-bit, another colour mode) is stored as PNG.
  """
  image = read_image(path, mode)
  with Image.open(path) as opened:
    kept = opened.mode == mode and opened.format in ("PNG", "JPEG")
  return image, path.read_bytes() if kept else encode_png(image)


def check_pair(image_path: pathlib.Path, image: np.ndarray, mask_path: pathlib.Path,
               mask: np.ndarray) -> None:
  """Raises ``ValueError`` naming both files when image and mask differ in height or width."""
  if image.shape[:2] != mask.shape[:2]:
    raise ValueError(
        f"Image {image_path} is {image.shape[0]}x{image.shape[1]} but its mask {mask_path} is "
        f"{mask.shape[0]}x{mask.shape[1]} (height x width); they must be the same size.")


def check_mask_values(path: pathlib.Path, mask: np.ndarray, num_classes: int) -> None:
  """Raises ``ValueError`` naming the file for ids other than ``0..num_classes-1``/ignore."""
  bad = np.setdiff1d(np.unique(mask), [*range(num_classes), IGNORE_ID])
  if bad.size:
    raise ValueError(
        f"Mask {path} holds values {bad.tolist()} outside the declared classes "
        f"0..{num_classes - 1} (and {IGNORE_ID} = ignore).")


def encode_png(array: np.ndarray) -> bytes:
  """uint8 [H, W] or [H, W, 3] -> PNG bytes (lossless; TFDS stores them as they are)."""
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format="PNG")
  return buffer.getvalue()


def mask_feature(height: int | None = None, width: int | None = None) -> tfds.features.Image:
  """A single-channel class-id map, stored as PNG; ``None`` sizes vary per example."""
  return tfds.features.Image(shape=(height, width, 1), encoding_format="png")


def segmentation_example(image_path: pathlib.Path, mode: str, mask_path: pathlib.Path,
                         mask: np.ndarray, num_classes: int, file_name: str) -> dict:
  """The example of an image file and its decoded class-id mask uint8 [H, W], both checked.

  Raises:
    ValueError: a corrupt image, sizes that differ, or mask values outside the classes.
  """
  image, image_bytes = image_file(image_path, mode)
  check_pair(image_path, image, mask_path, mask)
  check_mask_values(mask_path, mask, num_classes)
  return {"image": image_bytes, "mask": encode_png(mask.astype(np.uint8)),
          "file_name": file_name}


class ManualBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A builder whose files the user downloads by hand into ``manual_dir``.

  Subclasses set ``EXPECTED_FILES`` (paths below ``manual_dir`` that must exist, as the
  distribution names them) and ``WHERE_TO_GET``; both make up the manual-download instructions
  and the error for missing files.
  """

  EXPECTED_FILES: tuple[str, ...] = ()
  WHERE_TO_GET = ""

  def expected_files(self) -> tuple[str, ...]:
    return self.EXPECTED_FILES

  def layouts(self, manual_dir: pathlib.Path) -> list[pathlib.Path]:
    """Folders that may hold the expected files: ``manual_dir`` itself unless overridden."""
    return [manual_dir]

  def check_manual_dir(self, manual_dir: str | pathlib.Path) -> pathlib.Path:
    """Returns the folder holding the files; raises ``FileNotFoundError`` naming them."""
    path = pathlib.Path(manual_dir)
    for layout in self.layouts(path):
      if all((layout / f).exists() for f in self.expected_files()):
        return layout
    name = self.name + (f"/{self.builder_config.name}" if self.builder_config else "")
    raise missing_files_error(name, path, self.expected_files(), self.WHERE_TO_GET)

  def manual_root(self, dl_manager: tfds.download.DownloadManager) -> pathlib.Path:
    """The checked folder holding the files, from the download manager's manual dir."""
    return self.check_manual_dir(pathlib.Path(str(dl_manager.manual_dir)))
