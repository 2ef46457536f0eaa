"""The train state: parameters, their exponential moving averages and the optimiser state."""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from diffseg_jax.train import sharding
from diffseg_jax.train.checkpointing import Checkpointer
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


def restore_state(config, model, workdir: str, mesh) -> TrainState:
  """The newest checkpointed state in ``workdir``, replicated over ``mesh``.

  Raises:
    FileNotFoundError: no checkpoint yet.
    ValueError: the checkpoint is of another model (the differences are listed).
  """
  tx = make_optimizer(config.optim, config.train.num_steps)
  abstract = jax.eval_shape(_state_fn(config, model, tx), jax.random.key(0))
  replicated = sharding.replicated(mesh)
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                        abstract)
  checkpointer = Checkpointer(workdir, config.train.keep_checkpoints)
  try:
    return checkpointer.restore(target)
  finally:
    checkpointer.close()
