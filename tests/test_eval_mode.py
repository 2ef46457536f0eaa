"""The evaluate mode on Fashion-MNIST with the packaged feature net: metrics, JSON, TensorBoard."""

import json
import os

import numpy as np
import pytest

import tiny_config
from diffseg_jax import config as config_lib
from diffseg_jax import data
from diffseg_jax.evaluation import generative
from diffseg_jax.evaluation.evaluate import GenerativeEvaluator
from diffseg_jax.evaluation.evaluate import evaluate_and_save
from diffseg_jax.evaluation.features import fashion_mnist_extractor
from diffseg_jax.evaluation.reference_batches import ReferenceBatch
from diffseg_jax.evaluation.reference_batches import write_reference_batch
from diffseg_jax.train.loop import train_and_evaluate

FASHION_MNIST_DIR = config_lib.base_config().data.manual_dir
pytestmark = pytest.mark.skipif(
    not os.path.exists(os.path.join(FASHION_MNIST_DIR, "t10k-labels-idx1-ubyte.gz")),
    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
NUM = 400  # more than the net's 343 spatial dimensions


def _config(**evaluate):
  config = config_lib.base_config()
  config.evaluate.num_reference = NUM
  config.evaluate.batch_size = 200
  for key, value in evaluate.items():
    setattr(config.evaluate, key, value)
  return config


@pytest.fixture(scope="module")
def train_images():
  config = config_lib.base_config()
  return data.read_split(config.data, "train", NUM)["image"]


def test_evaluate_samples_npz_against_the_test_split(train_images, tmp_path):
  np.savez(tmp_path / "samples.npz", arr_0=train_images)
  report = evaluate_and_save(_config(samples_npz=str(tmp_path / "samples.npz")), str(tmp_path))
  assert report["feature_extractor"] == "fashion_mnist_cnn_v1"
  assert report["num_samples"] == NUM and report["num_reference"] == NUM
  assert report["reference"] == "fashion_mnist_idx:test"
  written = json.loads((tmp_path / "eval" / "samples_fashion_mnist_cnn_v1.json").read_text())
  assert written == json.loads(json.dumps(report))
  assert list(tmp_path.glob("events.out.tfevents.*"))

  # The same numbers from the pure functions.
  extractor = fashion_mnist_extractor()
  ref = extractor(data.read_split(config_lib.base_config().data, "test", NUM)["image"])
  got = extractor(train_images)
  stats = generative.feature_statistics
  metrics = report["metrics"]
  assert metrics["fid"] == pytest.approx(
      generative.frechet_distance(stats(got.pool), stats(ref.pool)), rel=1e-6)
  assert metrics["sfid"] == pytest.approx(
      generative.frechet_distance(stats(got.spatial), stats(ref.spatial)), rel=1e-6)
  assert metrics["is"] == pytest.approx(generative.inception_score(got.logits), rel=1e-6)
  assert (metrics["precision"], metrics["recall"]) == pytest.approx(
      generative.precision_recall(ref.pool, got.pool))
  # Real images against real images: close, but not identical sets; far closer than noise.
  noise = extractor(np.random.default_rng(0).integers(0, 256, train_images.shape, np.uint8))
  noise_fid = generative.frechet_distance(stats(noise.pool), stats(ref.pool))
  assert 0 < metrics["fid"] < noise_fid / 50
  assert metrics["precision"] > 0.5 and metrics["recall"] > 0.5


def test_reference_statistics_are_used_and_checked(train_images, tmp_path):
  extractor = fashion_mnist_extractor()
  ref_images = data.read_split(config_lib.base_config().data, "test", NUM)["image"]
  ref = extractor(ref_images)
  stats = {"pool": generative.feature_statistics(ref.pool),
           "spatial": generative.feature_statistics(ref.spatial)}
  with_images = GenerativeEvaluator(extractor, ReferenceBatch(ref_images, {}))
  stats_only = GenerativeEvaluator(extractor, ReferenceBatch(None, stats, extractor.name))
  a, b = with_images.run(train_images), stats_only.run(train_images)
  assert set(b) == {"fid", "sfid", "is"}  # precision/recall need reference images
  for key in b:
    assert a[key] == pytest.approx(b[key], rel=1e-9)

  write_reference_batch(tmp_path / "inception_stats.npz",
                        ReferenceBatch(None, stats, "inception_fid"))
  np.savez(tmp_path / "samples.npz", arr_0=train_images)
  config = _config(samples_npz=str(tmp_path / "samples.npz"),
                   reference_npz=str(tmp_path / "inception_stats.npz"))
  with pytest.raises(ValueError, match="computed with 'inception_fid'"):
    evaluate_and_save(config, str(tmp_path))


@pytest.mark.slow
def test_evaluate_samples_from_the_latest_checkpoint(tmp_path):
  config = tiny_config.get_config()
  config.data.name = "fashion_mnist_idx"
  config.data.manual_dir = FASHION_MNIST_DIR
  config.data.image_size = 28
  config.model.attention_resolutions = ()
  config.train.num_steps = 2
  config.sample.steps = 2
  config.sample.batch_size = NUM
  config.evaluate.num_samples = NUM
  config.evaluate.num_reference = NUM
  train_and_evaluate(config, str(tmp_path))
  report = evaluate_and_save(config, str(tmp_path))
  name = "step0000002_ddim2_eta0.0_ema0"
  assert report["step"] == 2 and report["samples"] == name
  assert set(report["metrics"]) == {"fid", "sfid", "is", "precision", "recall"}
  assert (tmp_path / "samples" / name / f"samples_{NUM}x28x28x1.npz").exists()
  assert (tmp_path / "eval" / f"{name}_fashion_mnist_cnn_v1.json").exists()
  # Two training steps make noise, far from Fashion-MNIST: a large FID, and no real image near
  # the samples (recall; k-NN precision is high for noise, see evaluation/generative.py).
  assert report["metrics"]["fid"] > 10 and report["metrics"]["recall"] < 0.5
