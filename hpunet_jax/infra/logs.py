"""Console output of the command-line tools: their own lines, not the libraries' chatter.

`quiet_library_logs` drops the libraries' INFO lines; `divert_background_errors`
sends the tracebacks of background threads to a file; `storage_failure` is the
one line a run prints when its store fails (docs/fault_tolerance.md).
"""
import logging as python_logging
import os
import sys
import tempfile
import threading
import traceback


class _QuietLibraries:
  """Drops INFO lines from orbax/grain/tfds, which log every file they touch."""

  _NOISY = (os.sep + "orbax" + os.sep, os.sep + "grain" + os.sep,
            os.sep + "tensorflow_datasets" + os.sep, os.sep + "etils" + os.sep)

  def filter(self, record):
    return record.levelno >= 30 or not any(  # 30: Python's WARNING (absl's constants differ)
        part in record.pathname for part in self._NOISY)


def quiet_library_logs():
  """Keeps the command-line tools' output to their own progress and results."""
  # Every absl.logging call goes through the 'absl' logger, whatever handler prints it.
  python_logging.getLogger("absl").addFilter(_QuietLibraries())


# Where a store that failed mid-run is reported (docs/fault_tolerance.md#a-store-that-fails).
BACKGROUND_LOG = "background_errors.log"
_LIBRARY_LOGGERS = ("gcsfs", "aiohttp", "asyncio", "fsspec", "google")
_SILENCED = (
    # gcsfs (2025.x and later) asks the Storage Control API whether a bucket is
    # zonal or hierarchical; under anonymous access or on an emulator it cannot
    # ask, warns at every open and uses its plain GCS filesystem, which is right
    # for every bucket this package can write to (docs/distributed.md#emulators).
    "Could not determine bucket type",
    # fake-gcs-server has no moveTo API; gcsfs falls back to copy and delete.
    "Failed to move file using moveTo API",
)


def background_log_path(workdir) -> str:
  """A local file for the tracebacks of background threads: in the workdir where it is
  local, else under the temporary folder (a store that failed cannot take them)."""
  workdir = os.fspath(workdir)
  if "://" not in workdir:
    return os.path.join(workdir, BACKGROUND_LOG)
  name = "".join(c if c.isalnum() or c in "-_." else "_" for c in workdir)
  return os.path.join(tempfile.gettempdir(), "hpunet_jax_logs", name, BACKGROUND_LOG)


class _Sink:
  """Appends text to a local file, created on first use; never raises."""

  def __init__(self, path):
    self.path, self.count, self._lock = path, 0, threading.Lock()

  def write(self, text):
    with self._lock:
      try:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        with open(self.path, "a", encoding="utf-8") as f:
          f.write(text if text.endswith("\n") else text + "\n")
        self.count += 1
      except OSError:
        pass


class _BackgroundToFile:
  """A handler filter: library records and other threads' tracebacks go to the file only."""

  def __init__(self, sink):
    self._sink = sink

  def filter(self, record):
    library = record.name.split(".")[0] in _LIBRARY_LOGGERS
    if library and (record.levelno < 30 or any(text in str(record.msg) for text in _SILENCED)):
      return False   # 30: Python's WARNING
    background = record.threadName != "MainThread"
    if record.exc_info or (library and record.levelno >= 40):   # 40: Python's ERROR
      self._sink.write(f"{record.levelname} {record.name} [{record.threadName}] "
                       + python_logging.Formatter().format(record))
      if library or background:
        return False   # the failure reaches the main thread, which reports it in one line
      record.msg, record.args = (record.getMessage().splitlines() or [""])[0], None
      record.exc_info = record.exc_text = None   # the console keeps the message's first line
    return True


_sink = None


