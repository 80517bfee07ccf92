"""Checkpoints of the train state with orbax: save, find the latest, restore.

One checkpoint per step in `<workdir>/checkpoints/<step>/`, holding two items:

* `state`: the train state pytree (params, optimiser state, GECO state, RNG,
  step), written with `StandardSave` (OCDBT/tensorstore; every process writes
  its own shards, orbax coordinates the processes);
* `extra`: a small JSON dict (data-iterator position, config hash, ...),
  written by the primary process only (orbax handles that).

Orbax writes each step into a temporary directory and renames it only once
every item is complete, so an interrupted save never looks like a checkpoint:
`latest_step` only sees finished steps, and leftover temporary directories are
deleted when the next `Checkpointer` opens the directory.

PRNG keys: typed key arrays (`jax.random.key`) are stored as their raw key data
(`jax.random.key_data`, uint32) and rebuilt from the restore target, so a
checkpoint does not depend on which key kind the caller uses, and a state saved
with raw `jax.random.PRNGKey` keys restores into a target with typed keys (of
the same implementation) and the other way round.

Example:

  with checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")) as ckpt:
    if ckpt.latest_step() is not None:
      state, extra = ckpt.restore(state)  # `state` from `init`: the target.
    ...
    ckpt.save(step, state, extra={"data_position": position})
"""
import os
from typing import Any, Optional

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

_STATE = "state"
_EXTRA = "extra"


def _is_typed_key(x):
  return jax.dtypes.issubdtype(getattr(x, "dtype", None), jax.dtypes.prng_key)


def _to_key_data(tree):
  """Replaces typed PRNG key leaves by their uint32 key data."""
  return jax.tree.map(lambda x: jax.random.key_data(x) if _is_typed_key(x) else x, tree)


def _abstract_leaf(x):
  """What orbax should restore for target leaf `x` (shape, dtype, sharding).

  Returns `(abstract, key_impl)`: `key_impl` is the PRNG implementation to wrap
  the restored key data with, or None for ordinary arrays.
  """
  if _is_typed_key(x):
    impls = []
    def key_data(key):
      # Traced, so that abstract targets (ShapeDtypeStructs) work too.
      impls.append(jax.random.key_impl(key))
      return jax.random.key_data(key)
    data = jax.eval_shape(key_data, x)
    impl = impls[0]
    # A NamedSharding of the key array also fits its key data: the trailing
    # key-data dimension is simply not partitioned.
    sharding = getattr(x, "sharding", None)
    return jax.ShapeDtypeStruct(data.shape, data.dtype, sharding=sharding), impl
  if isinstance(x, jax.Array):
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), None
  # numpy arrays, Python scalars and ShapeDtypeStructs are understood by orbax.
  return x, None


def _path_str(path):
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


