"""Checkpoints of the train state with orbax: save, find the latest, restore, fall back.

One checkpoint per step in `<workdir>/checkpoints/<step>/`, holding two items:
`state`, the train state pytree (`StandardSave`: every process writes its
own shards, orbax coordinates them), and `extra`, a small JSON dict (the
data iterator's position and the arrays' checksums).

The contract (what it means for a killed run: docs/fault_tolerance.md):

* an interrupted save never looks like a checkpoint (orbax's temporary
  directory and rename); a writing `Checkpointer` removes leftovers;
* `restore` verifies every array against its CRC-32 (`integrity`) and raises
  `CorruptCheckpointError` naming the step; `restore_newest_valid` and
  `restore_subtree` fall back to the newest step that verifies and delete
  nothing; `set_aside` moves a bad step to `<directory>.corrupt/`;
* a failed asynchronous save raises a one-line `CheckpointSaveError` naming
  the step at the next `check_for_errors`, `save`, `wait_until_finished` or
  `close`, and its temporary files are removed;
* `read_only=True` (orbax's read-only mode) creates, saves and deletes
  nothing, and leaves a running job's temporary directories alone.

PRNG keys: typed key arrays are stored as their raw key data (uint32) and
rebuilt from the restore target, so raw `PRNGKey` and typed-key states
restore into each other. (orbax 0.12 saves typed keys itself, but the
checkpoints written so far hold key data, which must stay readable.)
"""
import os
import re
import time
from typing import Any, NamedTuple, Optional

from absl import logging
from etils import epath
import jax
import numpy as np
import orbax.checkpoint as ocp

from hpunet_jax.infra import files, integrity
from hpunet_jax.infra.integrity import CorruptCheckpointError

_STATE = "state"
_EXTRA = "extra"
_CHECKSUMS = "_checksums"   # reserved key of the `extra` item
_TMP_MARKER = ".orbax-checkpoint-tmp"


class CheckpointSaveError(OSError):
  """Writing a checkpoint failed (e.g. the disk is full)."""


class Restored(NamedTuple):
  """What `restore_newest_valid` found: the step, its state and extra, and the
  newer steps that failed verification as `(step, reason)`."""
  step: int
  state: Any
  extra: dict
  bad_steps: list


def _first_line(error) -> str:
  """`error` as one readable line: tensorstore's specs dropped, the cause kept.

  Tensorstore errors run to kilobytes of JSON spec; the OS error (e.g. "No
  space left on device") comes last, so a long line keeps its head and tail.
  """
  text = re.sub(r"\s*\[tensorstore_spec(\[\d+\])?='.*?'\]", "", str(error), flags=re.S)
  lines = text.strip().splitlines()
  line = lines[0] if lines else type(error).__name__
  return line if len(line) <= 600 else f"{line[:250]} ... {line[-300:]}"


def _abstract_leaf(x):
  """What orbax should restore for target leaf `x` (shape, dtype, sharding).

  Returns `(abstract, key_impl)`: `key_impl` is the PRNG implementation to wrap
  the restored key data with, or None for ordinary arrays.
  """
  if integrity.is_typed_key(x):
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


def _leaf_shapes(tree):
  """{path string: shape} for the leaves of `tree` (None leaves are skipped)."""
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  return {integrity.path_str(path): tuple(getattr(leaf, "shape", np.shape(leaf)))
          for path, leaf in leaves}


