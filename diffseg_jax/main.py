r"""Command-line entrypoint.

  python -m diffseg_jax.main --config=configs/quickstart.py --workdir=/tmp/quickstart \
      [--mode=train|sample|segment|evaluate] [--config.train.num_steps=2000] [--config.sample.steps=25]

``train`` trains (resuming from the newest checkpoint in the workdir) and writes sample grids;
``sample`` draws ``sample.num_images`` images from the newest checkpoint into
``<workdir>/samples/step<N>_<sampler><steps>[_eta<eta>]_<weights>/`` as a PNG grid and an npz
in the ADM evaluator's format; ``evaluate`` computes FID, sFID, IS, precision and recall of
``evaluate.num_samples`` samples (or of ``evaluate.samples_npz``) against a reference set with
the ``evaluate.features`` extractor, into TensorBoard and ``<workdir>/eval/*.json``
(``diffseg_jax.evaluation.evaluate``). For the segmentation methods (``method=segdiff`` or
``supervised``), ``segment`` writes masks, class probabilities and uncertainty maps of the
evaluation split (``diffseg_jax.segment``) and ``evaluate`` scores them: Dice, IoU per class,
calibration, uncertainty AUROC, seconds per image (``diffseg_jax.evaluation.segmentation_eval``). On several hosts, pass ``--distributed`` to call
``jax.distributed.initialize()`` first.

On Linux, the command restarts itself once with glibc malloc tunables (transparent huge pages,
freed memory kept for the next step: ``diffseg_jax.platform.reexec_with_malloc_tunables``,
10-15% faster steps on CPU and no slow step after a pause); set ``DIFFSEG_MALLOC_TUNABLES=0``
to prevent it.
"""

import sys

from diffseg_jax import platform

if __name__ == "__main__":  # before the heavy imports below, so the restart is cheap
  platform.reexec_with_malloc_tunables()

# pylint: disable=g-import-not-at-top,wrong-import-position
import logging as std_logging

import jax
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffseg_jax import config as config_lib
from diffseg_jax.evaluation import evaluate as generative_evaluation
from diffseg_jax.evaluation import segmentation_eval
from diffseg_jax.generate import sample_and_save
from diffseg_jax.segment import segment_and_save
from diffseg_jax.train.loop import train_and_evaluate

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Directory for checkpoints, logs and samples.")
flags.DEFINE_enum("mode", "train", ["train", "sample", "segment", "evaluate"],
                  "What to do: sample for generation methods, segment for segmentation ones.")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() (multi-host runs).")
config_flags.DEFINE_config_file("config", None, "Path to a config file in configs/.",
                                lock_config=True)
flags.mark_flags_as_required(["config", "workdir"])


class _QuietLibraries:
  """A logging filter: INFO chatter of orbax and JAX internals off, their warnings kept."""

  _NOISY = ("/orbax/", "/jax/_src/")

  def filter(self, record) -> bool:
    return record.levelno > std_logging.INFO or not any(
        part in record.pathname for part in self._NOISY)


def main(argv: list[str]) -> None:
  """Runs ``--mode`` (train, sample or evaluate) on ``--config`` in ``--workdir`` (module doc)."""
  if len(argv) > 1:
    raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}")
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.distributed:
    jax.distributed.initialize()
  logging.info("JAX process %d of %d; %d local / %d global devices (%s); huge pages %s; "
               "freed memory %s.", jax.process_index(), jax.process_count(),
               jax.local_device_count(), jax.device_count(), jax.devices()[0].platform,
               "on" if platform.huge_pages_enabled() else "off",
               "kept" if platform.freed_memory_kept() else "returned")
  generation = FLAGS.config.method == "generation"
  if FLAGS.mode in ("sample", "segment") and (FLAGS.mode == "sample") != generation:
    raise app.UsageError(f"--mode={FLAGS.mode} does not apply to method="
                         f"{FLAGS.config.method!r}; use --mode="
                         f"{'sample' if generation else 'segment'}.")
  if FLAGS.mode == "train":
    train_and_evaluate(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "sample":
    sample_and_save(FLAGS.config, FLAGS.workdir)
  elif FLAGS.mode == "segment":
    segment_and_save(FLAGS.config, FLAGS.workdir)
  elif generation:
    generative_evaluation.evaluate_and_save(FLAGS.config, FLAGS.workdir)
  else:
    segmentation_eval.evaluate_and_save(FLAGS.config, FLAGS.workdir)


def check_overrides(argv: list[str]) -> None:
  """Fails with the valid keys if a ``--config.<key>=`` override names an unknown key."""
  keys = [a[len("--config."):].split("=", 1)[0] for a in argv if a.startswith("--config.")]
  try:
    config_lib.check_keys(keys)
  except ValueError as e:
    sys.exit(f"error: {e}")


if __name__ == "__main__":
  platform.configure_xla_cpu()
  check_overrides(sys.argv)
  app.run(main)
