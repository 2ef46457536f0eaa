"""The training machinery on a tiny model: step, EMA, non-finite guard, checkpoints, resume,
data parallelism on 8 host devices and over 2 processes, and the sample mode."""

import json
import os
import pathlib
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import tiny_config
from diffseg_jax import data
from diffseg_jax.generate import sample_and_save
from diffseg_jax.methods.generation import GenerationModel
from diffseg_jax.train import sharding
from diffseg_jax.train.loop import train_and_evaluate
from diffseg_jax.train.optimizer import make_optimizer
from diffseg_jax.train.state import initial_state
from diffseg_jax.train.state import restore_sampling_params
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
  source = data.load_source(config.data, config.data.split)
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


def _checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


def test_nan_stops_training_with_the_step_and_keeps_good_checkpoints(tmp_path):
  config = tiny_config.get_config()
  config.optim.learning_rate = 1e8
  config.optim.grad_clip_norm = 0.0
  config.train.checkpoint_every = 1
  config.train.log_every = 1
  with pytest.raises(FloatingPointError, match=r"at step \d+") as e:
    train_and_evaluate(config, str(tmp_path))
  bad_step = int(re.search(r"at step (\d+)", str(e.value)).group(1))
  assert 2 <= bad_step <= config.train.num_steps, "the test needs a good step before the bad one"
  # Every step before the bad one was checkpointed, the bad one and none after it.
  assert _checkpoint_steps(tmp_path)[-1] == bad_step - 1
  model = GenerationModel(config)
  state = restore_state(config, model, str(tmp_path), sharding.make_mesh())
  assert int(state.step) == bad_step - 1
  for leaf in jax.tree.leaves(jax.device_get(state)):
    assert np.isfinite(leaf).all()


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
  """A workdir holding the tiny model trained for 2 steps, and its config."""
  config = tiny_config.get_config()
  config.train.num_steps = 2
  workdir = tmp_path_factory.mktemp("trained")
  train_and_evaluate(config, str(workdir))
  return config, workdir


def test_checkpoint_of_another_model_is_refused_with_the_differences(trained_run, tmp_path):
  config, trained = trained_run
  shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
  other = tiny_config.get_config()
  other.model.num_res_blocks = 2
  with pytest.raises(ValueError, match="model.num_res_blocks: 1 in config.json, 2 now"):
    train_and_evaluate(other, str(tmp_path))
  # Without config.json (a workdir of an older version) the parameter shapes still tell. With 2
  # res blocks per level, input block 4 is the first ResBlock of level 1 (32 -> 64 channels),
  # which the 1-res-block model does not have.
  (tmp_path / "config.json").unlink()
  with pytest.raises(ValueError, match="different model") as e:
    train_and_evaluate(other, str(tmp_path))
  assert ("\n  missing in checkpoint: ema_params/0/input_blocks_4_0/in_layers_2/kernel "
          "(3, 3, 32, 64)\n") in str(e.value)


