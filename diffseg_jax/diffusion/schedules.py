"""Noise schedules and timestep respacing.

A schedule is the float64 array of forward-process variances ``beta_t`` for ``t = 0..T-1``
(Ho et al. 2020, eq. 2: ``q(x_t | x_{t-1}) = N(sqrt(1 - beta_t) x_{t-1}, beta_t I)``).
"""

import math
from collections.abc import Callable, Sequence

import numpy as np

BETA_SCHEDULES = ("linear", "cosine", "sqrt_linear")


def linear_beta_schedule(
    num_timesteps: int, beta_start: float = 1e-4, beta_end: float = 0.02
) -> np.ndarray:
  """DDPM's linear schedule (Ho et al. 2020, sec. 4), as ADM scales it to any length.

  ``beta_start`` and ``beta_end`` are given for a 1000-step chain and multiplied by
  ``1000 / num_timesteps``, so that shorter chains add the same total noise.

  Args:
    num_timesteps: T, the number of diffusion steps.
    beta_start: beta_0 of a 1000-step chain.
    beta_end: beta_{T-1} of a 1000-step chain.

  Returns:
    float64 [T], increasing linearly.

  Raises:
    ValueError: if the scaled ``beta_end`` reaches 1 (T <= 20 with the default 0.02), where
      alpha-bar would be 0 and the model's x0 from eps infinite.
  """
  scale = 1000.0 / num_timesteps
  if scale * beta_end >= 1.0:
    shortest = math.floor(1000.0 * beta_end) + 1
    raise ValueError(
        f"the 'linear' schedule scaled to {num_timesteps} steps ends at beta = "
        f"{scale * beta_end:g} >= 1 (alpha-bar 0): use num_timesteps >= {shortest}, or the "
        "'cosine' schedule for short chains."
    )
  return np.linspace(scale * beta_start, scale * beta_end, num_timesteps, dtype=np.float64)


def betas_for_alpha_bar(
    num_timesteps: int, alpha_bar: Callable[[np.ndarray], np.ndarray], max_beta: float = 0.999
) -> np.ndarray:
  """Discretises a continuous ``alpha_bar(s)``, ``s`` in [0, 1], into betas.

  ``beta_i = min(1 - alpha_bar((i + 1) / T) / alpha_bar(i / T), max_beta)``, so that
  ``prod_{j<=i} (1 - beta_j) = alpha_bar((i + 1) / T) / alpha_bar(0)`` wherever the clip is
  inactive (Nichol & Dhariwal 2021, eq. 17).

  Args:
    num_timesteps: T.
    alpha_bar: vectorised function from float64 times in [0, 1] to the cumulative product of
      ``1 - beta``; decreasing, positive on [0, 1).
    max_beta: upper clip, which avoids a singular beta near ``s = 1``.

  Returns:
    float64 [T] in (0, max_beta].
  """
  steps = np.arange(num_timesteps, dtype=np.float64)
  ratio = alpha_bar((steps + 1) / num_timesteps) / alpha_bar(steps / num_timesteps)
  return np.minimum(1.0 - ratio, max_beta)


def cosine_beta_schedule(
    num_timesteps: int, s: float = 0.008, max_beta: float = 0.999
) -> np.ndarray:
  """iDDPM's cosine schedule: ``alpha_bar(s') = cos((s' + s) / (1 + s) * pi / 2)^2``.

  Nichol & Dhariwal 2021, eq. 17; ``s`` keeps beta_0 from being vanishingly small.

  Args:
    num_timesteps: T.
    s: small time offset.
    max_beta: upper clip of each beta (the last ones reach it).

  Returns:
    float64 [T] in (0, max_beta].
  """
  return betas_for_alpha_bar(
      num_timesteps, lambda u: np.cos((u + s) / (1.0 + s) * math.pi / 2) ** 2, max_beta
  )


