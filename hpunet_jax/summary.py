"""Metric logging: JSON lines + TensorBoard event files, atomic JSON, progress lines.

`MetricWriter` appends every logged dict to `<workdir>/metrics.jsonl` (the
record to analyse) and writes the same scalars to a TensorBoard event file
`<workdir>/events.out.tfevents.<unix time>.<hostname>` (the record to look at)
without TensorFlow: the file is a TFRecord stream of `Event` protocol buffers,
which are simple enough to encode by hand (see `_event`).

Non-finite values: TensorBoard gets them as they are (float NaN/inf); in
`metrics.jsonl` they are written as the strings "nan", "inf" and "-inf" (JSON
has no NaN), so `float(value)` turns every value back into a number.

Only process 0 should write: construct the writer with
`enabled=jax.process_index() == 0` on every process.
"""
import json
import math
import os
import socket
import struct
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import numpy as np

METRICS_FILE = "metrics.jsonl"
_FILE_VERSION = b"brain.Event:2"
_SESSION_LOG_START = 1  # tensorflow.SessionLog.SessionStatus.START


# ---------------------------------------------------------------------------
# TFRecord framing with CRC32C.

def _crc32c_table():
  poly = 0x82F63B78  # Castagnoli polynomial, bit-reversed.
  table = []
  for byte in range(256):
    crc = byte
    for _ in range(8):
      crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
    table.append(crc)
  return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of `data`, as TFRecord files use it."""
  crc = 0xFFFFFFFF
  table = _CRC32C_TABLE
  for byte in data:
    crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The masked CRC stored in TFRecords (masking avoids CRCs of CRCs)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data: bytes) -> bytes:
  """Frames `data` as one TFRecord: length, CRC of length, data, CRC of data."""
  length = struct.pack("<Q", len(data))
  return (length + struct.pack("<I", masked_crc32c(length)) + data
          + struct.pack("<I", masked_crc32c(data)))


# ---------------------------------------------------------------------------
# Protocol buffer encoding of tensorflow.Event (only the fields we write).

def _varint(value: int) -> bytes:
  value &= 0xFFFFFFFFFFFFFFFF  # int64 two's complement for negative values.
  out = bytearray()
  while True:
    bits = value & 0x7F
    value >>= 7
    if value:
      out.append(bits | 0x80)
    else:
      out.append(bits)
      return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:
  """Length-delimited field (wire type 2): strings and sub-messages."""
  return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _summary_value(tag: str, value: float) -> bytes:
  # Summary.Value: tag = 1 (string), simple_value = 2 (float, wire type 5).
  return _field_bytes(1, tag.encode("utf-8")) + _varint(2 << 3 | 5) + struct.pack("<f", value)


def _event(wall_time: float, step: int, *, file_version: Optional[bytes] = None,
           scalars: Optional[Mapping[str, float]] = None,
           session_log_status: Optional[int] = None) -> bytes:
  """Encodes a tensorflow.Event message.

  Event: wall_time = 1 (double), step = 2 (int64), file_version = 3 (string),
  summary = 5 (Summary{value = 1 (repeated Value)}), session_log =
  7 (SessionLog{status = 1 (enum)}); 6 is the deprecated log_message.
  """
  out = _varint(1 << 3 | 1) + struct.pack("<d", wall_time)
  out += _varint(2 << 3 | 0) + _varint(int(step))
  if file_version is not None:
    out += _field_bytes(3, file_version)
  if scalars:
    summary = b"".join(_field_bytes(1, _summary_value(tag, value))
                       for tag, value in scalars.items())
    out += _field_bytes(5, summary)
  if session_log_status is not None:
    out += _field_bytes(7, _varint(1 << 3 | 0) + _varint(session_log_status))
  return out


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
  path = os.fspath(path)
  directory = os.path.dirname(path)
  if directory:
    os.makedirs(directory, exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    json.dump(_json_value(obj), f, indent=indent)
    f.write("\n")
  os.replace(tmp, path)


def read_jsonl(path) -> list[dict]:
  """Reads a JSON-lines file, skipping a partially written last line."""
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("Skipping a malformed line in %s: %r", path, line[:80])
  return records


def _truncate_jsonl(path, max_step: int):
  """Drops records with step > `max_step` (and broken lines), atomically."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
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
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.writelines(kept)
  os.replace(tmp, path)


