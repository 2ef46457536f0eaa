"""The train state: parameters, their exponential moving averages and the optimiser state."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from diffseg_jax.train import sharding
from diffseg_jax.train.checkpointing import Checkpointer
from diffseg_jax.train.checkpointing import check_run_config
from diffseg_jax.train.optimizer import make_optimizer

Params = Any


@flax.struct.dataclass
class TrainState:
  """Everything a training run checkpoints.

  Attributes:
    step: int32 scalar, the number of optimiser updates applied.
    params: the model parameters being optimised.
    ema_params: one tree like ``params`` per EMA rate, in the order of ``optim.ema_rates``.
    opt_state: the optax state.
  """
  step: jax.Array
  params: Params
  ema_params: tuple[Params, ...]
  opt_state: optax.OptState

  @classmethod
  def create(cls, params: Params, tx: optax.GradientTransformation,
             num_ema: int) -> "TrainState":
    """A fresh state at step 0; every EMA starts as a copy of ``params``.

    The copies own their buffers, so the state can be donated to a jitted step.
    """
    return cls(step=jnp.zeros((), jnp.int32), params=params,
               ema_params=tuple(jax.tree.map(jnp.copy, params) for _ in range(num_ema)),
               opt_state=tx.init(params))


def _state_fn(config, model, tx):
  return lambda key: TrainState.create(model.init(key), tx, len(config.optim.ema_rates))


def initial_state(config, model, mesh) -> TrainState:
  """A fresh train state for ``model`` (anything with ``init(key) -> params``), seeded by
  ``config.seed`` and replicated over ``mesh``."""
  tx = make_optimizer(config.optim, config.train.num_steps)
  init_key = jax.random.fold_in(jax.random.key(config.seed), 0)
  return jax.jit(_state_fn(config, model, tx),
                 out_shardings=sharding.replicated(mesh))(init_key)


def _abstract_replicated(tree, mesh):
  """``jax.ShapeDtypeStruct`` leaves of ``tree``, replicated over ``mesh``."""
  replicated = sharding.replicated(mesh)
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                      tree)


def restore_state(config, model, workdir: str, mesh,
                  checkpointer: Checkpointer | None = None) -> TrainState:
  """The newest checkpointed state in ``workdir``, replicated over ``mesh``.

  Uses ``checkpointer`` (the caller's, left open) if given, else opens and closes its own.

  Raises:
    FileNotFoundError: no checkpoint yet.
    ValueError: the checkpoint is of another model: its parameter shapes differ, or the run's
      ``config.json`` differs from ``config`` in model, diffusion or data shape (the
      differences are listed).
  """
  check_run_config(config, workdir)
  tx = make_optimizer(config.optim, config.train.num_steps)
  target = _abstract_replicated(jax.eval_shape(_state_fn(config, model, tx), jax.random.key(0)),
                                mesh)
  if checkpointer is not None:
    return checkpointer.restore(target)
  own = Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    return own.restore(target)
  finally:
    own.close()


def restore_sampling_params(config, model, workdir: str, mesh,
                            ema_index: int | None = None) -> tuple[int, Params]:
  """The step of the newest checkpoint in ``workdir`` and the parameters to sample with.

  Reads only the step and the parameters ``ema_index`` (default ``config.sample.ema_index``)
  selects (the raw parameters for -1, else that EMA), replicated over ``mesh``; the optimiser
  state is not read, so the optimiser config need not match the one the run was trained with.

  Raises:
    FileNotFoundError: no checkpoint yet.
    ValueError: the checkpoint is of another model (as for :func:`restore_state`), or has no
      EMA number ``sample.ema_index``.
  """
  check_run_config(config, workdir)
  params = _abstract_replicated(jax.eval_shape(model.init, jax.random.key(0)), mesh)
  step = jax.ShapeDtypeStruct((), jnp.int32, sharding=sharding.replicated(mesh))
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    index = config.sample.ema_index if ema_index is None else ema_index
    if index < 0:
      restored = checkpointer.restore_entries({"step": step, "params": params})
      return int(restored["step"]), restored["params"]
    num_ema = len(checkpointer.saved_structure()["ema_params"])
    if index >= num_ema:
      raise ValueError(
          f"EMA index {index} (sample/segment.ema_index), but the checkpoint in {checkpointer.directory} holds "
          f"{num_ema} EMA(s); use 0..{num_ema - 1}, or -1 for the raw parameters.")
    restored = checkpointer.restore_entries({"step": step, "ema_params": (params,) * num_ema})
    return int(restored["step"]), restored["ema_params"][index]
  finally:
    checkpointer.close()
