"""Data parallelism without pmap: one ('data',) mesh over every device of every process.

Parameters and optimiser state are replicated, batches are sharded along
their leading axis; `jit` with these shardings lets XLA insert the gradient
all-reduce. On several hosts each process builds its local slice of the
global batch and `global_batch` assembles the global array.
"""
import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

DATA_AXIS = "data"


def make_mesh(devices=None) -> jax.sharding.Mesh:
  """A 1-D `('data',)` mesh over all devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return jax.sharding.Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def batch_sharding(mesh) -> NamedSharding:
  return NamedSharding(mesh, P(DATA_AXIS))


def global_batch(local_batch, mesh):
  """Assembles each process's local batch `[B / num_processes, ...]` into a global sharded array."""
  sharding = batch_sharding(mesh)
  return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, np.asarray(x)),
                      local_batch)


def replicate(tree, mesh):
  """Places a pytree that is identical on every process replicated over the mesh.

  Works on several processes too: each process provides its (identical) copy
  for its own devices. PRNG key leaves keep their key type.
  """
  sharding = replicated(mesh)

  def place(x):
    if isinstance(x, jax.Array) and jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(place(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])

  return jax.tree.map(place, tree)
