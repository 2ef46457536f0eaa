"""Segmentation metrics against brute-force computations on random data."""

import collections
import itertools
import math

import numpy as np
import pytest

from diffseg_jax.evaluation import segmentation

IGNORE = 255


def _masks(seed, shape=(3, 9, 11), num_classes=4, ignore_fraction=0.1):
  rng = np.random.default_rng(seed)
  target = rng.integers(0, num_classes, shape)
  pred = np.where(rng.random(shape) < 0.6, target, rng.integers(0, num_classes, shape))
  target = np.where(rng.random(shape) < ignore_fraction, IGNORE, target)
  return pred, target


def _pixels(pred, target):
  """(p, t) pairs of the non-ignored pixels."""
  return [(p, t) for p, t in zip(pred.ravel(), target.ravel()) if t != IGNORE]


def test_dice_and_iou_brute_force():
  pred, target = _masks(0)
  pred[pred == 3] = 0  # class 3 is never predicted: Dice 0 where it is a target
  scores = segmentation.overlap_scores(pred, target, 5, ignore_index=IGNORE)
  pixels = _pixels(pred, target)
  dice, iou = [], []
  for c in range(5):
    tp = sum(p == c and t == c for p, t in pixels)
    fp = sum(p == c and t != c for p, t in pixels)
    fn = sum(p != c and t == c for p, t in pixels)
    if tp + fp + fn == 0:  # class 4 appears nowhere
      assert math.isnan(scores["dice"][c]) and math.isnan(scores["iou"][c])
      continue
    dice.append(2 * tp / (2 * tp + fp + fn))
    iou.append(tp / (tp + fp + fn))
    assert scores["dice"][c] == pytest.approx(dice[-1])
    assert scores["iou"][c] == pytest.approx(iou[-1])
  assert dice[3] == 0
  assert scores["mean_dice"] == pytest.approx(np.mean(dice))
  assert scores["mean_iou"] == pytest.approx(np.mean(iou))


def test_pixel_accuracy_brute_force():
  pred, target = _masks(1)
  pixels = _pixels(pred, target)
  expected = sum(p == t for p, t in pixels) / len(pixels)
  assert segmentation.pixel_accuracy(pred, target, IGNORE) == pytest.approx(expected)


def test_out_of_range_labels_are_refused():
  pred, target = _masks(2)
  with pytest.raises(ValueError, match="outside 0..3"):
    segmentation.overlap_scores(pred, target, 4)  # 255 is not ignored here


def _probs(seed, shape=(2, 8, 7), num_classes=3):
  rng = np.random.default_rng(seed)
  logits = rng.normal(size=(*shape, num_classes)) * 2
  probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
  target = rng.integers(0, num_classes, shape)
  target = np.where(rng.random(shape) < 0.1, IGNORE, target)
  return probs, target


def test_brier_score_brute_force():
  probs, target = _probs(3)
  terms = [sum((p[c] - (c == t)) ** 2 for c in range(3))
           for p, t in zip(probs.reshape(-1, 3), target.ravel()) if t != IGNORE]
  assert segmentation.brier_score(probs, target, IGNORE) == pytest.approx(np.mean(terms))


def test_expected_calibration_error_brute_force():
  probs, target = _probs(4, shape=(4, 16, 16))
  num_bins = 10
  pixels = [(p, t) for p, t in zip(probs.reshape(-1, 3), target.ravel()) if t != IGNORE]
  ece = 0.0
  for b in range(num_bins):
    lo, hi = b / num_bins, (b + 1) / num_bins
    in_bin = [(p, t) for p, t in pixels if lo < p.max() <= hi]
    if in_bin:
      accuracy = np.mean([np.argmax(p) == t for p, t in in_bin])
      confidence = np.mean([p.max() for p, _ in in_bin])
      ece += len(in_bin) / len(pixels) * abs(accuracy - confidence)
  got = segmentation.expected_calibration_error(probs, target, num_bins, IGNORE)
  assert got == pytest.approx(ece)
  assert ece > 0.01  # random probabilities are miscalibrated


def test_probabilities_must_sum_to_one():
  probs, target = _probs(5)
  with pytest.raises(ValueError, match="sum to 1"):
    segmentation.brier_score(probs * 2, target, IGNORE)


def test_pixel_variance_and_entropy_brute_force():
  rng = np.random.default_rng(6)
  samples = rng.integers(0, 3, (5, 4, 6))
  entropy = segmentation.pixel_entropy(samples, 3)
  binary = (samples == 1).astype(np.float64)
  variance = segmentation.pixel_variance(binary)
  for i, j in itertools.product(range(4), range(6)):
    counts = collections.Counter(samples[:, i, j].tolist())
    expected = -sum(n / 5 * math.log(n / 5) for n in counts.values())
    assert entropy[i, j] == pytest.approx(expected)
    values = binary[:, i, j]
    assert variance[i, j] == pytest.approx(sum((v - values.mean()) ** 2 for v in values) / 5)


def _distance(a, b, classes):
  ious = []
  for c in classes:
    pa = {tuple(p) for p in np.argwhere(a == c)}
    pb = {tuple(p) for p in np.argwhere(b == c)}
    if pa | pb:
      ious.append(len(pa & pb) / len(pa | pb))
  return 1 - np.mean(ious) if ious else 0.0


@pytest.mark.parametrize("num_annotations", [1, 3])
def test_generalized_energy_distance_brute_force(num_annotations):
  rng = np.random.default_rng(7 + num_annotations)
  samples = (rng.random((4, 6, 6)) < 0.4).astype(np.int64)
  samples[0] = 0  # an empty sample: distance 0 to an empty mask, 1 to any other
  annotations = (rng.random((num_annotations, 6, 6)) < 0.4).astype(np.int64)
  classes = [1]
  mean = lambda xs, ys: np.mean([_distance(x, y, classes) for x in xs for y in ys])
  expected = (2 * mean(samples, annotations) - mean(samples, samples)
              - mean(annotations, annotations))
  got = segmentation.generalized_energy_distance(samples, annotations, num_classes=2)
  assert got == pytest.approx(expected)
  if num_annotations == 1:
    assert segmentation.generalized_energy_distance(samples, annotations[0]) == got


def test_generalized_energy_distance_of_identical_sets_is_zero():
  masks = np.random.default_rng(9).integers(0, 3, (3, 5, 5))
  assert segmentation.generalized_energy_distance(masks, masks, 3) == pytest.approx(0)


def test_uncertainty_error_auroc_brute_force():
  rng = np.random.default_rng(10)
  uncertainty = np.round(rng.random((6, 7)), 1)  # rounded: ties occur
  error = rng.random((6, 7)) < uncertainty  # errors where uncertain, mostly
  valid = rng.random((6, 7)) < 0.9
  u, e = uncertainty[valid], error[valid]
  pairs = [(a, b) for a in u[e] for b in u[~e]]
  expected = np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs])
  got = segmentation.uncertainty_error_auroc(uncertainty, error, valid)
  assert got == pytest.approx(expected)
  assert 0.5 < expected < 1


def test_uncertainty_error_auroc_needs_both_kinds_of_pixel():
  with pytest.raises(ValueError, match="0 erroneous"):
    segmentation.uncertainty_error_auroc(np.ones((2, 2)), np.zeros((2, 2), bool))
