"""Process-wide settings for XLA:CPU, applied before JAX creates its backends.

XLA:CPU (jaxlib 0.10) hands convolutions and matrix products to YNNPACK by default. For the
ADM U-Net on CPU its own Eigen kernels are 1.5x faster on the convolution shapes that
dominate training and sampling, forward and backward (benchmarks/README.md), so
:func:`configure_xla_cpu` turns YNNPACK off. Flags only take effect if set before the first
JAX computation, and XLA aborts on flags it does not know, so the setting is added only for
the jaxlib versions it was measured on and never overrides a user's own ``XLA_FLAGS``.

XLA:CPU also allocates each execution's buffers afresh (one 1.15 GB block for the 6.5M U-Net's
train step at batch 32) and frees them when it ends. glibc serves a block that size with a
new ``mmap`` and returns it with ``munmap``, so every step page-faults its memory in again:
300,000 faults, 0.6 s of system time per step. :func:`reexec_with_malloc_tunables` restarts
the command with glibc tunables that stop this (``benchmarks/README.md``):

* ``glibc.malloc.hugetlb=1``: malloc asks for transparent huge pages (faults 300,000 -> 2,000
  per step, steps 10-15% faster);
* ``mmap_max=0``, ``arena_max=1`` and a 1 TiB ``trim_threshold``: every block comes from the
  main heap and freed memory stays in it for the next step. Threads other than the main one
  would otherwise allocate from arenas of at most 64 MB, which send larger blocks to ``mmap``.
  Memory given back to the kernel is not only faulted in again: a virtual machine with Linux's
  free page reporting (some cloud and Firecracker guests) hands it to the host after 2 s, and
  taking it back cost a train step 1-2 s of system time whenever the step followed a pause of
  2 s or more (a sample grid, a checkpoint, another program's turn).

The process then keeps its peak heap for its lifetime, as accelerator runtimes keep their
memory pools. glibc reads tunables at start-up only, hence the restart.
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
# Every block from the main heap, never returned to the kernel (see the module docstring).
_KEEP_MEMORY_TUNABLES = ("glibc.malloc.mmap_max=0", "glibc.malloc.arena_max=1",
                         f"glibc.malloc.trim_threshold={2**40}")
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


def _wanted_tunables() -> list[str]:
  """The tunables worth setting here: huge pages where they help, and keeping freed memory."""
  glibc = _glibc_version()
  wanted = []
  # With THP mode `always` there is nothing to gain, with `never` nothing to get.
  if glibc >= (2, 35) and _transparent_huge_pages_mode() == "madvise":
    wanted.append(_HUGE_PAGES_TUNABLE)
  if glibc >= (2, 26):  # the first glibc with tunables
    wanted.extend(_KEEP_MEMORY_TUNABLES)
  return wanted


def reexec_with_malloc_tunables() -> None:
  """Restarts this command with glibc's malloc tunables for XLA:CPU; else returns.

  Call it first thing in a ``__main__`` (``diffseg_jax.main``, ``benchmarks/run.py`` and the
  experiment scripts do). It adds to ``GLIBC_TUNABLES`` the settings of the module docstring
  that the environment does not set yet: ``glibc.malloc.hugetlb=1`` with glibc >= 2.35 on a
  kernel whose transparent huge pages are in ``madvise`` mode, and the three that keep freed
  memory with glibc >= 2.26. It returns without doing anything when there is nothing to add
  or ``DIFFSEG_MALLOC_TUNABLES`` is ``0``. The restarted process sees the settings, so it runs
  once.
  """
  if os.environ.get("DIFFSEG_MALLOC_TUNABLES") == "0":
    return
  tunables = os.environ.get("GLIBC_TUNABLES", "")
  present = {item.split("=")[0] for item in tunables.split(":")}
  missing = [t for t in _wanted_tunables() if t.split("=")[0] not in present]
  if not missing:
    return
  os.environ["GLIBC_TUNABLES"] = ":".join(filter(None, [tunables, *missing]))
  sys.stdout.flush()
  sys.stderr.flush()
  os.execv(sys.executable, sys.orig_argv)


def huge_pages_enabled() -> bool:
  """Whether this process started with glibc's huge-page tunable."""
  return _HUGE_PAGES_TUNABLE in os.environ.get("GLIBC_TUNABLES", "")


def freed_memory_kept() -> bool:
  """Whether this process started with the tunables that keep freed memory in the heap."""
  present = os.environ.get("GLIBC_TUNABLES", "").split(":")
  return all(t in present for t in _KEEP_MEMORY_TUNABLES)
