"""Input pipeline: from a config to per-host batches laid out on the device mesh.

Every dataset is read by random access: TFDS datasets through ``as_data_source`` on their
prepared ArrayRecord files (prepared on first use into ``data.tfds_data_dir``, from the manual
folder ``data.manual_dir`` for the project's builders), the procedural ``shapes`` set from
memory. Training batches are a pure function of ``(seed, step)``: example order comes from a
per-epoch permutation seeded by ``(seed, epoch)``, augmentation from ``(seed, step, position
in the global batch)``, so a run restarted at step ``s`` sees exactly the batches an
uninterrupted run would have seen, on any number of hosts; each host reads and preprocesses
only its own rows. Evaluation visits a split once in order, the last batch padded.

Batches are dicts of:

* ``"image"``: float32 [B, S, S, C] in [-1, 1] (``S = data.image_size``);
* ``"label"``: int32 [B] class ids, when the dataset has them;
* ``"mask"``: int32 [B, S, S] class ids ``0..data.mask_classes-1`` and :data:`IGNORE_ID` for
  pixels without a label, when ``data.mask_classes > 0``;
* evaluation only: ``"valid"`` bool [B] (False on padding rows) and ``"index"`` int32 [B] (the
  example's position in the split, -1 on padding rows).
"""

import dataclasses
import math
from typing import Callable, Iterator, Sequence

import jax
import ml_collections
import numpy as np
import tensorflow_datasets as tfds
from absl import logging
from jax.experimental import multihost_utils

from diffseg_jax.data import builders
from diffseg_jax.data import catalogue
from diffseg_jax.data import preprocess
from diffseg_jax.data import synthetic
from diffseg_jax.data.builders import common
from diffseg_jax.data.builders import image_mask_folder
from diffseg_jax.data.prefetch import Prefetcher
from diffseg_jax.train import sharding

IGNORE_ID = common.IGNORE_ID
SHAPES = "shapes"  # the procedural dataset (no files)
_SHAPES_SIZE = 1024  # its number of examples


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """A dataset held in host memory.

  Attributes:
    images: uint8 [N, H, W, C] in 0..255.
    labels: int32 [N] class ids, or None.
    masks: uint8 [N, H, W] class ids, or None.
  """
  images: np.ndarray
  labels: np.ndarray | None = None
  masks: np.ndarray | None = None

  def __len__(self) -> int:
    return self.images.shape[0]

  def __getitem__(self, index: int) -> dict:
    example = {"image": self.images[index]}
    if self.labels is not None:
      example["label"] = self.labels[index]
    if self.masks is not None:
      example["mask"] = self.masks[index]
    return example


class TfdsSource:
  """A split of a prepared TFDS dataset, read by index, in the project's example layout."""

  def __init__(self, data_source: Sequence[dict], adapt: Callable[[dict], dict]):
    self._data_source, self._adapt = data_source, adapt

  def __len__(self) -> int:
    return len(self._data_source)

  def __getitem__(self, index: int) -> dict:
    return self._adapt(self._data_source[index])


Source = ArraySource | TfdsSource


def _fetch(source: Source, indices: np.ndarray) -> list[dict]:
  # One read per example: as fast as ArrayRecord's batched __getitems__ here (decoding
  # dominates), and what tfds.testing.mock_data supports.
  return [source[int(i)] for i in indices]


