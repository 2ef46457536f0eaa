"""Segmentation metrics as pure numpy functions.

Masks are int class ids of any shape (``[N, H, W]`` or ``[H, W]``); probabilities carry the
classes on their last axis (``[..., C]``). Pixels whose target equals ``ignore_index`` take no
part in any score.

Overlap scores are pooled over every pixel given (a dataset-level confusion matrix, as mIoU is
usually reported); for the mean of per-image scores, call them per image and average. A class
absent from both prediction and target has no Dice or IoU (NaN) and is left out of the means.

For ensembles of sampled masks (SegDiff-style models draw several per image):
:func:`pixel_variance`, :func:`pixel_entropy`, :func:`generalized_energy_distance`; and
:func:`uncertainty_error_auroc` for how well a per-pixel uncertainty predicts per-pixel errors.
"""

import numpy as np
from scipy import stats


def _valid(target: np.ndarray, ignore_index: int | None) -> np.ndarray:
  return np.ones(target.shape, bool) if ignore_index is None else target != ignore_index


def _check_labels(pred: np.ndarray, target: np.ndarray, num_classes: int,
                  valid: np.ndarray) -> None:
  if pred.shape != target.shape:
    raise ValueError(f"Prediction {pred.shape} and target {target.shape} shapes differ.")
  for what, mask in (("prediction", pred), ("target", target)):
    values = mask[valid]
    if values.size and (values.min() < 0 or values.max() >= num_classes):
      raise ValueError(f"The {what} holds class ids outside 0..{num_classes - 1} "
                       f"({values.min()}..{values.max()}): check num_classes and ignore_index.")


def confusion_matrix(pred: np.ndarray, target: np.ndarray, num_classes: int,
                     ignore_index: int | None = None) -> np.ndarray:
  """int64 [C, C]: entry ``[t, p]`` counts pixels of target class t predicted as p."""
  pred, target = np.asarray(pred), np.asarray(target)
  valid = _valid(target, ignore_index)
  _check_labels(pred, target, num_classes, valid)
  index = target[valid].astype(np.int64) * num_classes + pred[valid].astype(np.int64)
  return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


def overlap_scores(pred: np.ndarray, target: np.ndarray, num_classes: int,
                   ignore_index: int | None = None) -> dict[str, np.ndarray | float]:
  """Dice (F1) and IoU per class and their means over the classes present.

  Returns:
    ``{"dice": float64 [C], "iou": float64 [C], "mean_dice": float, "mean_iou": float}``
    with ``dice = 2 TP / (2 TP + FP + FN)`` and ``iou = TP / (TP + FP + FN)`` per class (NaN for
    a class in neither prediction nor target; the means leave those out).
  """
  cm = confusion_matrix(pred, target, num_classes, ignore_index).astype(np.float64)
  tp = np.diag(cm)
  fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
  union = tp + fp + fn
  with np.errstate(invalid="ignore", divide="ignore"):
    dice = np.where(union > 0, 2 * tp / (2 * tp + fp + fn), np.nan)
    iou = np.where(union > 0, tp / union, np.nan)
  present = union > 0
  mean = lambda x: float(x[present].mean()) if present.any() else float("nan")
  return {"dice": dice, "iou": iou, "mean_dice": mean(dice), "mean_iou": mean(iou)}


def pixel_accuracy(pred: np.ndarray, target: np.ndarray,
                   ignore_index: int | None = None) -> float:
  """The fraction of (non-ignored) pixels whose predicted class is the target's."""
  pred, target = np.asarray(pred), np.asarray(target)
  if pred.shape != target.shape:
    raise ValueError(f"Prediction {pred.shape} and target {target.shape} shapes differ.")
  valid = _valid(target, ignore_index)
  if not valid.any():
    raise ValueError("Every pixel is ignored: there is nothing to score.")
  return float(np.mean(pred[valid] == target[valid]))


def _probabilities(probs: np.ndarray, target: np.ndarray,
                   ignore_index: int | None) -> tuple[np.ndarray, np.ndarray]:
  """The valid pixels' float64 probabilities [P, C] and int targets [P], checked."""
  probs, target = np.asarray(probs, np.float64), np.asarray(target)
  if probs.shape[:-1] != target.shape:
    raise ValueError(f"Probabilities {probs.shape} must be the target's shape {target.shape} "
                     "plus a class axis.")
  valid = _valid(target, ignore_index)
  p, t = probs[valid], target[valid].astype(np.int64)
  if not len(t):
    raise ValueError("Every pixel is ignored: there is nothing to score.")
  if np.any(p < 0) or not np.allclose(p.sum(axis=-1), 1.0, atol=1e-4):
    raise ValueError("Probabilities must be non-negative and sum to 1 over the last axis "
                     "(apply a softmax to logits first).")
  if t.min() < 0 or t.max() >= p.shape[-1]:
    raise ValueError(f"Target class ids {t.min()}..{t.max()} are outside "
                     f"0..{p.shape[-1] - 1}.")
  return p, t


def brier_score(probs: np.ndarray, target: np.ndarray,
                ignore_index: int | None = None) -> float:
  """Mean over pixels of ``sum_c (p_c - [c == target])^2`` (0 is perfect, 2 the worst)."""
  p, t = _probabilities(probs, target, ignore_index)
  onehot = np.eye(p.shape[-1])[t]
  return float(np.mean(np.sum((p - onehot) ** 2, axis=-1)))


