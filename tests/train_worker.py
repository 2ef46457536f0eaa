"""Runs two train steps of the tiny model, then samples from it (a helper of test_train).

  python tests/train_worker.py --out=OUT.npz [--devices=N] [--process_id=I --num_processes=P
      --port=PORT]

With ``--num_processes`` it joins a ``jax.distributed`` job on 127.0.0.1 (one CPU device per
process, gloo collectives); each process feeds only its own slice of every batch.

Every process saves what it holds: the parameters (one array per "/"-joined path), the last
loss and ``samples``, the float32 images the ``ImageSampler`` returned to it. Process 0 writes
OUT.npz, process ``i > 0`` writes OUT.process<i>.npz.
"""

import argparse
import pathlib
import sys

import jax
import numpy as np
from flax import traverse_util

sys.path.insert(0, str(pathlib.Path(__file__).parent))
import tiny_config  # noqa: E402


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("--out", required=True)
  parser.add_argument("--devices", type=int, default=0, help="0: all devices")
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id)

  from diffseg_jax import data
  from diffseg_jax.generate import ImageSampler
  from diffseg_jax.methods.generation import GenerationModel
  from diffseg_jax.train import sharding
  from diffseg_jax.train.optimizer import make_optimizer
  from diffseg_jax.train.state import initial_state
  from diffseg_jax.train.step import make_train_step

  config = tiny_config.get_config()
  # The zero-initialised output layers make some gradients exactly zero in exact arithmetic,
  # so what the two layouts compute there is rounding noise (~1e-11), summed in different
  # orders. Adam's m / (sqrt(v) + eps) would scale that noise up to steps of ~lr / 1000 with
  # a random sign; eps = 1e-3 keeps such updates as small as the gradients, so that comparing
  # parameters measures the sharded computation rather than amplified noise.
  config.optim.eps = 1e-3
  devices = jax.devices()[:args.devices] if args.devices else jax.devices()
  mesh = sharding.make_mesh(devices)
  model = GenerationModel(config)
  state = initial_state(config, model, mesh)
  step = make_train_step(model.loss, make_optimizer(config.optim, config.train.num_steps),
                         config.optim.ema_rates, mesh)
  batches = data.train_iterator(config, mesh)
  key = jax.random.key(0)
  for _ in range(2):
    state, metrics = step(state, next(batches), key)
  batches.close()
  local = jax.tree.map(lambda x: np.asarray(x.addressable_data(0)), state.params)
  flat = traverse_util.flatten_dict(local, sep="/")
  flat["loss"] = np.asarray(metrics["loss"].addressable_data(0))
  s = config.sample
  flat["samples"], _ = ImageSampler(model, s, mesh).sample(state.params, jax.random.key(1),
                                                           s.num_images, s.batch_size)
  out = pathlib.Path(args.out)
  if jax.process_index():
    out = out.with_suffix(f".process{jax.process_index()}{out.suffix}")
  np.savez(out, **flat)
  print(f"process {jax.process_index()}: {mesh.size} devices in the mesh, "
        f"loss {float(flat['loss']):.6f}")


if __name__ == "__main__":
  main()
