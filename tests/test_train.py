"""The training machinery on a tiny model: step, EMA, non-finite guard, checkpoints, resume,
data parallelism on 8 host devices and over 2 processes, and the sample mode."""

import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

import tiny_config
from diffseg_jax import data
from diffseg_jax.generate import sample_and_save
from diffseg_jax.methods.generation import GenerationModel
from diffseg_jax.train import sharding
from diffseg_jax.train.loop import train_and_evaluate
from diffseg_jax.train.optimizer import make_optimizer
from diffseg_jax.train.state import TrainState
from diffseg_jax.train.state import initial_state
from diffseg_jax.train.state import restore_state
from diffseg_jax.train.step import make_train_step

TESTS = pathlib.Path(__file__).parent
REPO = TESTS.parent


@pytest.fixture(scope="module")
def setup():
  config = tiny_config.get_config()
  mesh = sharding.make_mesh()
  model = GenerationModel(config)
  tx = make_optimizer(config.optim, config.train.num_steps)
  step = make_train_step(model.loss, tx, config.optim.ema_rates, mesh)
  source = data.load_source(config.data)
  batch = next(data.train_batches(source, global_batch_size=8, seed=0))
  return config, mesh, model, tx, step, sharding.put_batch(batch, mesh)


def test_training_lowers_the_loss_on_a_fixed_batch(setup):
  config, mesh, model, _, step, batch = setup
  state = initial_state(config, model, mesh)
  eval_key = jax.random.key(42)  # the same timesteps and noise before and after
  loss = jax.jit(lambda p: model.loss(p, batch, eval_key)[0])
  before = float(loss(state.params))
  for _ in range(40):
    state, metrics = step(state, batch, jax.random.key(1))
  after = float(loss(state.params))
  assert bool(metrics["finite"]) and int(state.step) == 40
  assert after < 0.5 * before, (before, after)


def test_ema_follows_its_formula(setup):
  config, mesh, model, _, step, batch = setup
  state = initial_state(config, model, mesh)
  old = jax.device_get(state.params)  # the step donates its input state
  new_state, _ = step(state, batch, jax.random.key(0))
  new = jax.device_get(new_state.params)
  for rate, ema in zip(config.optim.ema_rates, new_state.ema_params):
    expected = jax.tree.map(lambda o, n: rate * o + (1 - rate) * n, old, new)
    jax.tree.map(lambda e, x: np.testing.assert_allclose(x, e, rtol=1e-6, atol=1e-7),
                 expected, jax.device_get(ema))


def test_non_finite_loss_leaves_the_state_unchanged(setup):
  config, mesh, model, tx, _, batch = setup

  def poisoned_loss(params, batch, key):
    loss, metrics = model.loss(params, batch, key)
    return loss * jnp.nan, metrics

  step = make_train_step(poisoned_loss, tx, config.optim.ema_rates, mesh)
  state = initial_state(config, model, mesh)
  before = jax.device_get(state)
  after, metrics = step(state, batch, jax.random.key(0))
  assert not bool(metrics["finite"])
  jax.tree.map(np.testing.assert_array_equal, before, jax.device_get(after))


def test_nan_stops_training_with_the_step_and_keeps_good_checkpoints(tmp_path):
  config = tiny_config.get_config()
  config.optim.learning_rate = 1e8
  config.optim.grad_clip_norm = 0.0
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  with pytest.raises(FloatingPointError, match=r"at step \d+"):
    train_and_evaluate(config, str(tmp_path))
  model = GenerationModel(config)
  state = restore_state(config, model, str(tmp_path), sharding.make_mesh())
  assert 1 <= int(state.step) < config.train.num_steps
  for leaf in jax.tree.leaves(jax.device_get(state)):
    assert np.isfinite(leaf).all()


def test_checkpoint_of_another_model_is_refused_with_the_differences(tmp_path):
  config = tiny_config.get_config()
  config.train.num_steps = 1
  train_and_evaluate(config, str(tmp_path))
  other = tiny_config.get_config()
  other.model.num_res_blocks = 2
  with pytest.raises(ValueError, match="different model") as e:
    train_and_evaluate(other, str(tmp_path))
  assert "missing in checkpoint: params/input_blocks" in str(e.value) or "missing" in str(e.value)