def _to_float(name: str, value) -> float:
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"Metric {name!r} must be a scalar, got shape {array.shape}.")
  return float(array.reshape(()))


class MetricWriter:
  """Writes scalar metrics to `metrics.jsonl` and a TensorBoard event file.

  Args:
    workdir: directory of the run; created if missing.
    enabled: False on processes other than 0: then nothing is written at all.
    resume_step: when resuming from a checkpoint at this step, lines of
      `metrics.jsonl` with a larger step are dropped (they were logged after
      that checkpoint and will be logged again), and the event file starts with
      a SessionLog START at `resume_step + 1`, which tells TensorBoard to
      discard the old events from that step on.
  """

  def __init__(self, workdir, *, enabled: bool = True,
               resume_step: Optional[int] = None):
    self._enabled = enabled
    self._jsonl = self._events = None
    self.metrics_path = os.path.join(os.fspath(workdir), METRICS_FILE)
    self.event_path = None
    if not enabled:
      return
    os.makedirs(workdir, exist_ok=True)
    if resume_step is not None:
      _truncate_jsonl(self.metrics_path, resume_step)
    self._jsonl = open(self.metrics_path, "a")
    self._events, self.event_path = self._open_event_file(os.fspath(workdir))
    now = time.time()
    first_step = 0 if resume_step is None else resume_step + 1
    self._events.write(tfrecord(_event(now, first_step, file_version=_FILE_VERSION)))
    if resume_step is not None:
      self._events.write(tfrecord(
          _event(now, first_step, session_log_status=_SESSION_LOG_START)))
    self._events.flush()

  @staticmethod
  def _open_event_file(workdir):
    base = os.path.join(
        workdir, f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}")
    path, suffix = base, 0
    while True:
      try:
        # "x": two writers started in the same second must not share a file.
        return open(path, "xb"), path
      except FileExistsError:
        suffix += 1
        path = f"{base}.{suffix}"

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
    self._events.write(tfrecord(_event(time.time(), int(step), scalars=values)))
    # Cheap at logging frequency, and a crash loses nothing already logged.
    self.flush()

  def flush(self):
    if self._enabled and self._jsonl is not None:
      self._jsonl.flush()
      self._events.flush()

  def close(self):
    if self._jsonl is not None:
      self._jsonl.close()
      self._events.close()
      self._jsonl = self._events = None
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

  The rate is measured from the first `update` call on, so the compilation
  that happens in the first step(s) does not distort it: call `update` after
  the first step (or at the first logging step). Call it only where the step's
  results have reached the host (e.g. after fetching the metrics), otherwise
  asynchronous dispatch makes the timing meaningless.

  Args:
    total_steps: the last step of training.
    batch_size: global batch size, for images/s (None: not shown).
    start_step: the step training starts from (e.g. the resumed step).
    clock: seconds as a float; injectable for tests.
    print_fn: where lines go (None: nowhere, just return them).
  """

  def __init__(self, total_steps: int, *, batch_size: Optional[int] = None,
               start_step: int = 0, clock: Callable[[], float] = time.monotonic,
               print_fn: Optional[Callable[[str], Any]] = logging.info):
    self._total = int(total_steps)
    self._batch_size = batch_size
    self._start_step = int(start_step)
    self._clock = clock
    self._print_fn = print_fn
    self._start_time = clock()
    self._reference = None  # (step, time) of the first update.

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
    """Returns (and prints) the line for `step`, with `metrics` as 'name value'.

    Example: 'step 1200/50000 (2.4%) | loss 123.4 | lambda 1.2 | 12.3 steps/s |
    394 img/s | ETA 1:06:07'.
    """
    step = int(step)
    parts = [f"step {step}/{self._total} ({100.0 * step / max(self._total, 1):.1f}%)"]
    for name, value in (metrics or {}).items():
      parts.append(f"{name} {_to_float(name, value):.4g}")
    if self._reference is None:
      now = self._clock()
      parts.append(f"first {step - self._start_step} steps took "
                   f"{now - self._start_time:.1f}s (incl. compilation)")
      self._reference = (step, now)
    else:
      rate = self.steps_per_second(step)
      if rate is not None:
        parts.append(f"{rate:.3g} steps/s")
        if self._batch_size:
          parts.append(f"{rate * self._batch_size:.4g} img/s")
        parts.append(f"ETA {format_duration((self._total - step) / rate)}")
    line = " | ".join(parts)
    if self._print_fn is not None:
      self._print_fn(line)
    return line