class Checkpointer:
  """Saves and restores `(state, extra)` per step under one directory.

  Every process must call `save` and `restore` (orbax synchronises them);
  `latest_step` reads the directory on every process.

  Args:
    directory: where the step directories go, conventionally
      `<workdir>/checkpoints` (a local path or `gs://...`); created if missing,
      unless `read_only`.
    max_to_keep: number of most recent checkpoints to keep (None: all).
    async_save: write in a background thread after copying the arrays to host
      memory; `save` then returns as soon as the copy is done, so the caller may
      donate or overwrite `state` right away.
    read_only: for tools that only read a run (evaluate, sample): the
      directory must exist (FileNotFoundError otherwise), nothing is created,
      and a running job's temporary directories are left alone.
  """

  def __init__(self, directory, *, max_to_keep: Optional[int] = 3,
               async_save: bool = True, read_only: bool = False):
    directory = epath.Path(directory)
    if files.is_local(directory):
      directory = epath.Path(os.path.abspath(os.fspath(directory)))
    self._directory = directory
    self._read_only = read_only
    if read_only and not directory.is_dir():
      raise FileNotFoundError(f"no checkpoint directory {directory}")
    self._pending = None   # the step of a save that may still be in flight
    if read_only:
      # Orbax's read-only mode: saves and deletions are skipped. The settings it
      # would override (with a warning each) are given as it wants them.
      options = ocp.CheckpointManagerOptions(read_only=True, create=False, save_interval_steps=0,
                                             enable_async_checkpointing=False)
    else:
      options = ocp.CheckpointManagerOptions(
          preservation_policy=ocp.checkpoint_managers.LatestN(max_to_keep),
          enable_async_checkpointing=async_save,
          # Removes temporary directories left by a save that was interrupted;
          # never from a reader, which would delete a running job's save.
          cleanup_tmp_directories=True)
    self._manager = ocp.CheckpointManager(
        directory, options=options,
        # Named handlers let a fresh manager read metadata and restore without
        # having saved first (e.g. when resuming).
        item_handlers={_STATE: ocp.StandardCheckpointHandler(),
                       _EXTRA: ocp.JsonCheckpointHandler()})

  @property
  def directory(self) -> epath.Path:
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

    The arrays' checksums are computed here, before returning, so the caller
    may donate `state` afterwards.

    Args:
      step: the training step; becomes the directory name.
      state: pytree of `jax.Array`s / numpy arrays (typed PRNG keys allowed).
      extra: JSON-serialisable dict, e.g. the data iterator's position.
      wait: block until the checkpoint is completely written (e.g. before exit).

    Returns:
      True if a checkpoint was written; False if `step` is not newer than the
      latest checkpoint (e.g. the final save right after a resume), which is
      logged and skipped.

    Raises:
      CheckpointSaveError: this save, or the previous one still in flight, failed.
    """
    if self._read_only:
      raise PermissionError(f"{self._directory} was opened read-only")
    step = int(step)
    self._finish_pending()   # orbax waits for the previous save anyway; this names its error
    latest = self._manager.latest_step()
    if latest is not None and step <= latest:
      logging.warning("Not saving step %d in %s: a checkpoint at step %d exists.",
                      step, self._directory, latest)
      return False
    extra = dict(extra or {})
    if _CHECKSUMS in extra:
      raise ValueError(f"extra: the key {_CHECKSUMS!r} is reserved")
    extra[_CHECKSUMS] = integrity.state_checksums(state)
    try:
      saved = self._manager.save(
          step,
          args=ocp.args.Composite(**{
              _STATE: ocp.args.StandardSave(integrity.to_key_data(state)),
              _EXTRA: ocp.args.JsonSave(extra),
          }))
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    self._pending = step if saved else None
    if wait:
      self.wait_until_finished()
    return saved

  def _finish_pending(self):
    """Waits for the in-flight save, if any; raises CheckpointSaveError if it failed."""
    step, self._pending = self._pending, None
    try:
      self._manager.wait_until_finished()
      self._manager.check_for_errors()
    except Exception as e:  # pylint: disable=broad-except
      raise self._save_error(step, e) from e
    if step is not None and not (self._directory / str(step)).exists():
      raise self._save_error(step, "orbax did not commit it (see the error it logged)")

  def _save_error(self, step, cause) -> CheckpointSaveError:
    """A one-line error for a failed save of `step`; removes its temporary files."""
    left, removed = [], []
    if step is not None:
      for tmp in self._directory.glob(f"{step}{_TMP_MARKER}*"):
        try:
          tmp.rmtree() if tmp.is_dir() else tmp.unlink()
          removed.append(tmp.name)
        except OSError:
          left.append(os.fspath(tmp))
    where = f"step {step}" if step is not None else "a checkpoint"
    message = f"saving {where} in {self._directory} failed: {_first_line(cause)}"
    if removed:
      message += f"; removed its temporary files ({', '.join(removed)})"
    if left:
      message += f"; could not remove {', '.join(left)}"
    return CheckpointSaveError(message)

  def check_for_errors(self):
    """Raises CheckpointSaveError if the last asynchronous save failed.

    Does not block while that save is still running; call it at every step
    boundary so that training stops soon after a failed save.
    """
    if self._pending is None or self._manager.is_saving_in_progress():
      return
    self._finish_pending()

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
      CorruptCheckpointError (a ValueError): the checkpoint cannot be read or
        fails verification.
    """
    # A checkpoint this process is still writing must be complete before it is read.
    self.wait_until_finished()
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
    except Exception as e:  # pylint: disable=broad-except
      # The structure and shapes matched the metadata: the files are at fault.
      raise CorruptCheckpointError(
          f"checkpoint step {step} in {self._directory} cannot be read: {_first_line(e)}") from e
    restored_leaves = jax.tree.leaves(restored[_STATE])
    if len(restored_leaves) != len(leaves):
      raise ValueError(
          f"Checkpoint step {step} in {self._directory} has {len(restored_leaves)} "
          f"arrays, the target has {len(leaves)}.")
    extra = dict(restored[_EXTRA] or {})
    self._verify(step, jax.tree.unflatten(treedef, restored_leaves), extra.pop(_CHECKSUMS, None))
    state_leaves = [
        jax.random.wrap_key_data(x, impl=impl) if impl is not None else x
        for x, (_, impl) in zip(restored_leaves, abstract_and_impls)]
    return jax.tree.unflatten(treedef, state_leaves), extra

  def _verify(self, step, restored, expected):
    integrity.verify(restored, expected, f"checkpoint step {step} in {self._directory}")

  def restore_newest_valid(self, target: Any) -> Optional[Restored]:
    """Restores the newest checkpoint that can be read and verifies.

    Each newer one that fails is logged as a warning naming it and the reason,
    and left where it is (see `set_aside`).

    Returns:
      A `Restored`, or None if the directory has no checkpoint at all.

    Raises:
      CorruptCheckpointError: there are checkpoints, and none verifies (the
        message lists each with its reason).
      ValueError: the checkpoints do not match `target` (a config error, not
        corruption: no fallback).
    """
    bad = []
    for step in reversed(self.all_steps()):
      try:
        state, extra = self.restore(target, step)
      except CorruptCheckpointError as e:
        logging.warning("%s; trying the previous checkpoint. Step %d is kept for inspection.",
                        e, step)
        bad.append((step, str(e)))
        continue
      return Restored(step, state, extra, bad)
    if not bad:
      return None
    raise CorruptCheckpointError(
        f"no checkpoint in {self._directory} can be restored: "
        + "; ".join(reason for _, reason in bad)
        + f". Move {self._directory} aside to start the run afresh.")

  def restore_subtree(self, prefix: tuple, step: Optional[int] = None) -> Restored:
    """Restores only the arrays under `prefix` of the saved state (e.g. `("params", "net")`).

    Nothing else of the state is read, and no restore target is needed: the
    shapes and dtypes come from the checkpoint's metadata, and the arrays
    land on this process's first device. Their checksums are verified. With
    `step=None` the newest step that can be read and verifies is used, each
    newer one that fails logged as a warning (as `restore_newest_valid`).

    Returns:
      A `Restored` whose `state` is the subtree (nested dicts of arrays).

    Raises:
      FileNotFoundError: no (such) checkpoint.
      KeyError: the checkpoint's state has nothing under `prefix`.
      CorruptCheckpointError: it (or, with `step=None`, every one) fails.
    """
    steps = self.all_steps()
    if step is not None and int(step) not in steps:
      raise FileNotFoundError(f"No checkpoint for step {step} in {self._directory}; "
                              f"available steps: {steps or 'none'}.")
    candidates = [int(step)] if step is not None else list(reversed(steps))
    if not candidates:
      raise FileNotFoundError(f"No checkpoint to restore in {self._directory}.")
    bad = []
    for candidate in candidates:
      try:
        subtree, extra = self._restore_subtree(tuple(prefix), candidate)
      except CorruptCheckpointError as e:
        if step is not None:
          raise
        logging.warning("%s; trying the previous checkpoint. Step %d is kept for inspection.",
                        e, candidate)
        bad.append((candidate, str(e)))
        continue
      return Restored(candidate, subtree, extra, bad)
    raise CorruptCheckpointError(
        f"no checkpoint in {self._directory} can be restored: "
        + "; ".join(reason for _, reason in bad))

  def _restore_subtree(self, prefix, step):
    self.wait_until_finished()
    # A PyTree handler restores part of a tree (`partial_restore`); the
    # checkpoints are written by StandardSave, which stores the same format.
    manager = ocp.CheckpointManager(
        self._directory, options=ocp.CheckpointManagerOptions(
            read_only=True, create=False, save_interval_steps=0, enable_async_checkpointing=False),
        item_handlers={_STATE: ocp.PyTreeCheckpointHandler(),
                       _EXTRA: ocp.JsonCheckpointHandler()})
    try:
      try:
        metadata = manager.item_metadata(step)[_STATE]
      except Exception as e:  # pylint: disable=broad-except
        # A truncated or unreadable file fails here already, before any data.
        raise CorruptCheckpointError(
            f"checkpoint step {step} in {self._directory} cannot be read: {_first_line(e)}") from e
      node = getattr(metadata, "tree", metadata)
      for key in prefix:
        if not isinstance(node, dict) or key not in node:
          raise KeyError(f"checkpoint step {step} in {self._directory} has no "
                         f"{'.'.join(prefix)} in its state")
        node = node[key]
      device = jax.local_devices()[0]
      abstract = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype), node)
      args = jax.tree.map(lambda m: ocp.ArrayRestoreArgs(
          sharding=jax.sharding.SingleDeviceSharding(device)), node)
      for key in reversed(prefix):
        abstract, args = {key: abstract}, {key: args}
      try:
        restored = manager.restore(step, args=ocp.args.Composite(**{
            _STATE: ocp.args.PyTreeRestore(item=abstract, restore_args=args,
                                           partial_restore=True),
            _EXTRA: ocp.args.JsonRestore()}))
      except Exception as e:  # pylint: disable=broad-except
        raise CorruptCheckpointError(
            f"checkpoint step {step} in {self._directory} cannot be read: {_first_line(e)}") from e
    finally:
      manager.close()
    tree = restored[_STATE]
    extra = dict(restored[_EXTRA] or {})
    expected = extra.pop(_CHECKSUMS, None)
    if expected is not None:
      head = ".".join(prefix) + "."
      expected = {k: v for k, v in expected.items() if k.startswith(head)}
    self._verify(step, tree, expected)
    for key in prefix:
      tree = tree[key]
    return tree, extra

  def newest_verified_step(self, target: Any) -> Optional[int]:
    """The newest step that restores into `target` and verifies (None if none)."""
    for step in reversed(self.all_steps()):
      try:
        self.restore(target, step)
      except (CorruptCheckpointError, ValueError):
        continue
      return step
    return None

  def reload(self):
    """Re-reads the directory (after another process changed it)."""
    self._manager.reload()

  def set_aside(self, step: int) -> epath.Path:
    """Moves checkpoint `step` to `<directory>.corrupt/` (never deletes it); returns where."""
    if self._read_only:
      raise PermissionError(f"{self._directory} was opened read-only")
    source = self._directory / str(int(step))
    corrupt = self._directory.parent / f"{self._directory.name}.corrupt"
    corrupt.mkdir(parents=True, exist_ok=True)
    destination = corrupt / str(int(step))
    if destination.exists():
      destination = corrupt / f"{int(step)}.{int(time.time())}"
    source.rename(destination)
    self._manager.reload()
    return destination

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

  def reached_preemption(self, step: int) -> bool:
    """Whether every process has reached the step jax's preemption service chose to save.

    orbax's own check: True at the same step on every process once any of them
    got SIGTERM (False with one process, or without the service). Call it at
    every step on every process.
    """
    return self._manager.reached_preemption(step)

  def wait_until_finished(self):
    """Blocks until the in-flight save (if any) is complete.

    Raises:
      CheckpointSaveError: that save failed.
    """
    self._finish_pending()

  def close(self):
    """Waits for in-flight saves and releases orbax's threads.

    Raises:
      CheckpointSaveError: the last save failed (orbax's threads are released
        all the same).
    """
    try:
      self._finish_pending()
    finally:
      self._manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()
