"""Process-wide settings for XLA:CPU, applied before JAX creates its backends.

XLA:CPU (jaxlib 0.10) hands convolutions and matrix products to YNNPACK by default. For the
ADM U-Net on CPU its own Eigen kernels are 1.5x faster on the convolution shapes that
dominate training and sampling, forward and backward (benchmarks/README.md), so
:func:`configure_xla_cpu` turns YNNPACK off. Flags only take effect if set before the first
JAX computation, and XLA aborts on flags it does not know, so the setting is added only for
the jaxlib versions it was measured on and never overrides a user's own ``XLA_FLAGS``.

XLA:CPU also allocates each execution's buffers afresh (1.2 GB for the 6.5M U-Net's train
step at batch 32), and glibc serves such sizes with new ``mmap``s: every step then takes
300,000 page faults (0.6 s of system time). With glibc's ``glibc.malloc.hugetlb=1`` tunable,
malloc asks for transparent huge pages and the faults drop to about 2,000; the train step gets
10-15% faster and elementwise fusions up to 2x (benchmarks/README.md). glibc reads tunables at
start-up only, so :func:`reexec_with_huge_pages` restarts the command with it set.
"""

import os
import pathlib
import re
import sys

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


_HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
_THP_MODE_FILE = pathlib.Path("/sys/kernel/mm/transparent_hugepage/enabled")


def _transparent_huge_pages_mode() -> str | None:
  """The kernel's THP mode (``always``, ``madvise`` or ``never``), or None if unknown."""
  try:
    match = re.search(r"\[(\w+)\]", _THP_MODE_FILE.read_text())
  except OSError:
    return None
  return match.group(1) if match else None


def _glibc_version() -> tuple[int, ...]:
  """``(2, 36)`` for glibc 2.36; ``()`` for another C library."""
  try:
    name, version = os.confstr("CS_GNU_LIBC_VERSION").split()
  except (AttributeError, OSError, ValueError):
    return ()
  return tuple(int(part) for part in version.split(".")[:2]) if name == "glibc" else ()


def reexec_with_huge_pages() -> None:
  """Restarts this command with glibc's huge-page tunable where it helps; else returns.

  Call it first thing in a ``__main__`` (``diffseg_jax.main`` and ``benchmarks/run.py`` do).
  It returns without doing anything unless glibc >= 2.35 runs on a kernel whose transparent
  huge pages are in ``madvise`` mode (with ``always`` there is nothing to gain, with ``never``
  nothing to get), ``GLIBC_TUNABLES`` does not already mention the setting, and
  ``DIFFSEG_HUGE_PAGES`` is not ``0``. The restarted process sees the setting, so it runs once.
  """
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  if (os.environ.get("DIFFSEG_HUGE_PAGES") == "0" or "glibc.malloc.hugetlb" in tunables
      or _transparent_huge_pages_mode() != "madvise" or _glibc_version() < (2, 35)):
    return
  os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, _HUGE_PAGES_TUNABLE]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def huge_pages_enabled() -> bool:
  """Whether this process started with glibc's huge-page tunable."""
  return _HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")
