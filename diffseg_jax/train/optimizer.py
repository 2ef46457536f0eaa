"""The optimiser: AdamW with linear warm-up, an optional cosine decay and gradient clipping."""

import ml_collections
import optax


def learning_rate_schedule(optim: ml_collections.ConfigDict, num_steps: int) -> optax.Schedule:
  """Linear warm-up from 0 over ``optim.warmup_steps``, then constant or cosine decay to 0 at
  step ``optim.decay_steps`` (0: ``num_steps``)."""
  if optim.schedule == "constant":
    decay = optax.constant_schedule(optim.learning_rate)
  elif optim.schedule == "cosine":
    end = optim.decay_steps or num_steps
    decay = optax.cosine_decay_schedule(optim.learning_rate, max(end - optim.warmup_steps, 1))
  else:
    raise ValueError(f"Unknown optim.schedule {optim.schedule!r}; valid: constant, cosine.")
  if not optim.warmup_steps:
    return decay
  warmup = optax.linear_schedule(0.0, optim.learning_rate, optim.warmup_steps)
  return optax.join_schedules([warmup, decay], [optim.warmup_steps])


def make_optimizer(optim: ml_collections.ConfigDict,
                   num_steps: int) -> optax.GradientTransformation:
  """AdamW (decoupled weight decay), preceded by global-norm clipping when enabled."""
  adamw = optax.adamw(learning_rate_schedule(optim, num_steps), b1=optim.b1, b2=optim.b2,
                      eps=optim.eps, weight_decay=optim.weight_decay)
  if optim.grad_clip_norm:
    return optax.chain(optax.clip_by_global_norm(optim.grad_clip_norm), adamw)
  return adamw
