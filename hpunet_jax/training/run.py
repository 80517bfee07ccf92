"""The run context: what a training run holds from start to end, set up and torn down in order.

`RunContext` owns the lease on the workdir, the checkpointer, the metric
writer and preemption; it restores from the newest checkpoint that verifies
and checks that a resumed run is the same run. What each guarantees when a
run is killed: docs/fault_tolerance.md.
"""
import json
import signal

from absl import logging
from etils import epath
import jax

from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import checkpoint as checkpoint_lib
from hpunet_jax.infra import lease, multihost, writer as writer_lib


class RunMismatchError(ValueError):
  """A resumed run's config changes what the run is (a model or loss field)."""


def check_config_matches(workdir, config):
  """A resumed run must use the model and loss it was started with.

  The `execution` group (dtype, remat, kernel choices) changes no parameter
  and may differ; so may everything outside the model and loss groups.

  Raises:
    RunMismatchError: naming the first field that differs.
  """
  run = workdir_lib.Run(workdir)
  if not run.has_config():
    return
  # Read back as the tools read it, so that fields the run's file predates
  # (e.g. `model.name`) hold their defaults: an old run is an HPU-Net.
  previous = json.loads(run.config().to_json_best_effort())
  current = json.loads(config.to_json_best_effort())
  for group in ("model", "loss"):
    for key, value in current.get(group, {}).items():
      old = previous.get(group, {}).get(key)
      if old != value:
        raise RunMismatchError(
            f"{group}.{key}={value!r} differs from the run in {workdir} ({old!r}); use a new "
            f"--workdir or the original value")


class Preemption:
  """Turns SIGTERM on any process into the same stopping step on every process.

  One process: a SIGTERM handler sets a flag the loop reads after each step.
  Several: jax's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM on any host and agrees with the others on a step, which
  orbax's `reached_preemption` reports on every host; it must be asked at
  every step. Without that service (`jax_enable_preemption_service=False`)
  the flags of all processes are gathered at logging and checkpoint steps.
  """

  def __init__(self, checkpointer):
    self.requested = False
    self._previous = None
    self._checkpointer = checkpointer
    self._service = jax.process_count() > 1 and jax.config.jax_enable_preemption_service

  def __enter__(self):
    if self._service:   # a Python handler would take SIGTERM away from jax's service
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, nothing to restore
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step, then stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step, at_sync_step):
    """Whether to save and stop at `step`; call it on every process at every step.

    `at_sync_step` (the same on every process) says whether the fallback may
    gather the processes' flags at this step.
    """
    if jax.process_count() == 1:
      return self.requested
    if self._service:
      reached = self._checkpointer.reached_preemption(step)
      if reached:
        logging.warning("Preemption noticed by the processes: saving step %d, then stopping.",
                        step)
      return reached
    if not at_sync_step:
      return False
    return bool(multihost.gather_flags(self.requested).any())


def acquire_lease(workdir, is_main):
  """Process 0 takes the workdir's lease; every process stops if it cannot."""
  held, error = None, None
  if is_main:
    try:
      held = lease.WorkdirLease(workdir).acquire()
    except lease.WorkdirBusyError as e:
      error = e
  if not multihost.broadcast_flag(error is None):
    raise error if error is not None else lease.WorkdirBusyError(
        f"process 0 could not take the lease on {workdir}")
  return held


def restore(checkpointer, state):
  """The newest checkpoint that verifies: `(step, state, extra)`, or `(0, state, None)`.

  Newer checkpoints that fail are moved aside (process 0 moves them), so that
  training can write those steps again.
  """
  restored = checkpointer.restore_newest_valid(state)
  if restored is None:
    return 0, state, None
  for bad_step, reason in restored.bad_steps:
    if jax.process_index() == 0:
      moved = checkpointer.set_aside(bad_step)
      logging.warning("Resuming from step %d instead of step %d (%s); step %d is kept in %s.",
                      restored.step, bad_step, reason, bad_step, moved)
  if restored.bad_steps and jax.process_count() > 1:
    multihost.sync("bad checkpoints set aside")
    checkpointer.reload()
  logging.info("Resumed from the checkpoint at step %d in %s.", restored.step,
               checkpointer.directory)
  return restored.step, restored.state, restored.extra


