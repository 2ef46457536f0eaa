"""FID, sFID, Inception Score and improved precision/recall as pure functions of features.

Each follows guided-diffusion's ``evaluations/evaluator.py`` (the ADM suite):

* :func:`frechet_distance`: ``|mu1 - mu2|^2 + tr(S1 + S2 - 2 sqrtm(S1 S2))`` with
  ``scipy.linalg.sqrtm``; where the square root is not finite, ``eps`` is added to both
  diagonals and it is taken again; an imaginary part of the result's diagonal above 1e-3 is an
  error, a smaller one is dropped. FID and sFID are this distance between the statistics of the
  pool and of the spatial features.
* :func:`inception_score`: ``exp(E_x KL(p(y|x) || p(y)))`` on consecutive splits of
  ``split_size`` (5000) predictions, averaged over the splits. ADM has no standard deviation.
* :func:`precision_recall`: Kynkaanniemi et al.'s improved precision and recall with k=3: each
  feature vector's radius is the *squared* distance to its k-th nearest neighbour in its own set
  (itself excluded); precision is the fraction of samples within the radius of some reference
  vector, recall the fraction of reference vectors within the radius of some sample.

Where this differs from ADM: statistics and the Inception Score are computed in float64 (ADM
takes the mean and the softmax in float32; the values agree to ~1e-6 relative). Pairwise
distances are computed as ADM's ``DistanceBlock`` does by default (``half_precision=True``):
features rounded to float16, ``max(|u|^2 - 2 u.v + |v|^2, 0)`` accumulated in float32 and each
term rounded to float16 -- ADM's TF graph on a GPU -- falling back to float32 for a block where
float16 overflows. Rounding inside TF's GPU kernels is not specified, so a pair of points whose
distance is within a float16 rounding step of a radius may be decided differently.
``half_precision=False`` computes in float32 throughout.
"""

import dataclasses
import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np
from scipy import linalg

NEAREST_K = 3  # ADM's manifold neighbourhood size
BLOCK_SIZE = 10_000  # ADM's row and column batch size for pairwise distances
IS_SPLIT_SIZE = 5000


@dataclasses.dataclass(frozen=True)
class FeatureStatistics:
  """Mean float64 [D] and covariance float64 [D, D] of a set of feature vectors."""
  mu: np.ndarray
  sigma: np.ndarray


def _check_features(features: np.ndarray, what: str) -> np.ndarray:
  features = np.asarray(features)
  if features.ndim != 2:
    raise ValueError(f"{what}: expected features [N, D], got shape {features.shape}.")
  if not np.all(np.isfinite(features)):
    raise ValueError(f"{what}: the features contain NaN or infinite values.")
  return features


def feature_statistics(features: np.ndarray, what: str = "FID") -> FeatureStatistics:
  """Mean and covariance (``np.cov``, N - 1 normalised) of float [N, D] features.

  Raises:
    ValueError: fewer than D + 1 vectors: their covariance would be singular (its rank is at
      most N - 1), and the Fréchet distance of such statistics is not meaningful.
  """
  features = _check_features(features, what).astype(np.float64)
  n, d = features.shape
  if n <= d:
    raise ValueError(
        f"{what} needs at least {d + 1} feature vectors for a full-rank {d}x{d} covariance, "
        f"got {n}. Evaluate at least {d + 1} images (ADM uses 50,000 samples against 10,000 or "
        "more reference images), or use a feature extractor with fewer dimensions.")
  return FeatureStatistics(features.mean(axis=0), np.cov(features, rowvar=False))


def frechet_distance(a: FeatureStatistics, b: FeatureStatistics, eps: float = 1e-6) -> float:
  """The Fréchet distance between two Gaussians, as ADM's ``FIDStatistics.frechet_distance``.

  Raises:
    ValueError: statistics of different dimensions, or an imaginary component above 1e-3 on
      the diagonal of the matrix square root.
  """
  mu1, mu2 = np.atleast_1d(a.mu), np.atleast_1d(b.mu)
  sigma1, sigma2 = np.atleast_2d(a.sigma), np.atleast_2d(b.sigma)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(
        f"Statistics of different feature dimensions: mean {mu1.shape} vs {mu2.shape}, "
        f"covariance {sigma1.shape} vs {sigma2.shape}. Were they made by the same feature "
        "extractor?")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1 @ sigma2)
  if not np.isfinite(covmean).all():
    warnings.warn(f"Fréchet distance: singular product of covariances; adding {eps} to their "
                  "diagonals.")
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Fréchet distance: imaginary component {np.max(np.abs(covmean.imag))} "
                       "in the square root of the covariance product.")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def inception_score(logits: np.ndarray, split_size: int = IS_SPLIT_SIZE) -> float:
  """The Inception Score of float [N, C] class logits, averaged over splits of ``split_size``.

  ``exp(mean_x sum_y p(y|x) (log p(y|x) - log p(y)))`` per split, ``p(y)`` the split's mean
  prediction; the last split holds the remainder. Uniform predictions score 1; confident
  predictions spread evenly over C classes score C.
  """
  logits = _check_features(logits, "Inception Score").astype(np.float64)
  if split_size < 1:
    raise ValueError(f"split_size={split_size} must be positive.")
  log_p = logits - logits.max(axis=1, keepdims=True)
  log_p -= np.log(np.exp(log_p).sum(axis=1, keepdims=True))
  scores = []
  for start in range(0, len(log_p), split_size):
    part = log_p[start:start + split_size]
    p = np.exp(part)
    log_marginal = np.log(p.mean(axis=0, keepdims=True))
    scores.append(np.exp(np.mean(np.sum(p * (part - log_marginal), axis=1))))
  return float(np.mean(scores))


