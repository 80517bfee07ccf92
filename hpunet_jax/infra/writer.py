"""Metric logging: JSON lines + TensorBoard (tensorboardX), atomic JSON, progress lines.

`MetricWriter` appends every logged dict to `<workdir>/metrics.jsonl` (the
record to analyse) and writes the same scalars, plus figures and text, to a
TensorBoard event file `<workdir>/events.out.tfevents.*` through tensorboardX
(the record to look at; no TensorFlow needed).

Non-finite values: TensorBoard gets them as they are (float NaN/inf); in
`metrics.jsonl` they are written as the strings "nan", "inf" and "-inf" (JSON
has no NaN), so `float(value)` turns every value back into a number.

Only process 0 should write: construct the writer with
`enabled=jax.process_index() == 0` on every process.

Paths are `etils.epath` paths: the workdir may be local or on an object store
(`gs://bucket/run`, with `pip install 'hpunet-jax[gcs]'`). Object stores
cannot append, so there `metrics.jsonl` and the event file are kept in memory
and rewritten whole at every flush (each object write replaces the previous
one atomically; TensorFlow's own GCS writer does the same).
"""
import io
import json
import math
import os
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
from etils import epath
import numpy as np
import tensorboardX
from tensorboardX import record_writer as tensorboardx_record_writer

METRICS_FILE = "metrics.jsonl"
# Schemes that etils.epath opens through fsspec (gs://, s3://, az://).
_OBJECT_STORE_SCHEMES = ("gs", "s3", "az")


def is_local(path) -> bool:
  """Whether `path` is on the local file system (not `gs://...` or another object store)."""
  return "://" not in os.fspath(path)


class _EventFile:
  """A tensorboardX record file on any epath path: rewritten whole at every flush."""

  def __init__(self, path):
    self._path = epath.Path(path)
    self._buffer = io.BytesIO()
    self._written = 0

  def write(self, data):
    self._buffer.write(data)

  def flush(self):
    if self._buffer.tell() != self._written:
      self._path.write_bytes(self._buffer.getvalue())
      self._written = self._buffer.tell()

  def close(self):
    self.flush()


class _EventFileFactory:
  """tensorboardX's hook for non-local log dirs; replaces its own google-cloud-storage writer."""

  def open(self, path):
    return _EventFile(path)

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


for _scheme in _OBJECT_STORE_SCHEMES:
  tensorboardx_record_writer.register_writer_factory(_scheme, _EventFileFactory())


# ---------------------------------------------------------------------------
# JSON helpers.

def _json_value(value):
  """Makes `value` JSON-serialisable: numpy/jax -> Python, non-finite -> str."""
  if hasattr(value, "to_dict") and callable(value.to_dict):  # ConfigDict.
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {str(k): _json_value(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_value(v) for v in value]
  if isinstance(value, (str, bool, int)) or value is None:
    return value
  if isinstance(value, float):
    return value if math.isfinite(value) else str(value)
  if hasattr(value, "__array__") or isinstance(value, np.generic):
    return _json_value(np.asarray(value).tolist())
  return str(value)


def write_json(path, obj: Any, *, indent: int = 2):
  """Writes `obj` as JSON to `path` atomically (temp file + rename).

  Numpy/jax values become Python numbers or lists, non-finite floats become
  "nan"/"inf"/"-inf" strings, ConfigDicts their `to_dict()`.
  """
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.parent / f"{path.name}.tmp{time.time_ns()}"
  tmp.write_text(json.dumps(_json_value(obj), indent=indent) + "\n")
  tmp.replace(path)


def read_jsonl(path) -> list[dict]:
  """Reads a JSON-lines file, skipping a partially written last line."""
  records = []
  with epath.Path(path).open() as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("Skipping a malformed line in %s: %r", path, line[:80])
  return records


def _truncate_jsonl(path, max_step: int):
  """Drops records with step > `max_step` (and broken lines), atomically."""
  path = epath.Path(path)
  if not path.exists():
    return
  lines = path.read_text().splitlines(keepends=True)
  kept = []
  for line in lines:
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      continue  # A line cut short by the interruption.
    if isinstance(record, dict) and record.get("step", 0) <= max_step:
      kept.append(line if line.endswith("\n") else line + "\n")
  if len(kept) != len(lines):
    logging.info("Resuming at step %d: dropping %d lines of %s.", max_step,
                 len(lines) - len(kept), path)
  tmp = path.parent / f"{path.name}.tmp{time.time_ns()}"
  tmp.write_text("".join(kept))
  tmp.replace(path)


def _to_float(name: str, value) -> float:
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"Metric {name!r} must be a scalar, got shape {array.shape}.")
  return float(array.reshape(()))


