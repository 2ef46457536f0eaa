"""FID, IS and precision/recall against closed forms, brute force and constructed point sets."""

import numpy as np
import pytest
from scipy import special

from diffseg_jax.evaluation import generative
from diffseg_jax.evaluation.generative import FeatureStatistics


def _random_spd(rng, d):
  a = rng.normal(size=(d, d))
  return a @ a.T / d + 0.1 * np.eye(d)


def _sqrt_spd(a):
  w, v = np.linalg.eigh(a)
  return (v * np.sqrt(w)) @ v.T


def test_frechet_distance_of_diagonal_gaussians_closed_form():
  rng = np.random.default_rng(0)
  mu1, mu2 = rng.normal(size=6), rng.normal(size=6)
  v1, v2 = rng.uniform(0.1, 3, 6), rng.uniform(0.1, 3, 6)
  expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(v1) - np.sqrt(v2)) ** 2)
  got = generative.frechet_distance(FeatureStatistics(mu1, np.diag(v1)),
                                    FeatureStatistics(mu2, np.diag(v2)))
  np.testing.assert_allclose(got, expected, rtol=1e-10)


def test_frechet_distance_of_full_gaussians_closed_form():
  # tr sqrt(S1 S2) = tr sqrt(S1^1/2 S2 S1^1/2), the latter symmetric: eigh, not sqrtm.
  rng = np.random.default_rng(1)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  s1, s2 = _random_spd(rng, 8), _random_spd(rng, 8)
  r1 = _sqrt_spd(s1)
  expected = (np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2)
              - 2 * np.trace(_sqrt_spd(r1 @ s2 @ r1)))
  got = generative.frechet_distance(FeatureStatistics(mu1, s1), FeatureStatistics(mu2, s2))
  np.testing.assert_allclose(got, expected, rtol=1e-9)
  assert generative.frechet_distance(FeatureStatistics(mu1, s1),
                                     FeatureStatistics(mu1, s1)) == pytest.approx(0, abs=1e-9)


def test_frechet_distance_refuses_a_large_imaginary_component():
  # sqrt(diag(1, -1)) = diag(1, i): no covariance product has that.
  bad = FeatureStatistics(np.zeros(2), np.diag([1.0, -1.0]))
  with pytest.raises(ValueError, match="imaginary component"):
    generative.frechet_distance(bad, FeatureStatistics(np.zeros(2), np.eye(2)))


def test_frechet_distance_refuses_different_dimensions():
  with pytest.raises(ValueError, match="same feature extractor"):
    generative.frechet_distance(FeatureStatistics(np.zeros(2), np.eye(2)),
                                FeatureStatistics(np.zeros(3), np.eye(3)))


def test_feature_statistics_brute_force():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(40, 5)).astype(np.float32)
  stats = generative.feature_statistics(x)
  xs = x.astype(np.float64)
  mean = sum(xs) / len(xs)
  cov = sum(np.outer(r - mean, r - mean) for r in xs) / (len(xs) - 1)
  np.testing.assert_allclose(stats.mu, mean, rtol=1e-12)
  np.testing.assert_allclose(stats.sigma, cov, rtol=1e-10)


def test_feature_statistics_needs_more_vectors_than_dimensions():
  with pytest.raises(ValueError, match="at least 9 feature vectors"):
    generative.feature_statistics(np.zeros((8, 8)))


def test_inception_score_uniform_is_one_and_confident_even_is_num_classes():
  assert generative.inception_score(np.zeros((50, 10))) == pytest.approx(1.0, abs=1e-12)
  labels = np.arange(60) % 6
  confident = 100.0 * np.eye(6)[labels]
  assert generative.inception_score(confident) == pytest.approx(6.0, rel=1e-12)