def _squared_distances_f32(u: jax.Array, v: jax.Array) -> jax.Array:
  norm_u = jnp.sum(jnp.square(u), axis=1)[:, None]
  norm_v = jnp.sum(jnp.square(v), axis=1)[None, :]
  uv = jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST)
  return jnp.maximum(norm_u - 2 * uv + norm_v, 0.0)


def _squared_distances_f16(u: jax.Array, v: jax.Array) -> jax.Array:
  """ADM's float16 ``_batch_pairwise_distances``: float16 operands, float32 sums, each op's
  result rounded to float16."""
  half = lambda x: x.astype(jnp.float16).astype(jnp.float32)
  u, v = half(u), half(v)
  norm_u = half(jnp.sum(half(jnp.square(u)), axis=1))[:, None]
  norm_v = half(jnp.sum(half(jnp.square(v)), axis=1))[None, :]
  uv = half(jnp.matmul(u, v.T, precision=jax.lax.Precision.HIGHEST))
  return jnp.maximum(half(half(norm_u - half(2 * uv)) + norm_v), 0.0)


@functools.partial(jax.jit, static_argnames="half_precision")
def squared_distances(u: jax.Array, v: jax.Array, half_precision: bool = True) -> jax.Array:
  """float32 [A, B] squared Euclidean distances between the rows of u [A, D] and v [B, D].

  ``half_precision``: ADM's float16 computation (module docstring), or float32 where any
  float16 value overflows.
  """
  u, v = u.astype(jnp.float32), v.astype(jnp.float32)
  if not half_precision:
    return _squared_distances_f32(u, v)
  d16 = _squared_distances_f16(u, v)
  finite = jnp.all(jnp.isfinite(d16))
  return jax.lax.cond(finite, lambda: d16, lambda: _squared_distances_f32(u, v))


@functools.partial(jax.jit, static_argnames=("count", "half_precision"))
def _smallest_distances(rows, cols, count: int, half_precision: bool):
  """The ``count`` smallest squared distances from each row to ``cols``, ascending."""
  return -jax.lax.top_k(-squared_distances(rows, cols, half_precision), count)[0]


def manifold_radii(features: np.ndarray, k: int = NEAREST_K, block_size: int = BLOCK_SIZE,
                   half_precision: bool = True) -> np.ndarray:
  """float32 [N]: each vector's squared distance to its k-th nearest neighbour in ``features``.

  As ADM, the k+1 smallest distances of a row include its distance to itself (0), and the
  radius is the last of them. Distances are computed in blocks of ``block_size`` x
  ``block_size`` keeping only each row's k+1 smallest, so memory is O(block_size^2).

  Raises:
    ValueError: fewer than k + 1 vectors.
  """
  features = _check_features(features, "precision/recall")
  n = len(features)
  if n < k + 1:
    raise ValueError(f"The k={k} nearest-neighbour manifold needs at least {k + 1} feature "
                     f"vectors per set, got {n}.")
  radii = np.empty(n, np.float32)
  for r in range(0, n, block_size):
    rows = features[r:r + block_size]
    nearest = np.full((len(rows), 0), np.inf, np.float32)
    for c in range(0, n, block_size):
      cols = features[c:c + block_size]
      block = np.asarray(_smallest_distances(rows, cols, min(k + 1, len(cols)), half_precision))
      nearest = np.sort(np.concatenate([nearest, block], axis=1), axis=1)[:, :k + 1]
    radii[r:r + block_size] = nearest[:, k]
  return radii


@functools.partial(jax.jit, static_argnames="half_precision")
def _within_radii(ref, ref_radii, samples, sample_radii, half_precision: bool):
  """For a block: which ref rows lie within some sample's radius, and which samples within
  some ref row's radius (bool [R], bool [S])."""
  d = squared_distances(ref, samples, half_precision)
  return jnp.any(d <= sample_radii[None, :], axis=1), jnp.any(d <= ref_radii[:, None], axis=0)


def precision_recall(reference: np.ndarray, samples: np.ndarray, k: int = NEAREST_K,
                     block_size: int = BLOCK_SIZE,
                     half_precision: bool = True) -> tuple[float, float]:
  """Improved precision and recall of ``samples`` [N, D] against ``reference`` [M, D].

  Returns:
    ``(precision, recall)``: the fraction of samples inside the reference manifold, and of
    reference vectors inside the sample manifold (a point is inside when its squared distance
    to some vector is at most that vector's radius, :func:`manifold_radii`). Precision can be
    high for samples far from the data (uniform noise against Fashion-MNIST: 0.99 with the
    Fashion-MNIST net), because outlying reference vectors have large radii; its recall
    is near 0 and its FID large.
  """
  reference = _check_features(reference, "precision/recall (reference)")
  samples = _check_features(samples, "precision/recall (samples)")
  if reference.shape[1] != samples.shape[1]:
    raise ValueError(f"Reference features have {reference.shape[1]} dimensions, samples "
                     f"{samples.shape[1]}: were they made by the same feature extractor?")
  ref_radii = manifold_radii(reference, k, block_size, half_precision)
  sample_radii = manifold_radii(samples, k, block_size, half_precision)
  ref_in = np.zeros(len(reference), bool)
  sample_in = np.zeros(len(samples), bool)
  for r in range(0, len(reference), block_size):
    for s in range(0, len(samples), block_size):
      rows, cols = slice(r, r + block_size), slice(s, s + block_size)
      block_ref_in, block_sample_in = _within_radii(reference[rows], ref_radii[rows],
                                                    samples[cols], sample_radii[cols],
                                                    half_precision)
      ref_in[rows] |= np.asarray(block_ref_in)
      sample_in[cols] |= np.asarray(block_sample_in)
  return float(sample_in.mean()), float(ref_in.mean())
