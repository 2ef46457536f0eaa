"""The jitted, data-parallel train step."""

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from diffseg_jax.train import sharding
from diffseg_jax.train.state import Params
from diffseg_jax.train.state import TrainState

LossFn = Callable[[Params, dict, jax.Array], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(loss_fn: LossFn, tx: optax.GradientTransformation,
                    ema_rates: Sequence[float], mesh: Mesh):
  """Builds ``train_step(state, batch, key) -> (state, metrics)``, jitted over ``mesh``.

  The batch is split over the mesh's data axis and the state replicated, so XLA inserts the
  gradient all-reduce itself. The state argument is donated (updated in place).

  An update whose loss or gradient is not finite is not applied: the state comes back as it
  went in, and ``metrics["finite"]`` is False so that the loop can stop with the step number
  and the last checkpoint stays good.

  Args:
    loss_fn: ``(params, batch, key) -> (scalar loss, dict of scalar metrics)``.
    tx: the optimiser.
    ema_rates: decay of each EMA in ``state.ema_params`` (e.g. 0.9999).
    mesh: the device mesh.

  Returns:
    The jitted step. ``key`` is the run's training key; the step folds in ``state.step`` so
    that every step draws fresh randomness and a resumed run draws what it would have drawn.
  """

  def train_step(state: TrainState, batch: dict, key: jax.Array):
    key = jax.random.fold_in(key, state.step)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, key)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = tuple(
        optax.incremental_update(params, ema, step_size=1.0 - rate)
        for ema, rate in zip(state.ema_params, ema_rates))
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updated = TrainState(step=state.step + 1, params=params, ema_params=ema_params,
                         opt_state=opt_state)
    new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
    return new_state, dict(metrics, loss=loss, grad_norm=grad_norm, finite=finite)

  replicated = sharding.replicated(mesh)
  return jax.jit(train_step,
                 in_shardings=(replicated, sharding.batch_sharded(mesh), replicated),
                 out_shardings=(replicated, replicated),
                 donate_argnums=0)
