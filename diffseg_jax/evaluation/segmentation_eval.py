"""The ``evaluate`` mode of the segmentation methods: overlap, calibration and uncertainty.

:func:`score` turns a model's predictions on an evaluation set into the numbers the SegDiff
tables report; :func:`evaluate_and_save` runs the model of a config from its newest checkpoint
(``segment.*`` settings, ``diffseg_jax.segment``) and writes them to TensorBoard
(``eval/<metric>``) and ``<segment dir>/metrics.json`` with the prediction panel.
"""

import math
import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers

from diffseg_jax import files
from diffseg_jax import segment
from diffseg_jax.data import IGNORE_ID
from diffseg_jax.evaluation import segmentation as metrics


def score(targets: np.ndarray, predictions: dict[str, np.ndarray],
          num_classes: int) -> dict[str, float | list[float]]:
  """The SegDiff table's metrics of one prediction of an evaluation set.

  Args:
    targets: int [N, H, W] class ids, :data:`IGNORE_ID` where unlabelled.
    predictions: ``mask`` int [N, H, W], ``probs`` float [N, H, W, K], ``variance`` and
      ``entropy`` float [N, H, W] (``masks.combine_members``).
    num_classes: K.

  Returns:
    ``dice`` and ``iou`` (binary: of class 1 over all pixels, and their means over images
    as ``image_mean_dice`` / ``image_mean_iou``, as SegDiff reports; else the means over
    classes present, also as ``mean_dice`` / ``miou``), per-class ``dice_per_class`` / ``iou_per_class`` (NaN for an
    absent class), ``pixel_accuracy``, ``ece`` (15 bins, of the predicted class), and
    ``auroc_variance`` / ``auroc_entropy``: how well each uncertainty ranks erroneous pixels
    above correct ones (NaN when the uncertainty is constant, e.g. the variance of one sample,
    or when every pixel is right or every pixel wrong).
  """
  overlap = metrics.overlap_scores(predictions["mask"], targets, num_classes, IGNORE_ID)
  out = {
      "dice_per_class": overlap["dice"].tolist(),
      "iou_per_class": overlap["iou"].tolist(),
      "mean_dice": overlap["mean_dice"],
      "miou": overlap["mean_iou"],
      "pixel_accuracy": metrics.pixel_accuracy(predictions["mask"], targets, IGNORE_ID),
      "ece": metrics.expected_calibration_error(predictions["probs"], targets,
                                                ignore_index=IGNORE_ID),
  }
  if num_classes == 2:
    out["dice"], out["iou"] = float(overlap["dice"][1]), float(overlap["iou"][1])
    per_image = [metrics.overlap_scores(p, t, 2, IGNORE_ID)
                 for p, t in zip(predictions["mask"], targets)]
    out["image_mean_dice"] = float(np.nanmean([s["dice"][1] for s in per_image]))
    out["image_mean_iou"] = float(np.nanmean([s["iou"][1] for s in per_image]))
  else:
    out["dice"], out["iou"] = overlap["mean_dice"], overlap["mean_iou"]
  valid = targets != IGNORE_ID
  error = (predictions["mask"] != targets) & valid
  for name in ("variance", "entropy"):
    uncertainty = predictions[name][valid]
    informative = uncertainty.min() < uncertainty.max() and 0 < error.sum() < valid.sum()
    out[f"auroc_{name}"] = (metrics.uncertainty_error_auroc(predictions[name], error, valid)
                            if informative else math.nan)
  return out


def evaluate_and_save(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Segments the evaluation set with the newest checkpoint and scores it (module doc).

  Returns:
    :func:`score`'s metrics plus ``seconds_per_image``, ``num_images`` and ``step``.
  """
  step, examples, predictions, seconds = segment.segment_checkpoint(config, workdir)
  result = score(examples["mask"], predictions, config.data.mask_classes)
  result.update(seconds_per_image=seconds, num_images=len(examples["mask"]), step=step)
  out_dir = segment.segment_dir(workdir, step, config)
  if jax.process_index() == 0:
    files.write_json(out_dir / "metrics.json", result)
    files.write_png(out_dir / "panels.png", segment.panel(examples, predictions,
                                                          config.data.mask_classes))
  writer = metric_writers.create_default_writer(pathlib.Path(workdir) / "eval",
                                                just_logging=jax.process_index() > 0)
  writer.write_scalars(step, {f"eval/{k}": v for k, v in result.items()
                              if isinstance(v, float)})
  writer.flush()
  logging.info("Evaluation of the step-%d checkpoint: %s", step,
               {k: v for k, v in result.items() if not isinstance(v, list)})
  return result
