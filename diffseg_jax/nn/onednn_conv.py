"""2-D convolutions on CPU by oneDNN (the kernels PyTorch uses), as XLA custom calls.

XLA:CPU (jaxlib 0.10) runs convolutions with Eigen kernels, and puts transposes around every
filter gradient. Over the 3x3 convolutions of the 6.5M-parameter ADM U-Net's train step
(forward and both gradients, batch 32, 2 cores) that is 1.44 s, against 1.16 s for oneDNN on
the same NHWC tensors (``benchmarks/README.md``). :func:`conv2d` sends float32 convolutions
on the CPU platform to oneDNN, and everything else (other platforms, other dtypes) to
``jax.lax.conv_general_dilated``.

The kernels (``onednn_conv.cc``) are compiled on first use with the system's C++ compiler
(``$CXX``, else ``c++``) against the oneDNN of the ``cpu`` extra (``pip install
"diffseg_jax[cpu]"``: the ``onednn-cpu-gomp`` library and its ``onednn-devel-cpu-gomp``
headers), cached under ``$DIFFSEG_CACHE_DIR/onednn`` (default ``~/.cache/diffseg_jax``) and
registered as FFI targets. Without the extra or a compiler, XLA's convolutions are used (and
the reason logged once); ``DIFFSEG_ONEDNN=0`` turns the kernels off.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess

from absl import logging
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

Padding = tuple[tuple[int, int], tuple[int, int]]

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_FORWARD = "diffseg_onednn_conv_fwd"
_BACKWARD = "diffseg_onednn_conv_bwd"
_SYMBOLS = {_FORWARD: "DiffsegOnednnConvForward", _BACKWARD: "DiffsegOnednnConvBackward"}
_LIBRARY = ("onednn-cpu-gomp", "libdnnl.so.3")
_HEADERS = ("onednn-devel-cpu-gomp", "oneapi/dnnl/dnnl.hpp")


class _Unavailable(Exception):
  """The kernels cannot be built here; the message says why."""


def _installed_file(distribution: str, suffix: str) -> pathlib.Path:
  """The file of an installed distribution whose recorded path ends with ``suffix``."""
  try:
    dist = importlib.metadata.distribution(distribution)
  except importlib.metadata.PackageNotFoundError:
    raise _Unavailable(f"{distribution} is not installed (pip install 'diffseg_jax[cpu]')")
  for record in dist.files or ():
    if str(record).endswith(suffix):
      return pathlib.Path(dist.locate_file(record)).resolve()
  raise _Unavailable(f"{distribution} has no file ending in {suffix}")


def cache_dir() -> pathlib.Path:
  """Where compiled kernels are kept: ``$DIFFSEG_CACHE_DIR/onednn``."""
  root = os.environ.get("DIFFSEG_CACHE_DIR") or pathlib.Path.home() / ".cache" / "diffseg_jax"
  return pathlib.Path(root) / "onednn"


def _compiled_library() -> pathlib.Path:
  """The kernels' shared library, compiled now unless an identical build is cached."""
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    raise _Unavailable("no C++ compiler ($CXX or c++) on the PATH")
  library = _installed_file(*_LIBRARY)
  include = _installed_file(*_HEADERS).parents[2]
  fingerprint = b"\0".join([_SOURCE.read_bytes(), jaxlib.__version__.encode(),
                            str(library).encode(), compiler.encode()])
  target = cache_dir() / f"onednn_conv_{hashlib.sha256(fingerprint).hexdigest()[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
  command = [compiler, "-O2", "-std=c++17", "-shared", "-fPIC", "-w", str(_SOURCE),
             f"-I{jax.ffi.include_dir()}", f"-I{include}", str(library),
             f"-Wl,-rpath,{library.parent}", "-o", str(partial)]
  result = subprocess.run(command, capture_output=True, text=True)
  if result.returncode != 0:
    partial.unlink(missing_ok=True)
    raise _Unavailable(f"compiling failed: {' '.join(command)}\n{result.stderr[-2000:]}")
  os.replace(partial, target)  # atomic: concurrent processes never load a partial file
  return target


@functools.cache
def available() -> bool:
  """Whether the oneDNN kernels are built and registered (building them on the first call)."""
  if os.environ.get("DIFFSEG_ONEDNN") == "0":
    return False
  try:
    library = ctypes.CDLL(str(_compiled_library()))
  except _Unavailable as e:
    logging.info("oneDNN convolutions unavailable, using XLA's: %s", e)
    return False
  except OSError as e:  # a cached library that no longer loads
    logging.warning("oneDNN convolutions unavailable, using XLA's: %s", e)
    return False
  for target, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return True


def _attributes(strides: tuple[int, int], padding: Padding) -> dict[str, np.int64]:
  (top, bottom), (left, right) = padding
  values = dict(stride_h=strides[0], stride_w=strides[1], pad_top=top, pad_bottom=bottom,
                pad_left=left, pad_right=right)
  return {name: np.int64(value) for name, value in values.items()}


def _output_shape(x_shape, kernel_shape, strides, padding) -> tuple[int, ...]:
  spatial = [(size + sum(pad) - k) // stride + 1 for size, k, stride, pad
             in zip(x_shape[1:3], kernel_shape[:2], strides, padding)]
  return (x_shape[0], *spatial, kernel_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _onednn_conv(x, kernel, strides, padding):
  out = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, padding), x.dtype)
  return jax.ffi.ffi_call(_FORWARD, out)(x, kernel, **_attributes(strides, padding))


def _onednn_conv_fwd(x, kernel, strides, padding):
  return _onednn_conv(x, kernel, strides, padding), (x, kernel)


def _onednn_conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  grads = (jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(kernel.shape, x.dtype))
  return jax.ffi.ffi_call(_BACKWARD, grads)(x, kernel, dy, **_attributes(strides, padding))


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, strides: tuple[int, int],
           padding: Padding) -> jax.Array:
  """``jax.lax.conv_general_dilated(x, kernel, strides, padding)`` for NHWC and HWIO.

  Float32 convolutions compiled for the CPU run oneDNN's kernels when :func:`available`;
  the rest run XLA's. Both differentiate; both give the same values up to float32 rounding.

  Args:
    x: ``[B, H, W, C_in]``.
    kernel: ``[KH, KW, C_in, C_out]``.
    strides: ``(stride_h, stride_w)``.
    padding: ``((top, bottom), (left, right))``, non-negative.

  Returns:
    ``[B, H_out, W_out, C_out]``, ``H_out = (H + top + bottom - KH) // stride_h + 1``.
  """
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)

  def xla(x, kernel):
    return jax.lax.conv_general_dilated(x, kernel, strides, padding,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"))

  if x.dtype != jnp.float32 or kernel.dtype != jnp.float32 or not available():
    return xla(x, kernel)
  return jax.lax.platform_dependent(
      x, kernel, cpu=lambda x, kernel: _onednn_conv(x, kernel, strides, padding), default=xla)