class _RewrittenFile:
  """Append-only text on an object store: the whole (small) file is rewritten at each flush."""

  def __init__(self, path):
    self._path = epath.Path(path)
    self._text = self._path.read_text() if self._path.exists() else ""
    self._dirty = False

  def write(self, text):
    self._text += text
    self._dirty = True

  def flush(self):
    if self._dirty:
      self._path.write_text(self._text)
      self._dirty = False

  def close(self):
    self.flush()


class MetricWriter:
  """Writes scalar metrics to `metrics.jsonl` and TensorBoard; figures and text to TensorBoard.

  Args:
    workdir: directory of the run (any `etils.epath` path); created if missing.
    enabled: False on processes other than 0: then nothing is written at all.
    resume_step: when resuming from a checkpoint at this step, lines of
      `metrics.jsonl` with a larger step are dropped (they were logged after
      that checkpoint and will be logged again), and the new event file starts
      with a SessionLog START at `resume_step + 1` (tensorboardX's
      `purge_step`), which tells TensorBoard to discard the old events from
      that step on.
  """

  def __init__(self, workdir, *, enabled: bool = True,
               resume_step: Optional[int] = None):
    self._enabled = enabled
    self._jsonl = self._tensorboard = None
    self.metrics_path = epath.Path(workdir) / METRICS_FILE
    if not enabled:
      return
    self.metrics_path.parent.mkdir(parents=True, exist_ok=True)
    if resume_step is not None:
      _truncate_jsonl(self.metrics_path, resume_step)
    self._jsonl = (self.metrics_path.open("a") if is_local(self.metrics_path)
                   else _RewrittenFile(self.metrics_path))
    # tensorboardX names files by the second and opens them with "wb": the
    # suffix keeps two writers started in the same second apart.
    self._tensorboard = tensorboardX.SummaryWriter(
        logdir=os.fspath(epath.Path(workdir)), purge_step=None if resume_step is None else resume_step + 1,
        filename_suffix=f".{time.time_ns()}")

  def write(self, step: int, scalars: Mapping[str, Any], *, prefix: str = ""):
    """Logs `scalars` at `step`; tags and JSON keys are `prefix + name`.

    Args:
      step: the training step.
      scalars: name -> Python/numpy/jax scalar (arrays of size 1 are fine).
      prefix: e.g. "eval/" to group evaluation metrics in TensorBoard.
    """
    if not self._enabled:
      return
    values = {prefix + name: _to_float(prefix + name, value)
              for name, value in scalars.items()}
    record = {"step": int(step), **{k: _json_value(v) for k, v in values.items()}}
    self._jsonl.write(json.dumps(record) + "\n")
    wall_time = time.time()
    for tag, value in values.items():
      self._tensorboard.add_scalar(tag, value, int(step), walltime=wall_time)
    # Cheap at logging frequency, and a crash loses nothing already logged.
    self.flush()

  def write_images(self, step: int, images: Mapping[str, np.ndarray]):
    """Logs uint8 `[H, W, 3]` images (e.g. figures) to TensorBoard at `step`."""
    if not self._enabled:
      return
    for tag, image in images.items():
      self._tensorboard.add_image(tag, np.asarray(image, np.uint8), int(step),
                                  dataformats="HWC")
    self.flush()

  def write_text(self, step: int, texts: Mapping[str, str]):
    """Logs text (markdown) to TensorBoard's Text tab at `step`."""
    if not self._enabled:
      return
    for tag, text in texts.items():
      self._tensorboard.add_text(tag, text, int(step))
    self.flush()

  def flush(self):
    if self._enabled and self._jsonl is not None:
      self._jsonl.flush()
      self._tensorboard.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._tensorboard.close()
      self._jsonl = self._tensorboard = None
    self._enabled = False

  def __enter__(self):
    return self

  def __exit__(self, *exc_info):
    self.close()


