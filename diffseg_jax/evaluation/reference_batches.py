"""Reference batches in the ADM evaluator's ``.npz`` format.

guided-diffusion's ``evaluations/evaluator.py`` reads ``arr_0`` (uint8 [N, H, W, 3] images,
0..255) and, when present, precomputed Inception statistics ``mu``/``sigma`` (pool_3, for FID)
and ``mu_s``/``sigma_s`` (spatial, for sFID), which it then uses instead of statistics of the
images. The published reference batches (e.g. ``VIRTUAL_imagenet256_labeled.npz``) hold all of
them; the sample npz files of ``--mode=sample`` hold ``arr_0`` (and ``arr_1`` labels).

Files written here may also hold ``feature_extractor``: the name of the extractor the statistics
were computed with (ADM's tools ignore it), so that statistics of another network are refused
instead of compared. ADM's files do not name one: their statistics are Inception's.
"""

import dataclasses
import pathlib

import numpy as np

from diffseg_jax import files
from diffseg_jax.evaluation.generative import FeatureStatistics

INCEPTION = "inception_fid"  # the extractor of statistics in a file that names none
_STATISTICS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


@dataclasses.dataclass(frozen=True)
class ReferenceBatch:
  """A reference set: images, statistics, or both.

  Attributes:
    images: uint8 [N, H, W, C] or None.
    statistics: ``{"pool": FeatureStatistics, "spatial": FeatureStatistics}`` (either may be
      absent) computed by ``feature_extractor``.
    feature_extractor: the name of the extractor of ``statistics``.
  """
  images: np.ndarray | None
  statistics: dict[str, FeatureStatistics]
  feature_extractor: str = INCEPTION


def read_reference_batch(path: str | pathlib.Path) -> ReferenceBatch:
  """Reads an ADM-format ``.npz`` (``arr_0`` and/or ``mu``, ``sigma``, ``mu_s``, ``sigma_s``).

  Raises:
    FileNotFoundError: no such file.
    ValueError: neither images nor statistics; a mean without its covariance (or the
      reverse); images that are not uint8 [N, H, W, C].
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"Reference batch {path} does not exist.")
  with np.load(path, allow_pickle=False) as npz:
    arrays = {key: npz[key] for key in npz.files}
  statistics = {}
  for kind, (mu_key, sigma_key) in _STATISTICS.items():
    present = [key for key in (mu_key, sigma_key) if key in arrays]
    if len(present) == 1:
      raise ValueError(f"{path} holds {present[0]!r} without "
                       f"{({mu_key, sigma_key} - set(present)).pop()!r}: both are needed.")
    if present:
      statistics[kind] = FeatureStatistics(arrays[mu_key].astype(np.float64),
                                           arrays[sigma_key].astype(np.float64))
  images = arrays.get("arr_0")
  if images is None and not statistics:
    raise ValueError(f"{path} holds neither images ('arr_0') nor statistics ('mu'/'sigma', "
                     f"'mu_s'/'sigma_s'); it has {sorted(arrays) or 'no arrays'}.")
  if images is not None and (images.dtype != np.uint8 or images.ndim != 4):
    raise ValueError(f"{path}: 'arr_0' must be uint8 [N, H, W, C] images, got "
                     f"{images.dtype} {images.shape}.")
  extractor = str(arrays["feature_extractor"]) if "feature_extractor" in arrays else INCEPTION
  return ReferenceBatch(images, statistics, extractor)


def write_reference_batch(path: str | pathlib.Path, batch: ReferenceBatch) -> None:
  """Writes ``batch`` atomically in the format :func:`read_reference_batch` reads."""
  arrays = {} if batch.images is None else {"arr_0": np.asarray(batch.images, np.uint8)}
  for kind, stats in batch.statistics.items():
    mu_key, sigma_key = _STATISTICS[kind]
    arrays[mu_key], arrays[sigma_key] = stats.mu, stats.sigma
  if not arrays:
    raise ValueError("A reference batch needs images or statistics; this one has neither.")
  if batch.statistics:
    arrays["feature_extractor"] = np.array(batch.feature_extractor)
  files.write_npz(path, **arrays)
