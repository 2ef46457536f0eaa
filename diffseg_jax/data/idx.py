"""Reader for the IDX format of MNIST and Fashion-MNIST (``*-idx3-ubyte.gz``, ``*-idx1-ubyte.gz``).

Layout (http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 = uint8), a byte
giving the number of dimensions, one big-endian uint32 per dimension, then the data row-major.
"""

import gzip
import pathlib

import numpy as np

_UBYTE = 0x08


def read_idx(path: str | pathlib.Path) -> np.ndarray:
  """Reads an IDX file, gzipped or not, into a uint8 array of the shape its header gives."""
  path = pathlib.Path(path)
  opener = gzip.open if path.suffix == ".gz" else open
  try:
    with opener(path, "rb") as f:
      data = f.read()
  except (OSError, EOFError) as e:
    raise ValueError(f"Cannot read IDX file {path}: {e}") from e
  if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != _UBYTE:
    raise ValueError(f"{path} is not an unsigned-byte IDX file (header {data[:4]!r}).")
  ndim = data[3]
  header_end = 4 + 4 * ndim
  shape = tuple(int(d) for d in np.frombuffer(data[4:header_end], dtype=">u4"))
  expected = int(np.prod(shape))
  if len(data) - header_end != expected:
    raise ValueError(
        f"{path} is truncated or corrupt: header gives shape {shape} ({expected} bytes), "
        f"found {len(data) - header_end} bytes of data.")
  return np.frombuffer(data, dtype=np.uint8, offset=header_end).reshape(shape)
