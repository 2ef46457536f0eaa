r"""Speed and memory of training and sampling, JAX against a PyTorch peer in the same process.

  python benchmarks/run.py [--models=quickstart,adm6m] [--ddpm_steps=1000] [--rounds=5]
                           [--no_torch]

For each model: the train step (images/s; AdamW, EMA, the eps-MSE loss), DDIM-50 and DDPM-1000
sampling (images/s), compile times and peak memory. The quickstart model, image size and batch
sizes are read from configs/quickstart.py. The 6.5M-parameter ADM-style U-Net (64 channels,
mults 1,2,2, 2 res blocks, attention at 16x16, 32x32x3 input; batch 32 for training, 16 for
sampling) also runs in PyTorch as diffusers' `UNet2DModel` with the same widths (needs the
`torch` extra). Both frameworks use every core of the machine, and both run with glibc's malloc
tunables (huge pages, freed memory kept in the heap: the script restarts itself with them, as
`diffseg_jax.main` does; set DIFFSEG_MALLOC_TUNABLES=0 to measure without). JAX's
convolutions and attention products run oneDNN's kernels and its GroupNorms a fused kernel
when the `cpu` extra is installed (`diffseg_jax/nn/onednn.py`; DIFFSEG_ONEDNN=0 for XLA's).

The speed of a shared virtual machine drifts by 10-15% over minutes, so the frameworks take
turns: each round times the train step (2 calls; twice as many rounds) or DDIM-50 (1 call)
of JAX, then of PyTorch, after two untimed rounds (the frameworks share one heap, which grows
to hold both working sets in the first rounds). Each framework's images/s come from its
fastest round; the ratios are given both from those and as the median of the per-round
ratios, with every round's ratio to show the spread. DDPM runs one round. Peak memory is the growth of the memory
allocated by malloc and not freed during a phase's first (warm-up) call, sampled every 5 ms. The last line printed
is one JSON object with every figure.
"""

import argparse
import ctypes
import importlib.util
import json
import os
import pathlib
import threading
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from diffseg_jax import diffusion
from diffseg_jax import platform
from diffseg_jax.methods import generation
from diffseg_jax import nn
from diffseg_jax.nn import onednn
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


class _Mallinfo2(ctypes.Structure):
  _fields_ = [(name, ctypes.c_size_t) for name in (
      "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
      "fordblks", "keepcost")]


def _heap_in_use() -> Callable[[], int] | None:
  """glibc's bytes allocated and not freed (heap and mmapped blocks), or None elsewhere."""
  try:
    mallinfo2 = ctypes.CDLL(None).mallinfo2
  except AttributeError:  # not glibc >= 2.33
    return None
  mallinfo2.restype = _Mallinfo2

  def in_use() -> int:
    info = mallinfo2()
    return info.uordblks + info.hblkhd

  return in_use


def _resident_set() -> int:
  with open("/proc/self/statm") as f:
    return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class PeakMemory:
  """Samples memory in use in a thread; ``peak_mb`` is the growth over the start.

  Memory in use is what glibc's malloc has handed out and not taken back: the resident set
  would miss memory that a phase reuses from an earlier phase's freed blocks, which the
  process keeps (``platform.reexec_with_malloc_tunables``). Without glibc, the resident set.
  """

  def __enter__(self):
    self._measure = _heap_in_use() or _resident_set
    self._start = self._measure()
    self._peak = self._start
    self._done = threading.Event()
    self._thread = threading.Thread(target=self._watch, daemon=True)
    self._thread.start()
    return self

  def __exit__(self, *exc):
    self._done.set()
    self._thread.join()
    self.peak_mb = (self._peak - self._start) / 2**20

  def _watch(self):
    while not self._done.wait(0.005):
      self._peak = max(self._peak, self._measure())


