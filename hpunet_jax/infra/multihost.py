"""What the processes of a multi-host job tell each other: one flag, all flags, a barrier.

Each is a no-op (or the local value) with one process, so callers need no
`process_count() == 1` branch of their own.
"""
import jax
import numpy as np


def _utils():
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return multihost_utils


def broadcast_flag(flag: bool) -> bool:
  """Process 0's `flag`, on every process."""
  if jax.process_count() == 1:
    return bool(flag)
  return bool(_utils().broadcast_one_to_all(np.asarray(flag, np.int32)))


def gather_flags(flag: bool) -> np.ndarray:
  """Every process's `flag`, in process order: bool `[process_count]`."""
  if jax.process_count() == 1:
    return np.asarray([bool(flag)])
  return np.asarray(_utils().process_allgather(np.asarray(bool(flag)))).reshape(-1)


def sync(name: str):
  """Waits until every process has reached the barrier `name`."""
  if jax.process_count() > 1:
    _utils().sync_global_devices(name)
