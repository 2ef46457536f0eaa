r"""Speed and memory of training and sampling, JAX against a PyTorch peer in the same process.

  python benchmarks/run.py [--models=quickstart,adm6m] [--ddpm_steps=1000] [--no_torch]

For each model: the train step (images/s; AdamW, EMA, the eps-MSE loss), DDIM-50 and DDPM-1000
sampling (images/s), compile times and peak memory. The quickstart model, image size and batch
sizes are read from configs/quickstart.py. The 6.5M-parameter ADM-style U-Net (64 channels,
mults 1,2,2, 2 res blocks, attention at 16x16, 32x32x3 input; batch 32 for training, 16 for
sampling) also runs in PyTorch as diffusers' `UNet2DModel` with the same widths (needs the
`torch` extra). Both frameworks use every core of the machine, and both run with glibc's
huge-page tunable (the script restarts itself with it, as `diffseg_jax.main` does; set
DIFFSEG_HUGE_PAGES=0 to measure without). JAX's convolutions run oneDNN's kernels when the
`cpu` extra is installed (`diffseg_jax/nn/onednn_conv.py`; DIFFSEG_ONEDNN=0 for XLA's).
JAX runs first: PyTorch's state slows JAX's train step by ~7% when it runs after it, while
JAX's leaves PyTorch's unchanged (benchmarks/README.md).

Peak memory is the growth of the process's resident set over the phase, sampled every 5 ms.
The last line printed is one JSON object with every figure.
"""

import argparse
import importlib.util
import json
import os
import pathlib
import threading
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffseg_jax import diffusion
from diffseg_jax import platform
from diffseg_jax.methods import generation
from diffseg_jax import nn
from diffseg_jax.nn import onednn_conv
from diffseg_jax.train import sharding
from diffseg_jax.train.state import TrainState
from diffseg_jax.train.step import make_train_step

# The 6.5M ADM-style U-Net: (U-Net fields, image shape, train batch, sample batch).
ADM6M = (dict(model_channels=64, channel_mult=(1, 2, 2), num_res_blocks=2,
              attention_resolutions=(2,), num_head_channels=32), (32, 32, 3), 32, 16)


def _quickstart():
  """The U-Net, image shape and batch sizes of configs/quickstart.py."""
  path = pathlib.Path(__file__).parents[1] / "configs" / "quickstart.py"
  spec = importlib.util.spec_from_file_location("quickstart", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  shape = (config.data.image_size, config.data.image_size, config.data.channels)
  return generation.make_unet(config), shape, config.train.batch_size, config.sample.batch_size


def _adm6m():
  fields, shape, train_batch, sample_batch = ADM6M
  unet = nn.UNetModel(image_size=shape[0], in_channels=shape[-1], out_channels=shape[-1],
                      **fields)
  return unet, shape, train_batch, sample_batch


MODELS = {"quickstart": _quickstart, "adm6m": _adm6m}


class PeakRss:
  """Samples the resident set size in a thread; ``peak_mb`` is the growth over the start."""

  def __enter__(self):
    self._start = self._rss()
    self._peak = self._start
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    self.peak_mb = (self._peak - self._start) / 2**20

  @staticmethod
  def _rss() -> int:
    with open("/proc/self/statm") as f:
      return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

  def _watch(self):
    while not self._done.wait(0.005):
      self._peak = max(self._peak, self._rss())


def _time(fn, repeats: int, rounds: int = 3) -> float:
  """Seconds per call of ``fn`` (which blocks until done), best of ``rounds`` of ``repeats``."""
  best = float("inf")
  for _ in range(rounds):
    start = time.perf_counter()
    for _ in range(repeats):
      fn()
    best = min(best, (time.perf_counter() - start) / repeats)
  return best


def bench_jax(name: str, ddpm_steps: int) -> dict:
  unet, shape, train_batch, sample_batch = MODELS[name]()
  gd = diffusion.GaussianDiffusion.create(diffusion.get_beta_schedule("linear", 1000))
  model_fn = lambda p, x, t: unet.apply({"params": p}, x, t)
  mesh = sharding.make_mesh()
  params = unet.init(jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32))
  params = params["params"]
  n_params = sum(x.size for x in jax.tree.leaves(params))
  tx = optax.adamw(1e-4)

  def loss_fn(p, batch, key):
    t_key, n_key = jax.random.split(key)
    x0 = batch["image"]
    t = jax.random.randint(t_key, (x0.shape[0],), 0, gd.num_timesteps)
    noise = jax.random.normal(n_key, x0.shape)
    losses = gd.training_losses(model_fn, p, x0, t, noise)
    return losses["loss"].mean(), {}

  step = make_train_step(loss_fn, tx, (0.9999,), mesh)
  state = TrainState.create(jax.tree.map(jnp.copy, params), tx, 1)  # donated by the step
  batch = sharding.put_batch(
      {"image": np.random.default_rng(0).uniform(-1, 1, (train_batch, *shape)).astype(
          np.float32)}, mesh)
  key = jax.random.key(1)
  start = time.perf_counter()
  compiled = step.lower(state, batch, key).compile()
  compile_train = time.perf_counter() - start
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch, key)
    metrics["loss"].block_until_ready()

  with PeakRss() as train_mem:
    one_step()
    train_s = _time(one_step, 5)
  out = {"params": int(n_params), "train_img_per_s": train_batch / train_s,
         "train_compile_s": compile_train, "train_peak_mb": train_mem.peak_mb}

  noise = jax.random.normal(jax.random.key(2), (sample_batch, *shape))
  for sampler, steps in (("ddim", 50), ("ddpm", ddpm_steps)):
    respaced = diffusion.GaussianDiffusion.create(
        diffusion.get_beta_schedule("linear", 1000),
        use_timesteps=diffusion.space_timesteps(1000, f"ddim{steps}" if sampler == "ddim"
                                                else str(steps)))
    run = diffusion.ddim_sample if sampler == "ddim" else diffusion.ddpm_sample
    fn = jax.jit(lambda p, k, x, run=run, gd=respaced: run(gd, model_fn, p, k, x.shape,
                                                           noise=x))
    start = time.perf_counter()
    compiled_sample = fn.lower(params, key, noise).compile()
    compile_s = time.perf_counter() - start
    with PeakRss() as mem:  # DDPM-1000 runs once: minutes per run
      seconds = _time(lambda: compiled_sample(params, key, noise).block_until_ready(), 1,
                      rounds=3 if sampler == "ddim" else 1)
    label = f"{sampler}{steps}"
    out[f"{label}_img_per_s"] = sample_batch / seconds
    out[f"{label}_compile_s"] = compile_s
    out[f"{label}_peak_mb"] = mem.peak_mb
  return out


