r"""GroupNorm followed by SiLU, forward and forward + backward: the fused CPU kernel, XLA's
version and PyTorch's, in one process.

  python benchmarks/group_norm.py [--repeats=20]

Times `layers.group_norm_act(..., silu=True)` on the 6.5M ADM U-Net's activation shapes at
batch 32 (32 groups), once as the fused kernel of `diffseg_jax/nn/onednn.py` and once as XLA's
operations (what other platforms run), against `torch.nn.GroupNorm` + `silu` on NCHW tensors.
Each figure is the fastest of `--repeats` calls in milliseconds; the phases alternate call by
call, so the machine's drift falls on all of them alike. The last line is a JSON object.
"""

import argparse
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from diffseg_jax import platform
from diffseg_jax.nn import layers
from diffseg_jax.nn import onednn

SHAPES = ((32, 32, 32, 64), (32, 16, 16, 128), (32, 32, 32, 192), (32, 8, 8, 256))


def _jax_phases(shape, fused: bool) -> dict:
  n, h, w, c = shape
  rng = np.random.default_rng(0)
  x, dy = (jnp.asarray(rng.standard_normal((n, h * w, c)), jnp.float32) for _ in range(2))
  gamma, beta = jnp.ones((c,)), jnp.zeros((c,))

  def norm(x, gamma, beta):
    if fused:
      return layers.group_norm_act(x, gamma, beta, 32, 1e-5, silu=True)
    return layers._group_norm_act_xla(x, gamma, beta, None, 32, 1e-5, True)

  forward = jax.jit(norm)
  backward = jax.jit(lambda x, gamma, beta, dy: jax.vjp(norm, x, gamma, beta)[1](dy))
  return {"forward": lambda: forward(x, gamma, beta).block_until_ready(),
          "forward_backward": lambda: jax.block_until_ready(backward(x, gamma, beta, dy))}


def _torch_phases(shape) -> dict:
  import torch  # pylint: disable=g-import-not-at-top

  n, h, w, c = shape
  norm = torch.nn.GroupNorm(32, c)
  x = torch.randn(n, c, h, w, requires_grad=True)
  dy = torch.randn(n, c, h, w)

  def forward():
    with torch.no_grad():
      torch.nn.functional.silu(norm(x))

  def forward_backward():
    torch.nn.functional.silu(norm(x)).backward(dy)

  return {"forward": forward, "forward_backward": forward_backward}


def main():
  platform.configure_xla_cpu()
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=20)
  args = parser.parse_args()
  if not onednn.applies(jnp.ones(1)):
    raise SystemExit("The fused kernel is unavailable: install the `cpu` extra "
                     "(pip install -e '.[cpu]') and a C++ compiler.")
  import torch  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(os.cpu_count())
  results = []
  for shape in SHAPES:
    phases = {"fused": _jax_phases(shape, True), "xla": _jax_phases(shape, False),
              "torch": _torch_phases(shape)}
    row = {"shape_nhwc": list(shape)}
    for phase in ("forward", "forward_backward"):
      runs = {name: p[phase] for name, p in phases.items()}
      for fn in runs.values():
        fn()  # compile, warm up
      best = {name: float("inf") for name in runs}
      for _ in range(args.repeats):
        for name, fn in runs.items():
          start = time.perf_counter()
          fn()
          best[name] = min(best[name], time.perf_counter() - start)
      for name, seconds in best.items():
        row[f"{name}_{phase}_ms"] = 1e3 * seconds
      row[f"fused_over_xla_{phase}"] = best["xla"] / best["fused"]
      row[f"fused_over_torch_{phase}"] = best["torch"] / best["fused"]
    results.append(row)
    print(f"{str(shape):<20}" + "  ".join(
        f"{phase}: fused {row[f'fused_{phase}_ms']:.2f} / XLA {row[f'xla_{phase}_ms']:.2f}"
        f" / torch {row[f'torch_{phase}_ms']:.2f} ms"
        for phase in ("forward", "forward_backward")), flush=True)
  print(json.dumps(results))


if __name__ == "__main__":
  platform.reexec_with_malloc_tunables()  # both frameworks run with it
  main()