def divert_background_errors(workdir):
  """Sends background tracebacks to `background_log_path(workdir)`, off the console.

  Threads that die (orbax's, tensorboardX's), errors raised where nobody can
  catch them (atexit callbacks, gcsfs's event loop) and the libraries' logged
  tracebacks are appended to that file; the console keeps the tools' own
  lines and the one-line stop of `storage_failure`. Returns the file's path.
  """
  global _sink
  _sink = _Sink(background_log_path(workdir))

  def thread_hook(args):
    if args.exc_type is SystemExit:
      return
    _sink.write(f"Exception in thread {args.thread.name if args.thread else '?'}:\n" + "".join(
        traceback.format_exception(args.exc_type, args.exc_value, args.exc_traceback)))

  def unraisable_hook(unraisable):
    _sink.write(f"{unraisable.err_msg or 'Exception ignored in'}: {unraisable.object!r}\n"
                + "".join(traceback.format_exception(unraisable.exc_type, unraisable.exc_value,
                                                     unraisable.exc_traceback)))

  threading.excepthook = thread_hook
  sys.unraisablehook = unraisable_hook
  keep = _BackgroundToFile(_sink)
  for handler in python_logging.getLogger().handlers:
    handler.addFilter(keep)
  return _sink.path


_exit_workdir = None


def exit_on_storage_failure(workdir):
  """Makes `at_step` stop the process on a failed store: one line, exit status 1.

  For the command-line tools. Cleaning up after a store that went away would
  wait on it again for every file (gcsfs and TensorStore retry each request
  for minutes) and gain nothing: what was written is kept, an interrupted
  checkpoint is never taken for one, and the next run takes over the lease.
  A `CheckpointSaveError` is not stopped here: orbax has given up already and
  the loop removes the save's temporary files before reporting it.
  """
  global _exit_workdir
  _exit_workdir = os.fspath(workdir)


def at_step(error: BaseException, step: int) -> BaseException:
  """Records on `error` the step the run was at when it was raised (the first one wins).

  After `exit_on_storage_failure`, a storage error other than a failed save
  ends the process here with `storage_failure`'s line.
  """
  if getattr(error, "hpunet_step", None) is None:
    try:
      error.hpunet_step = int(step)
    except (AttributeError, TypeError):
      pass
  if _exit_workdir is not None and is_storage_error(error) \
      and type(error).__name__ != "CheckpointSaveError":
    exit_now(storage_failure(error, _exit_workdir))
  return error


def exit_now(line: str, status: int = 1):
  """Prints `line` to stderr and ends the process at once, without the interpreter's teardown
  (whose atexit handlers would wait on a failed store again)."""
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError):
      pass
  os.write(2, (line + "\n").encode())
  os._exit(status)  # pylint: disable=protected-access


def is_storage_error(error: BaseException) -> bool:
  """Whether `error` comes from the storage: an OSError, or an error of a storage client."""
  module = type(error).__module__.split(".")[0]
  return isinstance(error, OSError) or module in ("gcsfs", "aiohttp", "google", "fsspec")


def storage_failure(error: BaseException, workdir) -> str:
  """The one line that reports a failed store: the step, the path and the cause.

  Of `error` and the errors it was raised while handling, the first that
  `at_step` marked is reported (the cleanup after a failure fails again).
  """
  chain, seen = error, set()
  while chain is not None and id(chain) not in seen:
    seen.add(id(chain))
    if getattr(chain, "hpunet_step", None) is not None and is_storage_error(chain):
      error = chain
      break
    chain = chain.__cause__ or chain.__context__
  step = getattr(error, "hpunet_step", None)
  where = f"at step {step}" if step is not None else "before the first step"
  path = getattr(error, "filename", None) or os.fspath(workdir)
  cause = " ".join(str(error).split()) or type(error).__name__
  if len(cause) > 1000:   # an HTTP error's body
    cause = cause[:997] + "..."
  line = (f"FATAL storage failed {where}: {path}: {type(error).__name__}: {cause}. Everything "
          f"written before is kept; once the storage works again, run the same command to "
          f"resume from the newest checkpoint that verifies.")
  if _sink is not None and _sink.count:
    line += f" Background tracebacks: {_sink.path}"
  return line
