"""CPU kernels as XLA custom calls: oneDNN's convolutions and matmuls, a fused GroupNorm.

XLA:CPU (jaxlib 0.10) runs convolutions with Eigen kernels and puts transposes around every
filter gradient, runs the small batched matrix products of attention at 20-50 GFLOP/s where
oneDNN (the library PyTorch's CPU kernels use) reaches 75-120 on 2 AVX2 cores, and spreads a
GroupNorm followed by SiLU over several loops that each read the tensor again
(``benchmarks/README.md``). On the CPU platform, :func:`conv2d` sends float32 NHWC
convolutions with their bias and :func:`matmul` float32 batched matrix products to oneDNN,
and :func:`group_norm` runs GroupNorm, the ADM ResBlock's scale-shift and SiLU as one kernel
(``group_norm.cc``); everything else (other platforms, other dtypes) runs XLA's
(``layers.conv2d`` and ``layers.group_norm_act`` choose).

The kernels (``onednn.cc``, ``group_norm.cc``) are compiled on first use with the system's
C++ compiler (``$CXX``, else ``c++``; with OpenMP, for this machine's instruction set) against
the oneDNN of the ``cpu`` extra (``pip install "diffseg_jax[cpu]"``: the ``onednn-cpu-gomp``
library and its ``onednn-devel-cpu-gomp`` headers), cached under
``$DIFFSEG_CACHE_DIR/onednn`` (default ``~/.cache/diffseg_jax``) and registered as FFI
targets. Without the extra or a compiler, XLA's kernels are used (and the reason logged
once); ``DIFFSEG_ONEDNN=0`` turns the kernels off.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import platform
import shutil
import subprocess

from absl import logging
import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

Padding = tuple[tuple[int, int], tuple[int, int]]

_SOURCES = tuple(pathlib.Path(__file__).with_name(name)
                 for name in ("onednn.cc", "group_norm.cc"))
_FORWARD = "diffseg_onednn_conv_fwd"
_BACKWARD = "diffseg_onednn_conv_bwd"
_MATMUL = "diffseg_onednn_matmul"
_GROUP_NORM_FORWARD = "diffseg_group_norm_fwd"
_GROUP_NORM_BACKWARD = "diffseg_group_norm_bwd"
_SYMBOLS = {_FORWARD: "DiffsegOnednnConvForward", _BACKWARD: "DiffsegOnednnConvBackward",
            _MATMUL: "DiffsegOnednnMatmul", _GROUP_NORM_FORWARD: "DiffsegGroupNormForward",
            _GROUP_NORM_BACKWARD: "DiffsegGroupNormBackward"}
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


def _cpu_features() -> str:
  """The processor's model and feature flags (Linux), or the machine type elsewhere."""
  try:
    lines = pathlib.Path("/proc/cpuinfo").read_text().splitlines()
  except OSError:
    return platform.machine()
  return "\n".join(sorted({line for line in lines if line.startswith(("model name", "flags"))}))


def _compiled_library() -> pathlib.Path:
  """The kernels' shared library, compiled now unless an identical build is cached."""
  compiler = shutil.which(os.environ.get("CXX", "c++"))
  if compiler is None:
    raise _Unavailable("no C++ compiler ($CXX or c++) on the PATH")
  library = _installed_file(*_LIBRARY)
  include = _installed_file(*_HEADERS).parents[2]
  # -march=native: the build is for this machine's instruction set, so the processor's
  # features are part of the cache key (a home folder may be shared by other machines).
  fingerprint = b"\0".join([*(source.read_bytes() for source in _SOURCES),
                            jaxlib.__version__.encode(), str(library).encode(),
                            compiler.encode(), _cpu_features().encode()])
  target = cache_dir() / f"onednn_{hashlib.sha256(fingerprint).hexdigest()[:16]}.so"
  if target.exists():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
  command = [compiler, "-O3", "-march=native", "-fopenmp", "-std=c++17", "-shared", "-fPIC",
             "-w", *map(str, _SOURCES),
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
    logging.info("oneDNN kernels unavailable, using XLA's: %s", e)
    return False
  except OSError as e:  # a cached library that no longer loads
    logging.warning("oneDNN kernels unavailable, using XLA's: %s", e)
    return False
  for target, symbol in _SYMBOLS.items():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, symbol)),
                                platform="cpu")
  return True


