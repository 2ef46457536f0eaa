"""The ``evaluate`` mode: FID, sFID, IS, precision and recall of a model's samples.

``evaluate_and_save(config, workdir)`` draws ``evaluate.num_samples`` images from the newest
checkpoint (``sample.*`` settings; they are also saved as ``--mode=sample`` saves them) or reads
``evaluate.samples_npz``, computes every metric its feature extractor allows against the
reference set -- ``evaluate.reference_npz`` (ADM format) or the ``evaluate.reference_split`` of
the ``data.*`` dataset -- and writes them to TensorBoard (``eval/<extractor>/<metric>``) and to
``<workdir>/eval/<samples>_<extractor>.json``.
"""

import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from diffseg_jax import config as config_lib
from diffseg_jax import data
from diffseg_jax import files
from diffseg_jax import generate
from diffseg_jax.evaluation import generative
from diffseg_jax.evaluation.features import FeatureExtractor
from diffseg_jax.evaluation.features import Features
from diffseg_jax.evaluation.features import make_extractor
from diffseg_jax.evaluation.reference_batches import ReferenceBatch
from diffseg_jax.evaluation.reference_batches import read_reference_batch


class GenerativeEvaluator:
  """The ADM suite in one feature space: ``run(images) -> {"fid", "sfid", "is", "precision",
  "recall"}``, each metric present when the extractor and the reference allow it.

  * FID and sFID compare the statistics of the samples' ``pool`` and ``spatial`` features with
    the reference's (those stored in the reference batch when it has them, as ADM does, else
    those of its images);
  * IS needs ``logits`` (the reference is not used);
  * precision and recall need reference images.

  The reference features are computed once, when the evaluator is made.
  """

  def __init__(self, extractor: FeatureExtractor, reference: ReferenceBatch,
               nearest_k: int = generative.NEAREST_K,
               is_split_size: int = generative.IS_SPLIT_SIZE,
               half_precision_distances: bool = True):
    if reference.statistics and reference.feature_extractor != extractor.name:
      raise ValueError(
          f"The reference statistics were computed with {reference.feature_extractor!r}, not "
          f"with {extractor.name!r}: use that extractor, or a reference with images.")
    self.extractor = extractor
    self.nearest_k, self.is_split_size = nearest_k, is_split_size
    self.half_precision = half_precision_distances
    self.reference_features = None if reference.images is None else extractor(reference.images)
    self.reference_statistics = dict(reference.statistics)
    if self.reference_features is not None:
      for kind in ("pool", "spatial"):
        features = getattr(self.reference_features, kind)
        if kind not in self.reference_statistics and features is not None:
          self.reference_statistics[kind] = generative.feature_statistics(
              features, f"{'FID' if kind == 'pool' else 'sFID'} (reference)")

  def _frechet(self, features: np.ndarray | None, kind: str, what: str) -> dict[str, float]:
    if features is None or kind not in self.reference_statistics:
      return {}
    stats = generative.feature_statistics(features, f"{what} (samples)")
    return {what.lower(): generative.frechet_distance(stats, self.reference_statistics[kind])}

  def run(self, images: np.ndarray) -> dict[str, float]:
    """Metrics of ``images`` (uint8 [N, H, W, C] or float in [-1, 1])."""
    features: Features = self.extractor(images)
    metrics = {**self._frechet(features.pool, "pool", "FID"),
               **self._frechet(features.spatial, "spatial", "sFID")}
    if features.logits is not None:
      metrics["is"] = generative.inception_score(features.logits, self.is_split_size)
    if self.reference_features is not None:
      metrics["precision"], metrics["recall"] = generative.precision_recall(
          self.reference_features.pool, features.pool, self.nearest_k,
          half_precision=self.half_precision)
    return metrics


def _reference(config: ml_collections.ConfigDict) -> tuple[ReferenceBatch, str]:
  """The reference set of ``config.evaluate`` and a description of it."""
  e = config.evaluate
  if e.reference_npz:
    return read_reference_batch(e.reference_npz), e.reference_npz
  images = data.read_split(config.data, e.reference_split, e.num_reference)["image"]
  return ReferenceBatch(images, {}), f"{config.data.name}:{e.reference_split}"


def _samples(config: ml_collections.ConfigDict,
             workdir: pathlib.Path) -> tuple[int, np.ndarray, str]:
  """``(step, uint8 images, name)``: sampled from the newest checkpoint (and saved as the
  sample mode saves them), or read from ``evaluate.samples_npz`` (step 0)."""
  e = config.evaluate
  if e.samples_npz:
    with np.load(e.samples_npz, allow_pickle=False) as npz:
      if "arr_0" not in npz.files:
        raise ValueError(f"{e.samples_npz} has no 'arr_0' images (it has {npz.files}).")
      return 0, npz["arr_0"], pathlib.Path(e.samples_npz).stem
  step, images, labels = generate.sample_checkpoint(config, str(workdir), e.num_samples)
  npz_path = generate.save_samples(workdir, step, config, images, labels)
  return step, images, npz_path.parent.name


def evaluate_and_save(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the evaluation of ``config.evaluate`` (module docstring) and returns its report:
  ``{"metrics": {...}, "feature_extractor": ..., "num_samples": ..., ...}``."""
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  e = config.evaluate
  extractor = make_extractor(e.features, e.inception_weights, e.batch_size)
  reference, reference_name = _reference(config)
  evaluator = GenerativeEvaluator(extractor, reference, e.nearest_k, e.is_split_size,
                                  e.half_precision_distances)
  step, images, samples_name = _samples(config, workdir)
  logging.info("Evaluating %d images (%s) against %s with %s.", len(images), samples_name,
               reference_name, extractor.name)
  metrics = evaluator.run(images)
  report = {
      "metrics": metrics,
      "feature_extractor": extractor.name,
      "step": step,
      "samples": e.samples_npz or samples_name,
      "num_samples": len(images),
      "reference": reference_name,
      "num_reference": None if reference.images is None else len(reference.images),
  }
  logging.info("Evaluation with %s: %s", extractor.name,
               ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()))
  writer = metric_writers.create_default_writer(str(workdir),
                                                just_logging=jax.process_index() > 0)
  writer.write_scalars(step, {f"eval/{extractor.name}/{k}": v for k, v in metrics.items()})
  writer.flush()
  if jax.process_index() == 0:
    files.write_json(workdir / "eval" / f"{samples_name}_{extractor.name}.json", report)
  return report