def test_resume_with_same_shapes_but_another_config_is_refused(trained_run, tmp_path):
  config, trained = trained_run
  shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
  original = (tmp_path / "config.json").read_text()
  other = tiny_config.get_config()
  other.train.num_steps = 4
  other.model.num_heads = 4  # 64 channels: same parameter shapes with 2 or 4 heads
  other.diffusion.beta_schedule = "cosine"
  with pytest.raises(ValueError) as e:
    train_and_evaluate(other, str(tmp_path))
  message = str(e.value)
  assert "model.num_heads: 2 in config.json, 4 now" in message
  assert "diffusion.beta_schedule: 'linear' in config.json, 'cosine' now" in message
  assert "new --workdir" in message
  with pytest.raises(ValueError, match="model.num_heads"):
    sample_and_save(other, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == original
  # The same model may be trained further: the original config stays, the resumed run's is kept
  # beside it.
  more = tiny_config.get_config()
  more.train.num_steps = 3
  train_and_evaluate(more, str(tmp_path))
  assert (tmp_path / "config.json").read_text() == original
  resumed = json.loads((tmp_path / "config_resumed_step2.json").read_text())
  assert resumed["train"]["num_steps"] == 3


def test_sample_mode_writes_adm_npz_and_png_named_after_its_settings(trained_run, tmp_path):
  config, trained = trained_run
  shutil.copytree(trained, tmp_path, dirs_exist_ok=True)
  assert (tmp_path / "samples" / "step_0000002.png").exists()  # the loop's grid at the end
  config = tiny_config.get_config()
  config.sample.num_images = 5
  path = sample_and_save(config, str(tmp_path))
  with np.load(path) as npz:
    assert npz.files == ["arr_0"]
    assert npz["arr_0"].shape == (5, 8, 8, 1) and npz["arr_0"].dtype == np.uint8
  assert path == tmp_path / "samples" / "step0000002_ddim4_eta0.0_ema0" / "samples_5x8x8x1.npz"
  assert path.with_suffix(".png").exists()
  config.sample.sampler = "ddpm"
  config.sample.steps = 0
  config.sample.ema_index = -1
  other = sample_and_save(config, str(tmp_path))
  assert other == tmp_path / "samples" / "step0000002_ddpm100_params" / "samples_5x8x8x1.npz"
  assert path.exists()  # not overwritten by the second run


def test_sample_mode_reads_only_the_chosen_parameters(trained_run):
  config, workdir = trained_run
  mesh = sharding.make_mesh()
  expected = jax.device_get(restore_state(config, GenerationModel(config), str(workdir), mesh))
  other_optimiser = tiny_config.get_config()
  other_optimiser.optim.grad_clip_norm = 0.0  # another optimiser state structure
  model = GenerationModel(other_optimiser)
  with pytest.raises(ValueError, match="different model"):
    restore_state(other_optimiser, model, str(workdir), mesh)
  for index, params in [(-1, expected.params), (1, expected.ema_params[1])]:
    other_optimiser.sample.ema_index = index
    step, restored = restore_sampling_params(other_optimiser, model, str(workdir), mesh)
    assert step == 2
    jax.tree.map(np.testing.assert_array_equal, params, jax.device_get(restored))
  assert not np.array_equal(expected.params["out_2"]["bias"],
                            expected.ema_params[1]["out_2"]["bias"])


def test_class_conditional_learned_sigma_model_trains_and_samples(tmp_path):
  config = tiny_config.get_config()
  config.model.class_cond = True
  config.data.num_classes = 3
  config.diffusion.learn_sigma = True  # hybrid loss, 2C outputs
  config.train.num_steps = 2
  state = train_and_evaluate(config, str(tmp_path))
  assert state.params["out_2"]["kernel"].shape[-1] == 2 * config.data.channels
  config.sample.num_images = 7
  config.sample.batch_size = 4
  with np.load(sample_and_save(config, str(tmp_path))) as npz:
    images, labels = npz["arr_0"], npz["arr_1"]
  np.testing.assert_array_equal(labels, [0, 1, 2, 0, 1, 2, 0])
  assert images.shape == (7, 8, 8, 1)
  assert all(np.ptp(image) > 0 for image in images)  # not constant images
  assert len({image.tobytes() for image in images}) == 7  # nor the same image


@pytest.mark.parametrize("sizes", [(4,), (8,), (8, 4)])
def test_attention_blocks_sit_at_the_configured_feature_sizes(sizes):
  config = tiny_config.get_config()
  config.model.attention_resolutions = sizes
  params = jax.eval_shape(GenerationModel(config).init, jax.random.key(0))
  with_attention = {name.rsplit("_", 1)[0] for name, module in params.items()
                    if "qkv" in module}
  # guided-diffusion's layout: input block 0 is the stem; each level has num_res_blocks blocks,
  # then (except the last level) a downsampling block; the middle block always attends; the
  # output blocks go back up the levels with num_res_blocks + 1 blocks each.
  m, size = config.model, config.data.image_size
  levels = [size // 2**level for level in range(len(m.channel_mult))]
  expected, block = {"middle_block"}, 1
  for level, feature_size in enumerate(levels):
    for _ in range(m.num_res_blocks):
      if feature_size in sizes:
        expected.add(f"input_blocks_{block}")
      block += 1
    block += level < len(levels) - 1
  block = 0
  for feature_size in reversed(levels):
    for _ in range(m.num_res_blocks + 1):
      if feature_size in sizes:
        expected.add(f"output_blocks_{block}")
      block += 1
  assert with_attention == expected


@pytest.mark.parametrize("steps", [300, 50])
def test_ddim_takes_any_step_count(steps):
  # 300 of 1000 steps has no integer stride ("ddim300" fails): section spacing is used.
  config = tiny_config.get_config()
  config.diffusion.num_timesteps = 1000
  model = GenerationModel(config)
  sample = model.sampler(sampler="ddim", steps=steps)
  params = jax.eval_shape(model.init, jax.random.key(0))
  jaxpr = jax.make_jaxpr(sample)(params, jax.random.key(0), jnp.zeros((1, 8, 8, 1)), None)
  assert [e.params["length"] for e in jaxpr.eqns if e.primitive.name == "scan"] == [steps]


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


def _assert_same_results(a, b):
  # Parameters, loss and the images sampled from those parameters. The gradient all-reduce
  # sums per-device partial sums, whose order differs from the single-device reduction:
  # float32 rounding differences (~1e-7 relative) only.
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
  eight, one = _load(tmp_path / "eight.npz"), _load(tmp_path / "one.npz")
  _assert_same_results(eight, one)


@pytest.mark.slow
def test_two_process_distributed_step_and_sampling_equal_the_single_process_ones(tmp_path):
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
  first, second = _load(tmp_path / "dist.npz"), _load(tmp_path / "dist.process1.npz")
  single = _load(tmp_path / "single.npz")
  # Both processes got all the images, the same, and as one process draws them.
  assert first["samples"].shape == (8, 8, 8, 1)
  np.testing.assert_array_equal(first["samples"], second["samples"])
  _assert_same_results(first, single)