def applies(*operands: jax.Array) -> bool:
  """Whether these operands go to this module's kernels: all float32, kernels available, one
  CPU device.

  With several CPU devices in one process (``--xla_force_host_platform_device_count``), XLA
  runs the devices' programs on concurrent threads, and each kernel call would start its own
  OpenMP team on the same cores: with 8 devices on 2 cores, the spinning teams made a sharded
  step miss XLA's 40 s deadline for all devices to reach a collective. XLA's kernels run there.
  """
  return (all(x.dtype == jnp.float32 for x in operands) and available()
          and len(jax.local_devices(backend="cpu")) == 1)


def _attributes(strides: tuple[int, int], padding: Padding) -> dict[str, np.int64]:
  (top, bottom), (left, right) = padding
  values = dict(stride_h=strides[0], stride_w=strides[1], pad_top=top, pad_bottom=bottom,
                pad_left=left, pad_right=right)
  return {name: np.int64(value) for name, value in values.items()}


def _output_shape(x_shape, kernel_shape, strides, padding) -> tuple[int, ...]:
  spatial = [(size + sum(pad) - k) // stride + 1 for size, k, stride, pad
             in zip(x_shape[1:3], kernel_shape[:2], strides, padding)]
  return (x_shape[0], *spatial, kernel_shape[3])


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def _onednn_conv(x, kernel, bias, strides, padding):
  out = jax.ShapeDtypeStruct(_output_shape(x.shape, kernel.shape, strides, padding), x.dtype)
  return jax.ffi.ffi_call(_FORWARD, out)(x, kernel, bias, **_attributes(strides, padding))


def _onednn_conv_fwd(x, kernel, bias, strides, padding):
  return _onednn_conv(x, kernel, bias, strides, padding), (x, kernel)


def _onednn_conv_bwd(strides, padding, residuals, dy):
  x, kernel = residuals
  grads = [jax.ShapeDtypeStruct(shape, x.dtype)
           for shape in (x.shape, kernel.shape, kernel.shape[-1:])]
  return tuple(jax.ffi.ffi_call(_BACKWARD, grads)(x, kernel, dy,
                                                  **_attributes(strides, padding)))


_onednn_conv.defvjp(_onednn_conv_fwd, _onednn_conv_bwd)


def conv2d(x: jax.Array, kernel: jax.Array, bias: jax.Array, *, strides: tuple[int, int],
           padding: Padding) -> jax.Array:
  """An NHWC/HWIO convolution plus a bias by oneDNN's kernels, as one CPU kernel.

  ``jax.lax.conv_general_dilated(x, kernel, strides, padding) + bias`` with dimension
  numbers ``("NHWC", "HWIO", "NHWC")``. Call it where :func:`applies` holds; it
  differentiates in every argument (the bias gradient comes with the filter gradient). Other
  platforms need XLA's version (``layers.conv2d``).

  Args:
    x: float32 ``[B, H, W, C_in]``.
    kernel: float32 ``[KH, KW, C_in, C_out]``.
    bias: float32 ``[C_out]``.
    strides: ``(stride_h, stride_w)``.
    padding: ``((top, bottom), (left, right))``, non-negative.

  Returns:
    ``[B, H_out, W_out, C_out]``, ``H_out = (H + top + bottom - KH) // stride_h + 1``.
  """
  if bias.shape != kernel.shape[-1:]:
    raise ValueError(f"conv2d needs a bias of shape {kernel.shape[-1:]} for a kernel of "
                     f"shape {kernel.shape}, got {bias.shape}")
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  return _onednn_conv(x, kernel, bias, strides, padding)


def _batched_matmul(a, b, transpose_a: bool, transpose_b: bool):
  """``op(a) @ op(b)`` by oneDNN: ``a`` is ``[B, M, K]`` (``[B, K, M]`` if transposed), ``b``
  ``[B, K, N]`` (``[B, N, K]``)."""
  m = a.shape[2] if transpose_a else a.shape[1]
  n = b.shape[1] if transpose_b else b.shape[2]
  out = jax.ShapeDtypeStruct((a.shape[0], m, n), a.dtype)
  return jax.ffi.ffi_call(_MATMUL, out)(a, b, transpose_a=np.int64(transpose_a),
                                        transpose_b=np.int64(transpose_b))


@jax.custom_vjp
def _onednn_matmul(a, b):
  return _batched_matmul(a, b, False, False)


def _onednn_matmul_fwd(a, b):
  return _onednn_matmul(a, b), (a, b)