# ---------------------------------------------------------------------------
# Progress lines.

def format_duration(seconds: float) -> str:
  """Seconds -> 'h:mm:ss' (hours may exceed 24)."""
  seconds = max(0, int(round(seconds)))
  hours, rest = divmod(seconds, 3600)
  minutes, secs = divmod(rest, 60)
  return f"{hours}:{minutes:02d}:{secs:02d}"


class Progress:
  """Formats (and prints) a progress line with throughput and ETA.

  Used for training steps, evaluated images, generated dataset examples and
  drawn figures alike (`unit`).

  The rate is measured from the first `update` call on, so the compilation
  that happens in the first step(s) does not distort it: call `update` after
  the first step (or at the first logging step). Call it only where the step's
  results have reached the host (e.g. after fetching the metrics), otherwise
  asynchronous dispatch makes the timing meaningless.

  Args:
    total_steps: the last step (or the number of items).
    batch_size: global batch size, for images/s (None: not shown).
    start_step: the step training starts from (e.g. the resumed step).
    clock: seconds as a float; injectable for tests.
    print_fn: where lines go (None: nowhere, just return them).
    unit: what is counted ('step', 'image', 'example', ...).
    every_s: print at most one line per this many seconds (the first and the
      last update always print); 0 prints every update.
  """

  def __init__(self, total_steps: int, *, batch_size: Optional[int] = None,
               start_step: int = 0, clock: Callable[[], float] = time.monotonic,
               print_fn: Optional[Callable[[str], Any]] = logging.info,
               unit: str = "step", every_s: float = 0.0):
    self._total = int(total_steps)
    self._batch_size = batch_size
    self._start_step = int(start_step)
    self._clock = clock
    self._print_fn = print_fn
    self._unit = unit
    self._every_s = every_s
    self._start_time = clock()
    self._reference = None  # (step, time) of the first update.
    self._last_print = None

  def steps_per_second(self, step: int) -> Optional[float]:
    """Average rate since the first update, or None before there is one."""
    if self._reference is None:
      return None
    ref_step, ref_time = self._reference
    elapsed = self._clock() - ref_time
    if step <= ref_step or elapsed <= 0:
      return None
    return (step - ref_step) / elapsed

  def update(self, step: int, metrics: Optional[Mapping[str, Any]] = None) -> str:
    """Returns (and prints, unless within `every_s` of the last line) the line for `step`.

    Example: 'step 1200/50000 (2.4%) | loss 123.4 | lambda 1.2 | 12.3 steps/s |
    394 img/s | ETA 1:06:07'.
    """
    step = int(step)
    unit = self._unit
    parts = [f"{unit} {step}/{self._total} ({100.0 * step / max(self._total, 1):.1f}%)"]
    for name, value in (metrics or {}).items():
      parts.append(f"{name} {_to_float(name, value):.4g}")
    now = self._clock()
    if self._reference is None:
      parts.append(f"first {step - self._start_step} {unit}s took "
                   f"{now - self._start_time:.1f}s (incl. start-up and compilation)")
      self._reference = (step, now)
    else:
      rate = self.steps_per_second(step)
      if rate is not None:
        parts.append(f"{rate:.3g} {unit}s/s")
        if self._batch_size:
          parts.append(f"{rate * self._batch_size:.4g} img/s")
        parts.append(f"ETA {format_duration((self._total - step) / rate)}")
    line = " | ".join(parts)
    due = (self._last_print is None or step >= self._total
           or now - self._last_print >= self._every_s)
    if self._print_fn is not None and due:
      self._print_fn(line)
      self._last_print = now
    return line
