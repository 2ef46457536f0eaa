r"""The SegDiff results table of one dataset: samplers x ensemble sizes, and the baseline.

  python experiments/segdiff/run.py --config=configs/segdiff_isbi_cpu.py \
      --segdiff_workdir=/tmp/segdiff_isbi --supervised_workdir=/tmp/supervised_isbi \
      --manual_dir=$DATA --out=experiments/segdiff/isbi

Both runs are trained first with ``python -m diffseg_jax.main`` (the config's docstring). For
each sampler (DDPM over all steps, DDIM-10, DDIM-25) the evaluation set is segmented once with
an ensemble of 9; the scores of ensembles of 1 and 3 are those of its first 1 and 3 members
(``masks.combine_members``), so the three sizes see the same samples. Seconds per image are
timed separately for each sampler and ensemble size, on the first ``segment.batch_size``
images, after a compiling call. Writes ``<out>/results.json``, ``<out>/results.md`` and
the panels ``<out>/<run>.png`` (image, ground truth, prediction, uncertainty); for configs
evaluated on crops, also ``<out>/whole_images.png``: whole images in overlapping windows.
"""

import json
import pathlib
import time

import jax
import numpy as np
from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from diffseg_jax import config as config_lib
from diffseg_jax import files
from diffseg_jax import platform
from diffseg_jax import segment
from diffseg_jax.data.builders import camvid
from diffseg_jax.evaluation import segmentation_eval
from diffseg_jax.methods import masks
from diffseg_jax.methods import segmentation
from diffseg_jax.train import sharding
from diffseg_jax.train.state import restore_sampling_params

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "A SegDiff config (configs/segdiff_*.py).")
flags.DEFINE_string("segdiff_workdir", None, "Workdir of the trained SegDiff run.")
flags.DEFINE_string("supervised_workdir", None, "Workdir of the trained supervised run.")
flags.DEFINE_string("manual_dir", None, "The dataset folder (data.manual_dir).")
flags.DEFINE_string("out", None, "Output folder.")
flags.DEFINE_list("samplers", ["ddpm:0", "ddim:10", "ddim:25"],
                  "sampler:steps pairs (0: every step of the schedule).")
flags.DEFINE_integer("num_images", None, "Images to evaluate (default: segment.num_images).")
flags.mark_flags_as_required(["config", "segdiff_workdir", "supervised_workdir", "manual_dir",
                              "out"])

CLASS_NAMES = {"camvid_segnet": camvid.CLASSES, "isbi2012": ("interior", "membrane")}
ENSEMBLES = (1, 3, 9)


def _config(method: str, sampler: str = "ddpm", steps: int = 0, ensemble: int = 1):
  config = FLAGS.config.copy_and_resolve_references()
  config.method = method
  config.data.manual_dir = FLAGS.manual_dir
  config.segment.sampler, config.segment.steps = sampler, steps
  config.segment.ensemble = ensemble
  if FLAGS.num_images is not None:
    config.segment.num_images = FLAGS.num_images
  config_lib.validate(config)
  return config


def _seconds_per_image(segmenter, params, images, key) -> float:
  segmenter(params, images, key)  # compiles
  start = time.perf_counter()
  segmenter(params, images, key)
  return (time.perf_counter() - start) / len(images)


def _row(name, scores, seconds, **extra) -> dict:
  return dict(run=name, seconds_per_image=seconds, **extra, **scores)


def evaluate_segdiff(examples, mesh, out: pathlib.Path) -> list[dict]:
  """Rows of every sampler and ensemble size (module doc)."""
  rows = []
  base = _config("segdiff")
  model = segmentation.make_model(base)
  step, params = restore_sampling_params(base, model, FLAGS.segdiff_workdir, mesh,
                                         ema_index=base.segment.ema_index)
  key = jax.random.key(base.seed + 3)
  timing_images = examples["image"][:base.segment.batch_size]
  for pair in FLAGS.samplers:
    sampler, steps = pair.split(":")[0], int(pair.split(":")[1])
    total = steps or base.diffusion.num_timesteps
    seconds = {}
    for ensemble in ENSEMBLES:
      timer = segment.Segmenter(model, _config("segdiff", sampler, steps, ensemble).segment,
                                mesh)
      seconds[ensemble] = _seconds_per_image(timer, params, timing_images, key)
    config = _config("segdiff", sampler, steps, max(ENSEMBLES))
    segmenter = segment.Segmenter(model, config.segment, mesh, keep_members=True)
    start = time.perf_counter()
    predictions = segmenter(params, examples["image"], key)
    logging.info("%s-%d, 9 members: %.1f s for %d images.", sampler, total,
                 time.perf_counter() - start, len(examples["image"]))
    for ensemble in ENSEMBLES:
      combined = jax.device_get(masks.combine_members(predictions["member_probs"][:ensemble]))
      scores = segmentation_eval.score(examples["mask"], combined, base.data.mask_classes)
      name = f"segdiff_{sampler}{total}_ens{ensemble}"
      rows.append(_row(name, scores, seconds[ensemble], sampler=sampler, steps=total,
                       ensemble=ensemble, step=step))
      if ensemble == max(ENSEMBLES):
        files.write_png(out / f"{name}.png", segment.panel(examples, combined,
                                                           base.data.mask_classes))
      logging.info("%s: %s", name, {k: v for k, v in rows[-1].items()
                                    if not isinstance(v, list)})
  return rows