def close_quietly(checkpointer):
  """Closes `checkpointer`, logging (not raising) a failed last save: another error is at hand."""
  try:
    checkpointer.close()
  except checkpoint_lib.CheckpointSaveError as e:
    logging.error("%s", e)


class RunContext:
  """A training run's resources, from the lease to the last save, in one `with` block.

  On entry, in order: process 0 takes the workdir's lease (every process
  stops if it cannot), a resumed run is checked against the run's
  `config.json` (`check_config_matches`), the checkpointer opens, and SIGTERM
  is routed to `Preemption`. `restore(state)` then resumes from the newest
  checkpoint that verifies, writes `config.json` and opens the metric writer
  at the restored step. On exit, in reverse: preemption is released, the
  checkpointer waits for its last save (a failure raises CheckpointSaveError,
  unless another error is already on its way, which then wins and the save
  error is logged), the writer closes and the lease is released.

  The loop reads the run through it: `boundary()` between steps,
  `reached_preemption(step, ...)`, `save(step, state, extra)`, `writer`.
  """

  def __init__(self, config, workdir):
    self.config = config
    self.workdir = epath.Path(workdir)
    self.is_main = jax.process_index() == 0
    self.checkpointer = None
    self.writer = None
    self._lease = None
    self._preemption = None

  def __enter__(self):
    self.workdir.mkdir(parents=True, exist_ok=True)
    self._lease = acquire_lease(self.workdir, self.is_main)
    try:
      check_config_matches(self.workdir, self.config)
      self.checkpointer = checkpoint_lib.Checkpointer(
          workdir_lib.Run(self.workdir).checkpoint_dir, max_to_keep=self.config.train.keep_checkpoints)
      self._preemption = Preemption(self.checkpointer).__enter__()
    except BaseException:
      self._release()
      raise
    return self

  def restore(self, state):
    """`(start_step, state, extra)` from the newest checkpoint that verifies (`extra` None: none).

    Then writes `config.json` and opens the metric writer at `start_step`:
    records after it (all of them without a checkpoint) come from steps that
    will run again.
    """
    start_step, state, extra = restore(self.checkpointer, state)
    config = self.config
    if self.is_main:
      workdir_lib.Run(self.workdir).write_config(config)
    self.writer = writer_lib.MetricWriter(self.workdir, enabled=self.is_main,
                                          resume_step=start_step)
    self.writer.write_text(start_step,
                           {"config": f"```json\n{config.to_json_best_effort(indent=2)}\n```"})
    return start_step, state, extra

  def boundary(self, *, wait=False):
    """Stops soon after a failed save or a lost lease, before more work is done.

    A save still in flight is not waited for (`wait=False`: training steps go
    on while it writes), except before an evaluation, which takes longer than
    the save and must not start after a failed one.
    """
    if wait:
      self.checkpointer.wait_until_finished()
    else:
      self.checkpointer.check_for_errors()
    if self._lease is not None:
      self._lease.check()

  def reached_preemption(self, step, *, at_sync_step):
    """Whether to save and stop at `step` (`Preemption.reached`); call it at every step."""
    return self._preemption.reached(step, at_sync_step=at_sync_step)

  def save(self, step, state, extra):
    self.checkpointer.save(step, state, extra)

  def __exit__(self, exc_type, exc, tb):
    self._release(error=exc is not None)
    return False

  def _release(self, error=True):
    try:
      if self._preemption is not None:
        self._preemption.__exit__(None, None, None)
      if self.checkpointer is not None:
        if error:
          close_quietly(self.checkpointer)   # the error at hand matters more than a failed save
        else:
          try:
            self.checkpointer.close()        # raises CheckpointSaveError if the last save failed
          finally:
            self._close_writer()
      self._close_writer()
    finally:
      if self._lease is not None:
        self._lease.release()
        self._lease = None

  def _close_writer(self):
    if self.writer is not None:
      self.writer.close()
      self.writer = None