def expected_calibration_error(probs: np.ndarray, target: np.ndarray, num_bins: int = 15,
                               ignore_index: int | None = None) -> float:
  """ECE of the predicted class: ``sum_b |B_b| / P * |accuracy(B_b) - confidence(B_b)|``.

  Pixels fall into ``num_bins`` equal-width bins ``(i / n, (i + 1) / n]`` of their confidence
  (the largest probability); a pixel is correct when that class (the first, on ties) is the
  target.
  """
  p, t = _probabilities(probs, target, ignore_index)
  confidence = p.max(axis=-1)
  correct = p.argmax(axis=-1) == t
  bins = np.clip(np.ceil(confidence * num_bins).astype(np.int64) - 1, 0, num_bins - 1)
  gap = np.abs(np.bincount(bins, correct, num_bins) - np.bincount(bins, confidence, num_bins))
  return float(gap.sum() / len(t))


def pixel_variance(samples: np.ndarray) -> np.ndarray:
  """float64 [...]: the per-pixel variance over samples [S, ...] (binary masks or
  probabilities; population variance, ``ddof=0``)."""
  samples = np.asarray(samples, np.float64)
  if samples.ndim < 2:
    raise ValueError(f"Expected samples [S, ...], got shape {samples.shape}.")
  return samples.var(axis=0)


def pixel_entropy(samples: np.ndarray, num_classes: int) -> np.ndarray:
  """float64 [...]: per pixel, the entropy (nats) of the class frequencies over int masks
  [S, ...]; 0 where every sample agrees, ``log(min(S, C))`` at most."""
  samples = np.asarray(samples)
  if samples.ndim < 2:
    raise ValueError(f"Expected samples [S, ...], got shape {samples.shape}.")
  if samples.min() < 0 or samples.max() >= num_classes:
    raise ValueError(f"Class ids {samples.min()}..{samples.max()} are outside "
                     f"0..{num_classes - 1}.")
  freq = np.stack([(samples == c).mean(axis=0) for c in range(num_classes)], axis=-1)
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.sum(np.where(freq > 0, freq * np.log(freq), 0.0), axis=-1)


def _iou_distance(a: np.ndarray, b: np.ndarray, classes: np.ndarray) -> float:
  """``1 - mean IoU`` over ``classes`` present in a or b; 0 if none is present."""
  ious = []
  for c in classes:
    in_a, in_b = a == c, b == c
    union = np.count_nonzero(in_a | in_b)
    if union:
      ious.append(np.count_nonzero(in_a & in_b) / union)
  return 1.0 - float(np.mean(ious)) if ious else 0.0


def generalized_energy_distance(samples: np.ndarray, annotations: np.ndarray,
                                num_classes: int = 2,
                                classes: tuple[int, ...] | None = None) -> float:
  """The squared generalised energy distance between sampled masks and annotations.

  ``D^2 = 2 E[d(S, Y)] - E[d(S, S')] - E[d(Y, Y')]`` with ``d = 1 - IoU`` (the probabilistic
  U-Net's and PHiSeg's definition): expectations are means over every pair, a mask paired with
  itself included. ``d`` is ``1 -`` the mean IoU over ``classes`` (default: the foreground
  classes ``1..num_classes-1``) present in either mask, and 0 when both masks are empty.

  Args:
    samples: int [S, ...] sampled masks of one image.
    annotations: int [A, ...] annotations of it (A >= 1), or one int [...] mask.
  """
  samples, annotations = np.asarray(samples), np.asarray(annotations)
  if annotations.ndim == samples.ndim - 1:
    annotations = annotations[None]
  if samples.shape[1:] != annotations.shape[1:]:
    raise ValueError(f"Samples {samples.shape} and annotations {annotations.shape} must be "
                     "masks of the same shape.")
  classes = np.arange(1, num_classes) if classes is None else np.asarray(classes)

  def mean_distance(xs, ys):
    return float(np.mean([_iou_distance(x, y, classes) for x in xs for y in ys]))

  return (2 * mean_distance(samples, annotations) - mean_distance(samples, samples)
          - mean_distance(annotations, annotations))


def uncertainty_error_auroc(uncertainty: np.ndarray, error: np.ndarray,
                            valid: np.ndarray | None = None) -> float:
  """AUROC of a per-pixel uncertainty as a score for predicting per-pixel errors.

  The probability that a random erroneous pixel has a higher uncertainty than a random correct
  one, ties counting one half (the Mann-Whitney statistic, from average ranks).

  Args:
    uncertainty: float [...], e.g. :func:`pixel_variance` or :func:`pixel_entropy`.
    error: bool [...], True where the prediction is wrong.
    valid: optional bool [...], the pixels to use (e.g. ``target != ignore_index``).
  """
  uncertainty, error = np.asarray(uncertainty, np.float64), np.asarray(error, bool)
  if uncertainty.shape != error.shape:
    raise ValueError(f"Uncertainty {uncertainty.shape} and error {error.shape} shapes differ.")
  if valid is not None:
    uncertainty, error = uncertainty[np.asarray(valid, bool)], error[np.asarray(valid, bool)]
  n_err = int(error.sum())
  n_ok = error.size - n_err
  if n_err == 0 or n_ok == 0:
    raise ValueError(f"AUROC needs both erroneous and correct pixels; got {n_err} erroneous "
                     f"and {n_ok} correct.")
  ranks = stats.rankdata(uncertainty.ravel())
  return float((ranks[error.ravel()].sum() - n_err * (n_err + 1) / 2) / (n_err * n_ok))