def whole_image_panel(mesh, out: pathlib.Path, count: int = 2) -> None:
  """For configs evaluated on crops: the first ``count`` whole images segmented in
  overlapping windows of the training size (DDIM-10, ensemble of 9), as ``whole_images.png``."""
  config = _config("segdiff", "ddim", 10, max(ENSEMBLES))
  config.segment.whole_images = True
  config.segment.patch_size = config.data.image_size
  examples = segment.read_eval_set(config, limit=count)
  model = segmentation.make_model(config)
  _, params = restore_sampling_params(config, model, FLAGS.segdiff_workdir, mesh,
                                      ema_index=config.segment.ema_index)
  predictions = segment.Segmenter(model, config.segment, mesh)(
      params, examples["image"], jax.random.key(config.seed + 3))
  scores = segmentation_eval.score(examples["mask"], predictions, config.data.mask_classes)
  logging.info("Whole images in windows: %s", {k: v for k, v in scores.items()
                                              if not isinstance(v, list)})
  files.write_png(out / "whole_images.png", segment.panel(examples, predictions,
                                                         config.data.mask_classes))


def evaluate_supervised(examples, mesh, out: pathlib.Path) -> dict:
  config = _config("supervised")
  model = segmentation.make_model(config)
  step, params = restore_sampling_params(config, model, FLAGS.supervised_workdir, mesh,
                                         ema_index=config.segment.ema_index)
  segmenter = segment.Segmenter(model, config.segment, mesh)
  key = jax.random.key(config.seed + 3)
  seconds = _seconds_per_image(segmenter, params, examples["image"][:config.segment.batch_size],
                               key)
  predictions = segmenter(params, examples["image"], key)
  scores = segmentation_eval.score(examples["mask"], predictions, config.data.mask_classes)
  files.write_png(out / "supervised.png", segment.panel(examples, predictions,
                                                       config.data.mask_classes))
  return _row("supervised", scores, seconds, sampler="", steps=0, ensemble=1, step=step)


def _fmt(value) -> str:
  return "n/a" if value is None or (isinstance(value, float) and np.isnan(value)) else (
      f"{value:.3f}")


def markdown(rows: list[dict], num_classes: int, class_names: list[str]) -> str:
  """The results table, then per-class IoU."""
  overlap = "Dice" if num_classes == 2 else "mIoU"
  lines = [f"| run | {overlap} | IoU | ECE | AUROC (variance) | AUROC (entropy) | s / image |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    main = r["dice"] if num_classes == 2 else r["miou"]
    lines.append(f"| {r['run']} | {_fmt(main)} | {_fmt(r['iou'])} | {_fmt(r['ece'])} | "
                 f"{_fmt(r['auroc_variance'])} | {_fmt(r['auroc_entropy'])} | "
                 f"{r['seconds_per_image']:.2f} |")
  lines += ["", "IoU per class:", "",
            "| run | " + " | ".join(class_names) + " |",
            "|---|" + "---|" * len(class_names)]
  for r in rows:
    lines.append(f"| {r['run']} | " + " | ".join(_fmt(v) for v in r["iou_per_class"]) + " |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  out = pathlib.Path(FLAGS.out)
  mesh = sharding.make_mesh()
  examples = segment.read_eval_set(_config("segdiff"))
  logging.info("Evaluation set: %d images of %s.", len(examples["image"]),
               "x".join(map(str, examples["image"].shape[1:])))
  rows = evaluate_segdiff(examples, mesh, out)
  rows.append(evaluate_supervised(examples, mesh, out))
  if not FLAGS.config.segment.whole_images:
    whole_image_panel(mesh, out)
  num_classes = FLAGS.config.data.mask_classes
  files.write_json(out / "results.json", rows)
  names = CLASS_NAMES.get(FLAGS.config.data.name, [str(i) for i in range(num_classes)])
  files.write_bytes(out / "results.md", markdown(rows, num_classes, names).encode())
  print(json.dumps([{k: v for k, v in r.items() if not isinstance(v, list)} for r in rows]))


if __name__ == "__main__":
  platform.reexec_with_malloc_tunables()
  platform.configure_xla_cpu()
  app.run(main)
