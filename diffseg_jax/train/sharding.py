"""The device mesh and how arrays are laid out on it: one place for all of it.

Data parallelism over every device of every host: batches are split along a single mesh axis
``"data"``, parameters and optimiser state are replicated. The same code runs on one CPU, on
8 forced host devices and on several processes under ``jax.distributed``.
"""

import jax
import numpy as np
from jax.sharding import Mesh
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> Mesh:
  """A 1-D mesh over ``devices`` (default: every device of every process)."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
  """A whole copy on every device of ``mesh`` (parameters, optimiser state, keys)."""
  return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
  """Leading (batch) axis split over the data axis, the other axes whole."""
  return NamedSharding(mesh, P(DATA_AXIS))


def check_batch_size(global_batch_size: int, mesh: Mesh) -> None:
  """Raises ``ValueError`` unless the global batch splits evenly over ``mesh``'s devices."""
  if global_batch_size % mesh.size:
    raise ValueError(
        f"The global batch size {global_batch_size} must be divisible by the number of devices "
        f"({mesh.size}); pick a multiple of {mesh.size}.")


def put_batch(local_batch, mesh: Mesh):
  """Assembles each host's slice of a batch into global arrays sharded over ``mesh``.

  Args:
    local_batch: pytree of numpy arrays [B_local, ...], this process's consecutive slice of the
      global batch (process ``i`` holds rows ``i*B_local .. (i+1)*B_local``).
    mesh: the device mesh.

  Returns:
    The same pytree of ``jax.Array`` [B_local * process_count, ...] split along the data axis.
  """
  sharding = batch_sharded(mesh)
  return jax.tree.map(
      lambda x: jax.make_array_from_process_local_data(sharding, x), local_batch)
