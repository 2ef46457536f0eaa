r"""Input throughput of a config's pipeline, to set beside the train step's images/s.

  python benchmarks/input_pipeline.py --config=configs/quickstart.py [--steps=200] \
      [--config.data.name=camvid_segnet --config.data.manual_dir=...  (any override)]

Prints examples/s of the host side alone (read, decode, preprocess, collate: the
``train_batches`` generator) and through the prefetcher onto the device mesh (what the
training loop consumes, with nothing else running), after one warm-up batch. The dataset is
prepared first if it is not yet.
"""

import time

from absl import app
from absl import flags
from ml_collections import config_flags

from diffseg_jax import config as config_lib
from diffseg_jax import data
from diffseg_jax.data import input_pipeline
from diffseg_jax.train import sharding

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A config file in configs/.", lock_config=True)
flags.DEFINE_integer("steps", 200, "Batches to time.")
flags.mark_flags_as_required(["config"])


def _examples_per_second(batches, steps: int, batch_size: int) -> float:
  next(batches)  # warm-up: opens files, first permutation
  start = time.perf_counter()
  for _ in range(steps):
    batch = next(batches)
  if hasattr(batch["image"], "block_until_ready"):
    batch["image"].block_until_ready()
  return steps * batch_size / (time.perf_counter() - start)


def main(argv) -> None:
  del argv
  config = FLAGS.config
  config_lib.validate(config)
  d, batch_size = config.data, config.train.batch_size
  host = input_pipeline.train_batches(
      data.load_source(d, d.split), global_batch_size=batch_size, seed=config.seed,
      transform=input_pipeline.preprocessing(d), mask_classes=d.mask_classes)
  host_rate = _examples_per_second(host, FLAGS.steps, batch_size)
  with data.train_iterator(config, sharding.make_mesh()) as device:
    device_rate = _examples_per_second(device, FLAGS.steps, batch_size)
  print(f"{d.name} {d.split} -> {d.image_size}x{d.image_size} (crop={d.crop}, "
        f"resize={d.resize}, flip={d.random_flip}), batch {batch_size}: host "
        f"{host_rate:.0f} examples/s, prefetched onto the mesh {device_rate:.0f} examples/s")


if __name__ == "__main__":
  app.run(main)