def _interleaved(phases: dict[str, Callable[[], None]], repeats: int, rounds: int,
                 warm_up_rounds: int = 2) -> dict[str, list[float]]:
  """Seconds per call of each phase (a call that blocks until done), one figure per round.

  Each round runs every phase ``repeats`` times, one phase after the other, so that the drift
  of a shared machine's speed (10-15% over minutes here) falls on all of them alike. The
  first ``warm_up_rounds`` rounds are not timed.
  """
  for _ in range(warm_up_rounds):
    for fn in phases.values():
      fn()
  seconds = {name: [] for name in phases}
  for _ in range(rounds):
    for name, fn in phases.items():
      start = time.perf_counter()
      for _ in range(repeats):
        fn()
      seconds[name].append((time.perf_counter() - start) / repeats)
  return seconds


def _warm_up(fn: Callable[[], None]) -> float:
  """Runs ``fn`` once; returns the growth of the memory in use meanwhile, in MB."""
  with PeakMemory() as mem:
    fn()
  return mem.peak_mb


def jax_phases(name: str, ddpm_steps: int) -> tuple[dict, dict]:
  """The JAX model's phases (compiled, warmed up) and its figures so far."""
  unet, shape, train_batch, sample_batch = MODELS[name]()
  gd = diffusion.GaussianDiffusion.create(diffusion.get_beta_schedule("linear", 1000))
  model_fn = lambda p, x, t: unet.apply({"params": p}, x, t)
  mesh = sharding.make_mesh()
  params = unet.init(jax.random.key(0), jnp.zeros((1, *shape)), jnp.zeros((1,), jnp.int32))
  params = params["params"]
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
  figures = {"params": int(sum(x.size for x in jax.tree.leaves(params))),
             "train_batch": train_batch, "sample_batch": sample_batch,
             "train_compile_s": time.perf_counter() - start}
  holder = [state]

  def train():
    holder[0], metrics = compiled(holder[0], batch, key)
    metrics["loss"].block_until_ready()

  phases = {"train": train}
  figures["train_peak_mb"] = _warm_up(train)
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
    label = f"{sampler}{steps}"
    figures[f"{label}_compile_s"] = time.perf_counter() - start
    phases[label] = lambda c=compiled_sample: c(params, key, noise).block_until_ready()
    figures[f"{label}_peak_mb"] = _warm_up(phases[label])
  return phases, figures


def torch_phases(ddpm_steps: int) -> tuple[dict, dict]:
  """The PyTorch peer's phases (warmed up) and its figures so far."""
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
  figures = {"params": int(sum(p.numel() for p in unet.parameters())),
             "train_batch": train_batch, "sample_batch": sample_batch}
  opt = torch.optim.AdamW(unet.parameters(), lr=1e-4)
  ema = [p.detach().clone() for p in unet.parameters()]
  x0 = torch.rand(train_batch, shape[-1], *shape[:2]) * 2 - 1
  scheduler = DDPMScheduler(num_train_timesteps=1000)

  def train():
    unet.train()
    t = torch.randint(0, 1000, (train_batch,))
    noise = torch.randn_like(x0)
    loss = torch.nn.functional.mse_loss(unet(scheduler.add_noise(x0, noise, t), t).sample, noise)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    with torch.no_grad():
      torch._foreach_lerp_(ema, list(unet.parameters()), 1e-4)

  phases = {"train": train}
  figures["train_peak_mb"] = _warm_up(train)
  noise = torch.randn(sample_batch, shape[-1], *shape[:2])
  for label, sched, steps in (("ddim50", DDIMScheduler(num_train_timesteps=1000), 50),
                              (f"ddpm{ddpm_steps}", DDPMScheduler(num_train_timesteps=1000),
                               ddpm_steps)):
    def sample(sched=sched, steps=steps):
      unet.eval()
      sched.set_timesteps(steps)
      x = noise
      with torch.inference_mode():
        for t in sched.timesteps:
          x = sched.step(unet(x, t).sample, t, x).prev_sample

    phases[label] = sample
    figures[f"{label}_peak_mb"] = _warm_up(sample)
  return phases, figures