def _onednn_matmul_bwd(residuals, g):
  a, b = residuals
  return _batched_matmul(g, b, False, True), _batched_matmul(a, g, True, False)


_onednn_matmul.defvjp(_onednn_matmul_fwd, _onednn_matmul_bwd)


def matmul(a: jax.Array, b: jax.Array) -> jax.Array:
  """``jnp.matmul(a, b)`` for operands with the same batch axes.

  Float32 products compiled for the CPU run oneDNN's kernel when :func:`available` and the
  process has one CPU device; the rest run XLA's. Both differentiate; both give the same
  values up to float32 rounding.

  Args:
    a: ``[..., M, K]``.
    b: ``[..., K, N]``, with the batch axes ``...`` of ``a``.

  Returns:
    ``[..., M, N]``.
  """
  if a.ndim < 2 or a.shape[:-2] != b.shape[:-2] or a.shape[-1] != b.shape[-2]:
    raise ValueError(f"matmul needs [..., M, K] and [..., K, N] with the same batch axes, got "
                     f"{a.shape} and {b.shape}")
  if not applies(a, b):
    return jnp.matmul(a, b)
  batch = a.shape[:-2]

  def onednn(a, b):
    flat = _onednn_matmul(a.reshape(-1, *a.shape[-2:]), b.reshape(-1, *b.shape[-2:]))
    return flat.reshape(*batch, a.shape[-2], b.shape[-1])

  return jax.lax.platform_dependent(a, b, cpu=onednn, default=jnp.matmul)


def _group_norm_attributes(num_groups: int, epsilon: float, silu: bool) -> dict:
  return dict(num_groups=np.int64(num_groups), epsilon=np.float32(epsilon),
              silu=np.int64(silu))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6, 7))
def _fused_group_norm(x, gamma, beta, scale, shift, num_groups, epsilon, silu):
  return _fused_group_norm_fwd(x, gamma, beta, scale, shift, num_groups, epsilon, silu)[0]


def _fused_group_norm_fwd(x, gamma, beta, scale, shift, num_groups, epsilon, silu):
  stats = jax.ShapeDtypeStruct((x.shape[0], num_groups), x.dtype)
  y, mean, rstd = jax.ffi.ffi_call(
      _GROUP_NORM_FORWARD, (jax.ShapeDtypeStruct(x.shape, x.dtype), stats, stats))(
          x, gamma, beta, scale, shift, **_group_norm_attributes(num_groups, epsilon, silu))
  return y, (x, gamma, beta, scale, shift, mean, rstd)


def _fused_group_norm_bwd(num_groups, epsilon, silu, residuals, dy):
  x, gamma, beta, scale, shift, _, _ = residuals
  shapes = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (x, gamma, beta, scale, shift)]
  return tuple(jax.ffi.ffi_call(_GROUP_NORM_BACKWARD, shapes)(
      *residuals, dy, **_group_norm_attributes(num_groups, epsilon, silu)))


_fused_group_norm.defvjp(_fused_group_norm_fwd, _fused_group_norm_bwd)


def group_norm(x: jax.Array, gamma: jax.Array, beta: jax.Array, scale: jax.Array,
               shift: jax.Array, *, num_groups: int, epsilon: float, silu: bool) -> jax.Array:
  """GroupNorm, a per-sample scale-shift and optionally SiLU, as one CPU kernel.

  ``u = (normalised x * gamma + beta) * (1 + scale) + shift``, and ``silu(u)`` if ``silu``;
  the statistics of each sample's channel group are over its positions and channels, with a
  biased variance (as ``torch.nn.GroupNorm``). Call it where :func:`applies` holds; it
  differentiates in every argument. Other platforms need XLA's version
  (``layers.group_norm_act``).

  Args:
    x: float32 ``[N, P, C]``, P positions, channel ``c`` in group ``c // (C / num_groups)``.
    gamma, beta: float32 ``[C]``, the GroupNorm's affine parameters.
    scale, shift: float32 ``[N, C]`` (zeros for a plain GroupNorm).
    num_groups: the number of channel groups; must divide C.
    epsilon: added to the variance.
    silu: whether SiLU follows.

  Returns:
    float32 ``[N, P, C]``.
  """
  if x.ndim != 3 or x.shape[-1] % num_groups:
    raise ValueError(f"group_norm needs x [N, P, C] with C divisible by num_groups="
                     f"{num_groups}, got {x.shape}")
  return _fused_group_norm(x, gamma, beta, scale, shift, num_groups, float(epsilon),
                           bool(silu))
