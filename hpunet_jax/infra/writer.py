"""Metric logging: JSON lines + TensorBoard (tensorboardX), atomic JSON.

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
import json
import math
import os
import time
from typing import Any, Mapping, Optional

from absl import logging
from etils import epath
import numpy as np
import tensorboardX
from tensorboardX import record_writer as tensorboardx_record_writer

from hpunet_jax.infra import files
from hpunet_jax.infra.progress import to_float

METRICS_FILE = "metrics.jsonl"


class _EventFileFactory:
  """tensorboardX's hook for non-local log dirs; replaces its own google-cloud-storage writer."""

  def open(self, path):
    return files.RewrittenFile(path, binary=True)

  def directory_check(self, path):
    epath.Path(path).mkdir(parents=True, exist_ok=True)


for _scheme in files.OBJECT_STORE_SCHEMES:
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
  files.atomic_write(path, json.dumps(_json_value(obj), indent=indent) + "\n")


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
  files.atomic_write(path, "".join(kept), mkdir=False)


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
    self._jsonl = (self.metrics_path.open("a") if files.is_local(self.metrics_path)
                   else files.RewrittenFile(self.metrics_path))
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
    values = {prefix + name: to_float(prefix + name, value)
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
