"""Progress lines with a rate and an ETA, for training, evaluation, sampling and dataset building.

Imports only the standard library, absl and numpy: the dataset builders use it
without pulling in the metric writer's tensorboardX.
"""
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import numpy as np


def to_float(name: str, value) -> float:
  """A scalar metric as a float (numpy, jax or Python; arrays of size 1)."""
  array = np.asarray(value)
  if array.size != 1:
    raise ValueError(f"Metric {name!r} must be a scalar, got shape {array.shape}.")
  return float(array.reshape(()))


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
      parts.append(f"{name} {to_float(name, value):.4g}")
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