def test_inception_score_brute_force_with_splits():
  rng = np.random.default_rng(3)
  logits = rng.normal(size=(20, 5)) * 3
  scores = []
  for part in (logits[:7], logits[7:14], logits[14:]):  # split_size 7: 7, 7, 6
    p = special.softmax(part, axis=1)
    marginal = p.mean(axis=0)
    kl = [sum(pi[c] * np.log(pi[c] / marginal[c]) for c in range(5)) for pi in p]
    scores.append(np.exp(np.mean(kl)))
  got = generative.inception_score(logits, split_size=7)
  np.testing.assert_allclose(got, np.mean(scores), rtol=1e-10)


def _line(*xs):
  """Points on the first axis of a 3-d space."""
  return np.array([[x, 0.0, 0.0] for x in xs], np.float32)


@pytest.mark.parametrize("half_precision", [True, False])
def test_precision_recall_of_constructed_sets(half_precision):
  # Reference: 0..9 and 1000..1003; samples: 0, 2, 4, 6, 8, 9 (on reference points) and
  # 500..503 (far from everything). With k=3 the reference radii are 4 or 9 (squared), so only
  # the first six samples are inside: precision 6/10. The samples' radii (36, 16, 16, 9, 16, 25
  # on the left) cover 0..9 but not 1000..1003: recall 10/14. The distances overflow float16,
  # so the half-precision path falls back to float32 as ADM's does.
  reference = _line(*range(10), 1000, 1001, 1002, 1003)
  samples = _line(0, 2, 4, 6, 8, 9, 500, 501, 502, 503)
  np.testing.assert_array_equal(
      generative.manifold_radii(samples, half_precision=half_precision),
      [36, 16, 16, 9, 16, 25, 9, 4, 4, 9])
  precision, recall = generative.precision_recall(reference, samples,
                                                  half_precision=half_precision)
  assert precision == pytest.approx(0.6)
  assert recall == pytest.approx(10 / 14)


def _half(x):
  return np.asarray(x, np.float64).astype(np.float16).astype(np.float64)


def _brute_distances(u, v, half_precision):
  """Squared distances one pair at a time; with half_precision, ADM's float16 roundings."""
  if not half_precision:
    return np.array([[np.sum((a.astype(np.float64) - b) ** 2) for b in v] for a in u])
  u, v = _half(u), _half(v)
  norm = lambda x: _half(np.sum(_half(x ** 2)))
  return np.array([[max(_half(_half(norm(a) - _half(2 * _half(a @ b))) + norm(b)), 0.0)
                    for b in v] for a in u])


def _brute_precision_recall(reference, samples, k, half_precision):
  def radii(x):
    d = _brute_distances(x, x, half_precision)
    return np.array([sorted(row)[k] for row in d])
  d = _brute_distances(reference, samples, half_precision)
  ref_r, sample_r = radii(reference), radii(samples)
  precision = np.mean([any(d[i, j] <= ref_r[i] for i in range(len(reference)))
                       for j in range(len(samples))])
  recall = np.mean([any(d[i, j] <= sample_r[j] for j in range(len(samples)))
                    for i in range(len(reference))])
  return radii(reference), precision, recall


@pytest.mark.parametrize("half_precision", [True, False])
@pytest.mark.parametrize("block_size", [7, 10_000])
def test_precision_recall_brute_force(half_precision, block_size):
  rng = np.random.default_rng(4)
  reference = rng.normal(size=(31, 6)).astype(np.float32)
  samples = (rng.normal(size=(23, 6)) * 1.3 + 0.4).astype(np.float32)
  radii, precision, recall = _brute_precision_recall(reference, samples, 3, half_precision)
  np.testing.assert_allclose(
      generative.manifold_radii(reference, 3, block_size, half_precision), radii, rtol=1e-6)
  got = generative.precision_recall(reference, samples, 3, block_size, half_precision)
  assert 0 < precision < 1 and 0 < recall < 1  # the sets are neither identical nor disjoint
  assert got == (pytest.approx(precision), pytest.approx(recall))


def test_manifold_needs_k_plus_one_vectors():
  with pytest.raises(ValueError, match="at least 4 feature vectors"):
    generative.manifold_radii(np.zeros((3, 2), np.float32), k=3)