def measure(phases: dict[str, dict], figures: dict[str, dict], ddpm_steps: int,
            rounds: int) -> None:
  """Times every framework's phases, alternating frameworks within each round.

  Adds ``<phase>_img_per_s`` (from each framework's fastest round) and ``<phase>_s_rounds`` to
  ``figures[framework]``.
  """
  plan = (("train", "train_batch", 2, 2 * rounds), ("ddim50", "sample_batch", 1, rounds),
          (f"ddpm{ddpm_steps}", "sample_batch", 1, 1))  # DDPM-1000 takes minutes a call
  for phase, batch_key, repeats, phase_rounds in plan:
    seconds = _interleaved({fw: p[phase] for fw, p in phases.items()}, repeats, phase_rounds,
                           warm_up_rounds=0 if phase.startswith("ddpm") else 2)
    for fw, per_round in seconds.items():
      figures[fw][f"{phase}_img_per_s"] = figures[fw][batch_key] / min(per_round)
      figures[fw][f"{phase}_s_rounds"] = per_round


def main():
  platform.configure_xla_cpu()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--models", default="quickstart,adm6m")
  parser.add_argument("--ddpm_steps", type=int, default=1000)
  parser.add_argument("--rounds", type=int, default=5,
                      help="rounds of the train step and DDIM-50, frameworks alternating")
  parser.add_argument("--no_torch", action="store_true")
  args = parser.parse_args()
  results = {"jax_version": jax.__version__, "devices": str(jax.devices()),
             "cpu_count": os.cpu_count(), "huge_pages": platform.huge_pages_enabled(),
             "freed_memory_kept": platform.freed_memory_kept(),
             "onednn": onednn.available()}
  for name in args.models.split(","):
    phases, figures = {}, {}
    phases["jax"], figures["jax"] = jax_phases(name, args.ddpm_steps)
    if name == "adm6m" and not args.no_torch:
      phases["torch"], figures["torch"] = torch_phases(args.ddpm_steps)
    measure(phases, figures, args.ddpm_steps, args.rounds)
    results[name] = figures
  print(f"{'model':<11}{'framework':<10}{'params':>9}{'train img/s':>13}{'ddim50 img/s':>14}"
        f"{'ddpm img/s':>12}{'train MB':>10}")
  for name in args.models.split(","):
    for framework, r in results[name].items():
      print(f"{name:<11}{framework:<10}{r['params']:>9}{r['train_img_per_s']:>13.2f}"
            f"{r['ddim50_img_per_s']:>14.2f}{r[f'ddpm{args.ddpm_steps}_img_per_s']:>12.3f}"
            f"{r['train_peak_mb']:>10.0f}")
  if "adm6m" in results and "torch" in results["adm6m"]:
    j, t = results["adm6m"]["jax"], results["adm6m"]["torch"]
    results.update(
        train_img_per_s=j["train_img_per_s"], torch_train_img_per_s=t["train_img_per_s"],
        ddim50_img_per_s=j["ddim50_img_per_s"], torch_ddim50_img_per_s=t["ddim50_img_per_s"],
        train_ratio=j["train_img_per_s"] / t["train_img_per_s"],
        ddim50_ratio=j["ddim50_img_per_s"] / t["ddim50_img_per_s"])
    for phase in ("train", "ddim50"):
      # Each round's ratio compares runs minutes apart at most: its median is the estimate
      # least moved by the machine's drift, and the spread shows how much there was.
      ratios = [ts / js for js, ts in zip(j[f"{phase}_s_rounds"], t[f"{phase}_s_rounds"])]
      results[f"{phase}_round_ratios"] = ratios
      results[f"{phase}_median_round_ratio"] = float(np.median(ratios))
      print(f"JAX/PyTorch {phase}: {results[f'{phase}_ratio']:.2f}x (fastest rounds), "
            f"{np.median(ratios):.2f}x (median round; rounds "
            + " ".join(f"{r:.2f}" for r in ratios) + ")")
  print(json.dumps(results))


if __name__ == "__main__":
  platform.reexec_with_malloc_tunables()  # JAX and PyTorch both run with it
  main()
