"""The training loop: ``train_and_evaluate(config, workdir)``.

Resumes from the newest checkpoint in ``workdir`` (if ``<workdir>/config.json``, written by the
first run, agrees on the model, diffusion and data shape), logs to TensorBoard and the console
(steps/s and ETA), checkpoints every ``train.checkpoint_every`` steps, writes a grid of samples
(PNG and TensorBoard; the ``sample.*`` settings and weights), or for segmentation methods a
panel of segmented evaluation images, every ``train.sample_every`` steps and at the end, and
stops at the first non-finite loss without writing a checkpoint of the bad state.
"""

import pathlib

import jax
import ml_collections
import numpy as np
from absl import logging
from clu import metric_writers
from clu import periodic_actions

from diffseg_jax import config as config_lib
from diffseg_jax import data
from diffseg_jax import files
from diffseg_jax import images as image_io
from diffseg_jax import methods
from diffseg_jax.generate import ImageSampler
from diffseg_jax.generate import sampling_params
from diffseg_jax.segment import Segmenter
from diffseg_jax.segment import panel as segment_panel
from diffseg_jax.train import sharding
from diffseg_jax.train.checkpointing import Checkpointer
from diffseg_jax.train.checkpointing import write_run_config
from diffseg_jax.train.optimizer import make_optimizer
from diffseg_jax.train.state import TrainState
from diffseg_jax.train.state import initial_state
from diffseg_jax.train.state import restore_state
from diffseg_jax.train.step import make_train_step


class _MetricBuffer:
  """Collects per-step metrics on device and fetches them in one transfer when flushed."""

  def __init__(self):
    self._steps, self._metrics = [], []

  def add(self, step: int, metrics: dict) -> None:
    self._steps.append(step)
    self._metrics.append(metrics)

  def flush(self) -> dict[str, float]:
    """Returns the mean of each metric since the last flush; raises at a non-finite step."""
    if not self._metrics:
      return {}
    fetched = jax.device_get(self._metrics)
    steps = self._steps
    self._steps, self._metrics = [], []
    for step, m in zip(steps, fetched):
      if not m["finite"]:
        raise FloatingPointError(
            f"Non-finite training loss at step {step} (loss={m['loss']}, grad_norm="
            f"{m['grad_norm']}). Training stopped; that update was not applied and no "
            "checkpoint was written after it. Lower optim.learning_rate or set "
            "optim.grad_clip_norm, then rerun: training resumes from the last checkpoint.")
    return {k: float(np.mean([m[k] for m in fetched])) for k in fetched[0] if k != "finite"}


def _make_preview(config: ml_collections.ConfigDict, model, mesh):
  """``preview(state) -> (name, uint8 picture)`` written during training: a grid of
  ``train.num_sample_images`` samples ("samples"), or for segmentation methods the panel of
  as many evaluation images, centre-cropped, segmented with the ``segment.*`` settings
  ("segmentations"; ``segment.patch_size`` is not used)."""
  t = config.train
  key = jax.random.fold_in(jax.random.key(config.seed), 2)
  if config.method == "generation":
    sampler = ImageSampler(model, config.sample, mesh)

    def sample_grid(state):
      params = sampling_params(state, config.sample.ema_index)
      images, _ = sampler(params, key, t.num_sample_images, t.num_sample_images)
      return "samples", image_io.grid(images)

    return sample_grid
  examples = data.read_split(config.data, config.data.eval_split, t.num_sample_images)
  segment_config = config.segment.copy_and_resolve_references()
  segment_config.patch_size = 0
  segmenter = Segmenter(model, segment_config, mesh)

  def segmentation_panel(state):
    predictions = segmenter(sampling_params(state, config.segment.ema_index),
                            examples["image"], key)
    return "segmentations", segment_panel(examples, predictions, config.data.mask_classes)

  return segmentation_panel


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str) -> TrainState:
  """Trains the model of ``config``, resuming from ``workdir`` if it holds a checkpoint.

  Returns:
    The final train state.
  """
  config_lib.validate(config)
  workdir = pathlib.Path(workdir)
  workdir.mkdir(parents=True, exist_ok=True)
  mesh = sharding.make_mesh()
  t = config.train
  sharding.check_batch_size(t.batch_size, mesh)
  model = methods.make_model(config)

  checkpointer = Checkpointer(workdir, t.keep_checkpoints)
  if checkpointer.latest_step() is None:
    state = initial_state(config, model, mesh)
  else:  # refused if config.json or the parameter shapes say it is another model
    state = restore_state(config, model, str(workdir), mesh, checkpointer)
    logging.info("Resumed from the step-%d checkpoint in %s.", int(state.step), workdir)
  start = int(state.step)
  write_run_config(config, workdir, start)

  batches = data.train_iterator(config, mesh, start_step=start)
  tx = make_optimizer(config.optim, t.num_steps)
  train_step = make_train_step(model.loss, tx, config.optim.ema_rates, mesh)
  train_key = jax.random.fold_in(jax.random.key(config.seed), 1)
  preview = _make_preview(config, model, mesh)

  writer = metric_writers.create_default_writer(workdir, just_logging=jax.process_index() > 0)
  if start == 0:
    writer.write_hparams({k: str(v) for k, v in config_lib.flatten(config).items()})
  progress = periodic_actions.ReportProgress(num_train_steps=t.num_steps, writer=writer,
                                             every_steps=t.log_every)
  buffer = _MetricBuffer()
  logging.info("Training %s for %d steps on %d device(s), global batch %d.",
               config.data.name, t.num_steps, mesh.size, t.batch_size)

  def write_samples(step: int) -> None:
    name, picture = preview(state)
    if jax.process_index() == 0:
      files.write_png(workdir / name / f"step_{step:07d}.png", picture)
    writer.write_images(step, {name: picture[None]})

  try:
    for step in range(start + 1, t.num_steps + 1):
      with jax.profiler.StepTraceAnnotation("train", step_num=step):
        state, metrics = train_step(state, next(batches), train_key)
      buffer.add(step, metrics)
      progress(step)
      last = step == t.num_steps
      if step % t.log_every == 0 or step % t.checkpoint_every == 0 or last:
        writer.write_scalars(step, buffer.flush())  # raises on a non-finite loss
      if step % t.checkpoint_every == 0 or last:
        checkpointer.save(step, state)
      if (t.sample_every and step % t.sample_every == 0) or last:
        write_samples(step)
  finally:  # checkpoints already being written are good: let them finish, even on an error
    batches.close()
    checkpointer.wait()
    checkpointer.close()
    writer.flush()
  return state
