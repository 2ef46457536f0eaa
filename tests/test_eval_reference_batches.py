"""Reference batches in the ADM evaluator's npz format."""

import numpy as np
import pytest

from diffseg_jax.evaluation.generative import FeatureStatistics
from diffseg_jax.evaluation.reference_batches import ReferenceBatch
from diffseg_jax.evaluation.reference_batches import read_reference_batch
from diffseg_jax.evaluation.reference_batches import write_reference_batch


def _stats(rng, d):
  return FeatureStatistics(rng.normal(size=d), np.eye(d) + 0.1)


def test_reference_batch_round_trip(tmp_path):
  rng = np.random.default_rng(2)
  batch = ReferenceBatch(rng.integers(0, 256, (3, 5, 5, 3), dtype=np.uint8),
                         {"pool": _stats(rng, 4), "spatial": _stats(rng, 6)}, "some_net")
  write_reference_batch(tmp_path / "ref.npz", batch)
  with np.load(tmp_path / "ref.npz") as npz:  # the ADM evaluator's names
    assert {"arr_0", "mu", "sigma", "mu_s", "sigma_s"} <= set(npz.files)
  read = read_reference_batch(tmp_path / "ref.npz")
  np.testing.assert_array_equal(read.images, batch.images)
  assert read.feature_extractor == "some_net"
  for kind in ("pool", "spatial"):
    np.testing.assert_array_equal(read.statistics[kind].mu, batch.statistics[kind].mu)
    np.testing.assert_array_equal(read.statistics[kind].sigma, batch.statistics[kind].sigma)


def test_adm_reference_without_extractor_name_is_inception(tmp_path):
  rng = np.random.default_rng(3)
  np.savez(tmp_path / "adm.npz", mu=rng.normal(size=3), sigma=np.eye(3))
  read = read_reference_batch(tmp_path / "adm.npz")
  assert read.images is None and read.feature_extractor == "inception_fid"
  assert set(read.statistics) == {"pool"}


def test_reference_without_images_or_statistics_is_refused(tmp_path):
  np.savez(tmp_path / "empty.npz", arr_1=np.zeros(3))
  with pytest.raises(ValueError, match="neither images .* nor statistics"):
    read_reference_batch(tmp_path / "empty.npz")
  np.savez(tmp_path / "half.npz", mu=np.zeros(3))
  with pytest.raises(ValueError, match="'mu' without 'sigma'"):
    read_reference_batch(tmp_path / "half.npz")
  np.savez(tmp_path / "float.npz", arr_0=np.zeros((1, 2, 2, 3), np.float32))
  with pytest.raises(ValueError, match="must be uint8"):
    read_reference_batch(tmp_path / "float.npz")
