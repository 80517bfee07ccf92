"""The integrity layer of the checkpoints: a CRC-32 per array, stored and verified.

Orbax stores no checksum of the saved values (a flipped byte in a data file
restores silently), so `Checkpointer.save` stores `state_checksums(state)` in
the checkpoint's JSON item and every restore recomputes them with `verify`.
Checkpoints written before checksums existed restore unverified (logged).
"""
import zlib

from absl import logging
import jax
import numpy as np


class CorruptCheckpointError(ValueError):
  """A checkpoint cannot be read, or its arrays differ from their checksums."""


def is_typed_key(x):
  return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def to_key_data(tree):
  """Replaces typed PRNG key leaves by their uint32 key data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if is_typed_key(x) else x, tree)


def path_str(path):
  """`jax.tree_util` key path -> 'opt_state.0.mu.w' (orbax's naming)."""
  parts = []
  for key in path:
    for attr in ("key", "name", "idx"):
      if hasattr(key, attr):
        parts.append(str(getattr(key, attr)))
        break
    else:
      parts.append(str(key))
  return ".".join(parts)


def host_value(x):
  """A host copy of leaf `x` to checksum, or None where this process cannot see all of it."""
  if isinstance(x, jax.Array):
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    if x.is_fully_addressable:
      return np.asarray(x)
    return None   # sharded over processes: orbax's own checks are all there is
  return np.asarray(x)


def state_checksums(tree) -> dict:
  """{leaf path: CRC-32 of dtype, shape and bytes} for the arrays of `tree`."""
  sums = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(to_key_data(tree))[0]:
    value = host_value(leaf)
    if value is None:
      continue
    value = np.ascontiguousarray(value)
    header = f"{value.dtype.str}{value.shape}".encode()
    sums[path_str(path)] = f"{zlib.crc32(value.tobytes(), zlib.crc32(header)):08x}"
  return sums


def verify(restored, expected, what):
  """Raises CorruptCheckpointError if the arrays of `restored` differ from `expected`.

  `expected` is the `state_checksums` stored at save time (None: the
  checkpoint predates checksums, logged and accepted); `what` names the
  checkpoint in the message, e.g. 'checkpoint step 6 in DIR'.
  """
  if expected is None:
    logging.info("%s has no checksums (written before they existed); restored unverified.", what)
    return
  actual = state_checksums(restored)
  differ = sorted(k for k in expected if k in actual and actual[k] != expected[k])
  missing = sorted(set(expected) - set(actual))
  if differ or missing:
    names = differ + missing
    shown = ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")
    raise CorruptCheckpointError(
        f"{what} is corrupt: {len(names)} of {len(expected)} arrays differ from their "
        f"checksums ({shown})")