def sqrt_linear_beta_schedule(
    num_timesteps: int, beta_start: float = 0.00085, beta_end: float = 0.012
) -> np.ndarray:
  """Latent diffusion's "linear" schedule: linear in ``sqrt(beta)`` (Rombach et al. 2022).

  Args:
    num_timesteps: T.
    beta_start: beta_0.
    beta_end: beta_{T-1}.

  Returns:
    float64 [T].
  """
  return (
      np.linspace(math.sqrt(beta_start), math.sqrt(beta_end), num_timesteps, dtype=np.float64)
      ** 2
  )


def get_beta_schedule(name: str, num_timesteps: int, **kwargs) -> np.ndarray:
  """Returns the betas of a named schedule.

  Args:
    name: one of ``BETA_SCHEDULES``: "linear" (DDPM/ADM, scaled by 1000/T), "cosine"
      (iDDPM) or "sqrt_linear" (LDM's "linear").
    num_timesteps: T >= 1.
    **kwargs: keyword arguments of the schedule's function (``linear_beta_schedule``,
      ``cosine_beta_schedule`` or ``sqrt_linear_beta_schedule``).

  Returns:
    float64 [T].

  Raises:
    ValueError: unknown ``name`` or ``num_timesteps < 1``.
  """
  schedules = {
      "linear": linear_beta_schedule,
      "cosine": cosine_beta_schedule,
      "sqrt_linear": sqrt_linear_beta_schedule,
  }
  if name not in schedules:
    raise ValueError(
        f"unknown beta schedule {name!r}; valid names are {', '.join(BETA_SCHEDULES)}."
    )
  if num_timesteps < 1:
    raise ValueError(f"num_timesteps must be at least 1, got {num_timesteps}.")
  return schedules[name](num_timesteps, **kwargs)


def _ddim_stride_steps(num_timesteps: int, desired_count: int) -> tuple[int, ...]:
  """``range(0, T, i)`` for the smallest stride ``i`` giving exactly ``desired_count`` steps."""
  for stride in range(1, num_timesteps):
    steps = range(0, num_timesteps, stride)
    if len(steps) == desired_count:
      return tuple(steps)
  raise ValueError(
      f"cannot take exactly {desired_count} steps out of {num_timesteps} with an integer stride; "
      "ask for another count with 'ddimN' or use an evenly spaced count such as "
      f"'{desired_count}'."
  )


def space_timesteps(num_timesteps: int, section_counts: str | Sequence[int]) -> tuple[int, ...]:
  """Chooses which of the original timesteps a respaced (shorter) chain keeps.

  Same choice as guided-diffusion's ``respace.space_timesteps``. ``T`` is cut into
  ``len(section_counts)`` consecutive sections of near-equal size (the first ``T % n``
  sections are one step longer), and section ``k`` keeps ``section_counts[k]`` steps at a
  fractional stride ``(size - 1) / (count - 1)``, each rounded with Python's ``round``.

  Args:
    num_timesteps: T of the original chain.
    section_counts: steps to keep per section: a list of ints, or a string of comma-separated
      ints ("250", "10,15,20"), or "ddimN" for DDIM's fixed integer stride giving N steps.

  Returns:
    Sorted tuple of distinct kept timesteps in [0, T).

  Raises:
    ValueError: no integer stride gives N steps ("ddimN"), no sections, or a section is asked
      for more steps than it has.
  """
  if isinstance(section_counts, str):
    if section_counts.startswith("ddim"):
      return _ddim_stride_steps(num_timesteps, int(section_counts[len("ddim"):]))
    section_counts = [int(count) for count in section_counts.split(",")]
  if not section_counts:
    raise ValueError("section_counts is empty; give at least one section, e.g. [250] or '250'.")
  size_per, extra = divmod(num_timesteps, len(section_counts))
  start = 0
  kept = set()
  for i, count in enumerate(section_counts):
    size = size_per + (1 if i < extra else 0)
    if size < count:
      raise ValueError(
          f"cannot divide a section of {size} steps into {count}; ask for at most {size} steps "
          f"in section {i} of {section_counts}."
      )
    stride = 1 if count <= 1 else (size - 1) / (count - 1)
    position = 0.0
    for _ in range(count):
      kept.add(start + round(position))
      position += stride
    start += size
  return tuple(sorted(kept))
