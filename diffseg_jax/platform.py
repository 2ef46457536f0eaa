"""Process-wide XLA settings, applied before JAX creates its backends.

XLA:CPU (jaxlib 0.10) hands convolutions and matrix products to YNNPACK by default. For the
ADM U-Net on CPU its own Eigen kernels are 1.5x faster on the convolution shapes that
dominate training and sampling, forward and backward (benchmarks/README.md), so
:func:`configure_xla_cpu` turns YNNPACK off. Flags only take effect if set before the first
JAX computation, and XLA aborts on flags it does not know, so the setting is added only for
the jaxlib versions it was measured on and never overrides a user's own ``XLA_FLAGS``.
"""

import os

import jaxlib

_YNN_FLAG = "--xla_cpu_experimental_ynn_fusion_type"
_MEASURED_JAXLIB = ("0.10.",)


def configure_xla_cpu() -> bool:
  """Disables XLA:CPU's YNNPACK fusions for this process; returns whether it did.

  Call it before any JAX computation (``diffseg_jax.main`` does). It does nothing on jaxlib
  versions it was not measured on, or when ``XLA_FLAGS`` already mentions the setting.
  """
  flags = os.environ.get("XLA_FLAGS", "")
  if _YNN_FLAG in flags or not jaxlib.__version__.startswith(_MEASURED_JAXLIB):
    return False
  os.environ["XLA_FLAGS"] = f"{flags} {_YNN_FLAG}=".strip()
  return True
