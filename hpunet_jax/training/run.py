"""The run context: what a training run holds from start to end, set up and torn down in order.

The lease on the workdir, preemption, restoring from the newest checkpoint
that verifies, and the checks that a resumed run is the same run. What each
guarantees when a run is killed: docs/fault_tolerance.md.
"""
import json
import signal

from absl import logging
from etils import epath
import jax

from hpunet_jax import config_lib
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
  path = epath.Path(workdir) / config_lib.RUN_CONFIG_FILE
  if not path.exists():
    return
  previous = json.loads(path.read_text())
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


def recorded_evaluation(workdir, step):
  """The scalars of the `eval/` record at `step` in metrics.jsonl (None if there is none)."""
  path = epath.Path(workdir) / writer_lib.METRICS_FILE
  if not path.exists():
    return None
  for record in reversed(writer_lib.read_jsonl(path)):
    if record.get("step") == step and any(k.startswith("eval/") for k in record):
      return {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
  return None


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