def _leaf_shapes(tree):
  """{path string: shape} for the leaves of `tree` (None leaves are skipped)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {_path_str(path): tuple(getattr(leaf, "shape", np.shape(leaf)))
          for path, leaf in leaves}


class Checkpointer:
  """Saves and restores `(state, extra)` per step under one directory.

  Every process must call `save` and `restore` (orbax synchronises them);
  `latest_step` reads the directory on every process.

  Args:
    directory: where the step directories go, conventionally
      `<workdir>/checkpoints`; created if missing.
    max_to_keep: number of most recent checkpoints to keep (None: all).
    async_save: write in a background thread after copying the arrays to host
      memory; `save` then returns as soon as the copy is done, so the caller may
      donate or overwrite `state` right away.
  """

  def __init__(self, directory, *, max_to_keep: Optional[int] = 3,
               async_save: bool = True):
    self._directory = os.path.abspath(os.fspath(directory))
    options = ocp.CheckpointManagerOptions(
        preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
        enable_async_checkpointing=async_save,
        # Removes temporary directories left by a save that was interrupted.
        cleanup_tmp_directories=True,
        create=True)
    self._manager = ocp.CheckpointManager(
        self._directory, options=options,
        # Named handlers let a fresh manager read metadata and restore without
        # having saved first (e.g. when resuming).
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _EXTRA: ocp.JsonCheckpointHandler()})

  @property
  def directory(self) -> str:
    return self._directory

  def latest_step(self) -> Optional[int]:
    """The step of the newest complete checkpoint, or None if there is none."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    """Steps of all complete (or, in this process, in-flight) checkpoints."""
    return sorted(self._manager.all_steps())

  def save(self, step: int, state: Any, extra: Optional[dict] = None, *,
           wait: bool = False) -> bool:
    """Saves `state` (a pytree of arrays) and `extra` (a JSON dict) at `step`.

    Args:
      step: the training step; becomes the directory name.
      state: pytree of `jax.Array`s / numpy arrays (typed PRNG keys allowed).
      extra: JSON-serialisable dict, e.g. the data iterator's position.
      wait: block until the checkpoint is completely written (e.g. before exit).

    Returns:
      True if a checkpoint was written; False if `step` is not newer than the
      latest checkpoint (e.g. the final save right after a resume), which is
      logged and skipped.
    """
    step = int(step)
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      logging.warning("Not saving step %d in %s: a checkpoint at step %d exists.",
                      step, self._directory, latest)
      return False
    saved = self._manager.save(
        step,
        args=ocp.args.Composite(**{
            _STATE: ocp.args.StandardSave(_to_key_data(state)),
            _EXTRA: ocp.args.JsonSave(dict(extra or {})),
        }))
    if wait:
      self._manager.wait_until_finished()
    return saved

  def restore(self, target: Any, step: Optional[int] = None) -> tuple[Any, dict]:
    """Restores the state saved at `step` (None: the latest) into `target`'s layout.

    Args:
      target: pytree with the structure of the saved state. Each `jax.Array`
        leaf (or `jax.ShapeDtypeStruct` with a sharding) gives the shape, dtype
        and sharding of the restored array, so restored arrays land on the
        caller's mesh; typed PRNG key leaves come back as typed keys. Numpy
        leaves come back as numpy arrays.
      step: which checkpoint; None restores the latest.

    Returns:
      `(state, extra)`: `state` has `target`'s structure; `extra` is the dict
      passed to `save`.

    Raises:
      FileNotFoundError: no (such) checkpoint in the directory.
      ValueError: the checkpoint does not match `target`'s structure or shapes.
    """
    # A checkpoint this process is still writing must be complete before it is read.
    self._manager.wait_until_finished()
    steps = self.all_steps()
    if step is None:
      if not steps:
        raise FileNotFoundError(f"No checkpoint to restore in {self._directory}.")
      step = steps[-1]
    elif int(step) not in steps:
      raise FileNotFoundError(
          f"No checkpoint for step {step} in {self._directory}; "
          f"available steps: {steps or 'none'}.")
    step = int(step)

    leaves, treedef = jax.tree.flatten(target)
    abstract_and_impls = [_abstract_leaf(x) for x in leaves]
    abstract = jax.tree.unflatten(treedef, [a for a, _ in abstract_and_impls])
    self._check_matches(step, abstract)
    try:
      restored = self._manager.restore(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardRestore(abstract),
              _EXTRA: ocp.args.JsonRestore(),
          }))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"Cannot restore step {step} from {self._directory} into the given "
          f"target: {e}") from e
    restored_leaves = jax.tree.leaves(restored[_STATE])
    if len(restored_leaves) != len(leaves):
      raise ValueError(
          f"Checkpoint step {step} in {self._directory} has {len(restored_leaves)} "
          f"arrays, the target has {len(leaves)}.")
    state_leaves = [
        jax.random.wrap_key_data(x, impl=impl) if impl is not None else x
        for x, (_, impl) in zip(restored_leaves, abstract_and_impls)]
    return jax.tree.unflatten(treedef, state_leaves), dict(restored[_EXTRA] or {})

  def _check_matches(self, step, abstract):
    """Raises a ValueError listing the leaves that differ from the checkpoint."""
    try:
      metadata = self._manager.item_metadata(step)[_STATE]
      stored = _leaf_shapes(getattr(metadata, "tree", metadata))
    except Exception:  # pylint: disable=broad-except
      stored = None
    if not stored:
      # Metadata layouts vary between orbax versions; orbax's own checks during
      # `restore` still apply, this is only for a clearer message.
      return
    wanted = _leaf_shapes(abstract)
    missing = sorted(set(wanted) - set(stored))
    unexpected = sorted(set(stored) - set(wanted))
    shapes = sorted(f"{k}: checkpoint {stored[k]}, target {wanted[k]}"
                    for k in set(wanted) & set(stored) if stored[k] != wanted[k])
    if not (missing or unexpected or shapes):
      return
    lines = [f"Checkpoint step {step} in {self._directory} does not match the "
             "restore target:"]
    for title, items in (("in the target but not in the checkpoint", missing),
                         ("in the checkpoint but not in the target", unexpected),
                         ("shape differs", shapes)):
      if items:
        shown = ", ".join(items[:10]) + (" ..." if len(items) > 10 else "")
        lines.append(f"  {title} ({len(items)}): {shown}")
    raise ValueError("\n".join(lines))

  def wait_until_finished(self):
    """Blocks until the in-flight save (if any) is complete."""
    self._manager.wait_until_finished()

  def close(self):
    """Waits for in-flight saves and releases orbax's threads."""
    self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