def bench_torch(ddpm_steps: int) -> dict:
  import torch
  from diffusers import DDIMScheduler, DDPMScheduler, UNet2DModel

  fields, shape, train_batch, sample_batch = ADM6M
  torch.set_num_threads(os.cpu_count())
  levels = len(fields["channel_mult"])
  attention_levels = {int(np.log2(ds)) for ds in fields["attention_resolutions"]}
  unet = UNet2DModel(
      sample_size=shape[0], in_channels=shape[-1], out_channels=shape[-1],
      layers_per_block=fields["num_res_blocks"],
      block_out_channels=tuple(fields["model_channels"] * m for m in fields["channel_mult"]),
      down_block_types=tuple("AttnDownBlock2D" if i in attention_levels else "DownBlock2D"
                             for i in range(levels)),
      up_block_types=tuple("AttnUpBlock2D" if i in attention_levels else "UpBlock2D"
                           for i in reversed(range(levels))),
      attention_head_dim=fields.get("num_head_channels", 32), norm_num_groups=32,
      resnet_time_scale_shift="scale_shift")
  n_params = sum(p.numel() for p in unet.parameters())
  opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
  ema = [p.detach().clone() for p in unet.parameters()]
  x0 = torch.rand(train_batch, shape[-1], *shape[:2]) * 2 - 1
  scheduler = DDPMScheduler(num_train_timesteps=1000)

  def one_step():
    t = torch.randint(0, 1000, (train_batch,))
    noise = torch.randn_like(x0)
    loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(unet.parameters()), 1e-4)

  with PeakRss() as train_mem:
    one_step()
    train_s = _time(one_step, 5)
  out = {"params": int(n_params), "train_img_per_s": train_batch / train_s,
         "train_peak_mb": train_mem.peak_mb}

  unet.eval()
  noise = torch.randn(sample_batch, shape[-1], *shape[:2])
  for label, sched, steps in (("ddim50", DDIMScheduler(num_train_timesteps=1000), 50),
                              (f"ddpm{ddpm_steps}", DDPMScheduler(num_train_timesteps=1000),
                               ddpm_steps)):
    def sample():
      sched.set_timesteps(steps)
      x = noise
      with torch.inference_mode():
        for t in sched.timesteps:
          x = sched.step(unet(x, t).sample, t, x).prev_sample
      return x

    with PeakRss() as mem:
      seconds = _time(sample, 1, rounds=3 if label == "ddim50" else 1)
    out[f"{label}_img_per_s"] = sample_batch / seconds
    out[f"{label}_peak_mb"] = mem.peak_mb
  return out


def main():
  platform.configure_xla_cpu()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="quickstart,adm6m")
  parser.add_argument("--ddpm_steps", type=int, default=1000)
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args()
  results = {"jax_version": jax.__version__, "devices": str(jax.devices()),
             "cpu_count": os.cpu_count(), "huge_pages": platform.huge_pages_enabled(),
             "onednn_conv": onednn_conv.available()}
  for name in args.models.split(","):
    results[name] = {"jax": bench_jax(name, args.ddpm_steps)}
    if name == "adm6m" and not args.no_torch:
      results[name]["torch"] = bench_torch(args.ddpm_steps)
  print(f"{'model':<11}{'framework':<10}{'params':>9}{'train img/s':>13}{'ddim50 img/s':>14}"
        f"{'ddpm img/s':>12}{'train MB':>10}")
  for name in args.models.split(","):
    for framework, r in results[name].items():
      ddpm = r.get(f"ddpm{args.ddpm_steps}_img_per_s", float("nan"))
      print(f"{name:<11}{framework:<10}{r['params']:>9}{r['train_img_per_s']:>13.2f}"
            f"{r['ddim50_img_per_s']:>14.2f}{ddpm:>12.3f}{r['train_peak_mb']:>10.0f}")
  if "adm6m" in results and "torch" in results["adm6m"]:
    j, t = results["adm6m"]["jax"], results["adm6m"]["torch"]
    results.update(
        train_img_per_s=j["train_img_per_s"], torch_train_img_per_s=t["train_img_per_s"],
        ddim50_img_per_s=j["ddim50_img_per_s"], torch_ddim50_img_per_s=t["ddim50_img_per_s"],
        train_ratio=j["train_img_per_s"] / t["train_img_per_s"],
        ddim50_ratio=j["ddim50_img_per_s"] / t["ddim50_img_per_s"])
    print(f"JAX/PyTorch: train {results['train_ratio']:.2f}x, "
          f"DDIM-50 {results['ddim50_ratio']:.2f}x")
  print(json.dumps(results))


if __name__ == "__main__":
  platform.reexec_with_huge_pages()  # JAX and PyTorch both run with it
  main()