def test_sample_mode_writes_adm_npz_and_png(tmp_path):
  config = tiny_config.get_config()
  config.train.num_steps = 2
  train_and_evaluate(config, str(tmp_path))
  config.sample.num_images = 5
  path = sample_and_save(config, str(tmp_path))
  with np.load(path) as npz:
    assert npz.files == ["arr_0"]
    assert npz["arr_0"].shape == (5, 8, 8, 1) and npz["arr_0"].dtype == np.uint8
  assert path.name == "samples_5x8x8x1.npz" and path.with_suffix(".png").exists()
  assert (tmp_path / "samples" / "step_0000002.png").exists()


def _run_train(workdir, *overrides, wait=True):
  command = [sys.executable, "-m", "diffseg_jax.main", f"--config={TESTS / 'tiny_config.py'}",
             f"--workdir={workdir}", *overrides]
  if not wait:
    return subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  return result


def _final_params(workdir, config):
  state = restore_state(config, GenerationModel(config), str(workdir), sharding.make_mesh())
  return int(state.step), jax.device_get(state)


@pytest.mark.slow
def test_resume_after_kill_is_bit_identical_to_an_uninterrupted_run(tmp_path):
  steps = ["--config.train.num_steps=60", "--config.train.checkpoint_every=10",
           "--config.train.sample_every=0"]
  _run_train(tmp_path / "straight", *steps)

  killed = tmp_path / "killed"
  process = _run_train(killed, *steps, wait=False)
  deadline = time.time() + 600
  while not (killed / "checkpoints" / "20").exists():
    assert process.poll() is None and time.time() < deadline, "no checkpoint 20 appeared"
    time.sleep(0.02)
  process.send_signal(signal.SIGKILL)
  process.wait()
  saved = sorted(int(p.name) for p in (killed / "checkpoints").iterdir() if p.name.isdigit())
  assert saved and max(saved) < 60, f"the run finished before it was killed: {saved}"

  _run_train(killed, *steps)
  config = tiny_config.get_config()
  step_a, state_a = _final_params(tmp_path / "straight", config)
  step_b, state_b = _final_params(killed, config)
  assert step_a == step_b == 60
  jax.tree.map(np.testing.assert_array_equal, state_a, state_b)


def _load(path):
  with np.load(path) as npz:
    return {k: npz[k] for k in npz.files}


def _worker(out, *args, env=None):
  return subprocess.Popen([sys.executable, str(TESTS / "train_worker.py"), f"--out={out}", *args],
                          cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def _finish(process):
  stdout, stderr = process.communicate(timeout=600)
  assert process.returncode == 0, stderr[-3000:]
  return stdout


def _assert_same_params(a, b):
  # The gradient all-reduce sums per-device partial sums, whose order differs from the
  # single-device reduction: float32 rounding differences (~1e-7 relative) only.
  assert a.keys() == b.keys()
  for k in a:
    np.testing.assert_allclose(a[k], b[k], rtol=2e-5, atol=2e-6, err_msg=k)


@pytest.mark.slow
def test_step_on_8_host_devices_equals_the_1_device_step(tmp_path):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=8")
  eight = _worker(tmp_path / "eight.npz", env=env)
  assert "8 devices in the mesh" in _finish(eight)
  one = _worker(tmp_path / "one.npz", "--devices=1", env=env)
  assert "1 devices in the mesh" in _finish(one)
  _assert_same_params(_load(tmp_path / "eight.npz"), _load(tmp_path / "one.npz"))


@pytest.mark.slow
def test_two_process_distributed_step_equals_the_single_process_step(tmp_path):
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)
  workers = [_worker(tmp_path / "dist.npz", f"--process_id={i}", "--num_processes=2",
                     f"--port={port}", env=env) for i in range(2)]
  outputs = [_finish(w) for w in workers]
  assert all("2 devices in the mesh" in o for o in outputs), outputs
  _finish(_worker(tmp_path / "single.npz", "--devices=1", env=env))
  _assert_same_params(_load(tmp_path / "dist.npz"), _load(tmp_path / "single.npz"))