def tfds_builder(data_config: ml_collections.ConfigDict) -> tfds.core.DatasetBuilder:
  """The TFDS builder ``data.name`` names: one of this project's or of the TFDS catalogue."""
  data_dir = data_config.tfds_data_dir or None
  if data_config.name == builders.ImageMaskFolder.name:
    config = image_mask_folder.config_for(data_config.manual_dir, data_config.channels)
    return builders.ImageMaskFolder(data_dir=data_dir, config=config)
  try:
    return tfds.builder(data_config.name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    ours = sorted(c.name for c in (builders.CamvidSegnet, builders.FashionMnistIdx,
                                   builders.ImageMaskFolder, builders.Isbi2012,
                                   builders.LabelEfficientSegmentation, builders.MagneticTile,
                                   builders.MnistIdx, builders.TinyImagenet))
    raise ValueError(
        f"Unknown dataset data.name={data_config.name!r}: not {SHAPES!r}, not one of this "
        f"project's builders ({', '.join(ours)}) and not in the TFDS catalogue "
        "(https://www.tensorflow.org/datasets/catalog).") from e


def prepare(builder: tfds.core.DatasetBuilder, data_config: ml_collections.ConfigDict) -> None:
  """Prepares ``builder``'s dataset as ArrayRecord files unless it is prepared already.

  The project's builders read ``data.manual_dir`` (and never the network); catalogue datasets
  download (or read their own manual folder, e.g. cityscapes). A dataset prepared earlier in
  another file format (TFDS's default is TFRecord) is refused by TFDS when it is opened, with
  the fix (another ``data.tfds_data_dir``). Several processes: the first prepares, then the
  others if their ``data.tfds_data_dir`` is not the same shared folder.

  Raises:
    FileNotFoundError: the manual files are missing (naming them and where to get them).
    RuntimeError: a catalogue dataset could not be downloaded.
  """
  def prepare_here():
    if builder.is_prepared():
      return
    manual = isinstance(builder, common.ManualBuilder)
    if manual:
      builder.check_manual_dir(data_config.manual_dir)
    logging.info("Preparing %s in %s (once; later runs read it from there).", builder.name,
                 builder.data_dir)
    download_config = tfds.download.DownloadConfig(
        manual_dir=data_config.manual_dir or None, try_download_gcs=not manual)
    try:
      builder.download_and_prepare(download_config=download_config,
                                   file_format="array_record")
    except Exception as e:  # pylint: disable=broad-except  (network errors of many kinds)
      if manual:
        raise
      raise RuntimeError(
          f"Could not prepare {builder.name} from the TFDS catalogue in {builder.data_dir}: "
          f"{e}. Catalogue datasets download once (or read the manual folder their TFDS page "
          "names, in data.manual_dir); without internet, use one of this project's builders "
          "with files you have (diffseg_jax/data/builders).") from e

  if jax.process_count() > 1:
    if jax.process_index() == 0:
      prepare_here()
    multihost_utils.sync_global_devices(f"prepared {builder.name}")
  prepare_here()


def load_source(data_config: ml_collections.ConfigDict, split: str) -> Source:
  """Opens ``split`` of the dataset ``data.name`` for random access (preparing it first).

  Raises:
    ValueError: an unknown dataset or split, masks requested of a dataset without them, or a
      channel count other than ``data.channels``.
  """
  if data_config.name == SHAPES:
    images, labels = synthetic.shapes(_SHAPES_SIZE, data_config.image_size,
                                      data_config.channels, seed=0)
    source = ArraySource(images, labels)
  else:
    builder = tfds_builder(data_config)
    prepare(builder, data_config)
    adapt = catalogue.adapter(data_config.name)
    source = TfdsSource(builder.as_data_source(split),
                        lambda e: adapt(e, data_config.mask_classes))
  first = source[0]
  channels = first["image"].shape[-1]
  if channels != data_config.channels:
    raise ValueError(
        f"{data_config.name} has {channels} channel(s) but data.channels is "
        f"{data_config.channels}; set data.channels={channels}.")
  if data_config.mask_classes and "mask" not in first:
    raise ValueError(f"{data_config.name} has no masks; set data.mask_classes=0 or choose a "
                     "segmentation dataset.")
  return source


def preprocessing(data_config: ml_collections.ConfigDict) -> preprocess.Preprocess:
  return preprocess.Preprocess(image_size=data_config.image_size, resize=data_config.resize,
                               crop=data_config.crop, random_flip=data_config.random_flip)


def to_model_range(images: np.ndarray) -> np.ndarray:
  """uint8 0..255 -> float32 in [-1, 1]."""
  return images.astype(np.float32) / 127.5 - 1.0


def collate(examples: list[dict], mask_classes: int) -> dict[str, np.ndarray]:
  """Stacks preprocessed examples into a batch (see the module doc); masks only if asked for.

  Raises:
    ValueError: mask values outside ``0..mask_classes-1`` and the ignore id.
  """
  batch = {"image": to_model_range(np.stack([e["image"] for e in examples]))}
  if "label" in examples[0]:
    batch["label"] = np.asarray([e["label"] for e in examples], np.int32)
  if mask_classes:
    masks = np.stack([e["mask"] for e in examples]).astype(np.int32)
    bad = np.setdiff1d(np.unique(masks), [*range(mask_classes), IGNORE_ID])
    if bad.size:
      raise ValueError(f"Masks hold class ids {bad.tolist()} outside 0..{mask_classes - 1} "
                       f"(and {IGNORE_ID} = ignore): set data.mask_classes to the dataset's "
                       "number of classes.")
    batch["mask"] = masks
  return batch


def _squeeze_mask(example: dict) -> dict:
  mask = example.get("mask")
  if mask is not None and mask.ndim == 3:
    return dict(example, mask=mask[..., 0])
  return example


def train_batches(source: Source, *, global_batch_size: int, seed: int, start_step: int = 0,
                  process_index: int = 0, process_count: int = 1,
                  transform: preprocess.Preprocess | None = None,
                  mask_classes: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's rows of every global training batch from ``start_step`` on, forever.

  Args:
    source: the examples.
    global_batch_size: examples per step over all hosts; divisible by ``process_count``.
    seed: fixes the example order and the augmentation.
    start_step: the first step to yield (resuming a run).
    process_index, process_count: this host and the number of hosts (``jax.process_*``);
      host ``i`` gets rows ``i*B_local .. (i+1)*B_local`` of each global batch.
    transform: the preprocessing (None: images are used as they are).
    mask_classes: number of mask classes; 0 leaves masks out.

  Yields:
    Batches as described in the module doc, ``B_local = global_batch_size // process_count``.
  """
  if global_batch_size % process_count:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {process_count} hosts.")
  n = len(source)
  local = global_batch_size // process_count
  lo = process_index * local
  perms: dict[int, np.ndarray] = {}

  def order(epoch: int) -> np.ndarray:
    if epoch not in perms:
      if len(perms) >= 2:  # a batch usually spans at most two epochs
        del perms[min(perms)]
      perms[epoch] = np.random.default_rng([seed, epoch]).permutation(n)
    return perms[epoch]

  step = start_step
  while True:
    rows = np.arange(lo, lo + local)
    epochs, offsets = np.divmod(step * global_batch_size + rows, n)
    indices = np.empty(local, np.int64)
    for epoch in np.unique(epochs):  # one or two epochs (more if the batch exceeds the data)
      in_epoch = epochs == epoch
      indices[in_epoch] = order(int(epoch))[offsets[in_epoch]]
    examples = [_squeeze_mask(e) for e in _fetch(source, indices)]
    if transform is not None:
      examples = [preprocess.apply(e, transform, np.random.default_rng([seed, step, int(row)]))
                  for e, row in zip(examples, rows)]
    yield collate(examples, mask_classes)
    step += 1


def num_eval_batches(num_examples: int, global_batch_size: int) -> int:
  return math.ceil(num_examples / global_batch_size)


def eval_batches(source: Source, *, global_batch_size: int, process_index: int = 0,
                 process_count: int = 1, transform: preprocess.Preprocess | None = None,
                 mask_classes: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Yields this host's rows of each global batch of one ordered pass over ``source``.

  Global batch ``b`` holds examples ``b*G .. (b+1)*G - 1`` (``G = global_batch_size``); rows
  past the last example repeat example 0 with ``valid`` False and ``index`` -1, so every host
  yields :func:`num_eval_batches` batches of the same shape and every example is in exactly
  one valid row. Preprocessing is deterministic (centre crops, no flips).
  """
  if global_batch_size % process_count:
    raise ValueError(
        f"Global batch size {global_batch_size} is not divisible by the {process_count} hosts.")
  n = len(source)
  local = global_batch_size // process_count
  rows = np.arange(process_index * local, (process_index + 1) * local)
  for b in range(num_eval_batches(n, global_batch_size)):
    positions = b * global_batch_size + rows
    valid = positions < n
    examples = [_squeeze_mask(e) for e in _fetch(source, np.where(valid, positions, 0))]
    if transform is not None:
      examples = [preprocess.apply(e, transform, None) for e in examples]
    batch = collate(examples, mask_classes)
    batch["valid"] = valid
    batch["index"] = np.where(valid, positions, -1).astype(np.int32)
    yield batch


def read_split(data_config: ml_collections.ConfigDict, split: str, limit: int = 0,
               transform: Callable[[dict], dict] | None = None) -> dict[str, np.ndarray]:
  """The first ``limit`` examples of ``split`` (all if 0) in memory, in order, as evaluated.

  For reference sets, segmentation evaluation and small tools: ``{"image": uint8
  [N, S, S, C], "label": int32 [N], "mask": uint8 [N, S, S]}`` (``label`` and ``mask`` where
  the dataset has them; ``mask`` only with ``data.mask_classes``), each example preprocessed
  as the evaluation pass does (centre crops, no flips, ``S = data.image_size``) or by
  ``transform`` (then every result must have the same size).
  """
  source = load_source(data_config, split)
  count = min(len(source), limit) if limit else len(source)
  if transform is None:
    eval_transform = preprocessing(data_config)
    transform = lambda e: preprocess.apply(e, eval_transform, None)  # pylint: disable=unnecessary-lambda-assignment
  examples = [transform(_squeeze_mask(e)) for e in _fetch(source, np.arange(count))]
  out = {"image": np.stack([e["image"] for e in examples]).astype(np.uint8)}
  if "label" in examples[0]:
    out["label"] = np.asarray([e["label"] for e in examples], np.int32)
  if data_config.mask_classes:
    out["mask"] = collate(examples, data_config.mask_classes)["mask"].astype(np.uint8)
  return out


def train_iterator(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                   start_step: int = 0) -> Prefetcher:
  """Global training batches on ``mesh`` from ``start_step`` on (``data.prefetch`` ahead).

  Each process reads its rows of ``data.split``; see :func:`train_batches`. Close the result
  when done.
  """
  d = config.data
  batches = train_batches(
      load_source(d, d.split), global_batch_size=config.train.batch_size, seed=config.seed,
      start_step=start_step, process_index=jax.process_index(),
      process_count=jax.process_count(), transform=preprocessing(d),
      mask_classes=d.mask_classes)
  return Prefetcher(batches, lambda b: sharding.put_batch(b, mesh), d.prefetch)


def eval_iterator(config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh,
                  split: str | None = None) -> Prefetcher:
  """One ordered pass over ``split`` (default ``data.eval_split``) as global batches on
  ``mesh`` of ``data.eval_batch_size`` (0: ``train.batch_size``); see :func:`eval_batches`."""
  d = config.data
  batches = eval_batches(
      load_source(d, split or d.eval_split),
      global_batch_size=d.eval_batch_size or config.train.batch_size,
      process_index=jax.process_index(), process_count=jax.process_count(),
      transform=preprocessing(d), mask_classes=d.mask_classes)
  return Prefetcher(batches, lambda b: sharding.put_batch(b, mesh), d.prefetch)
