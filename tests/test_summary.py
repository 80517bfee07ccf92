"""Tests for hpunet_jax.summary."""
import glob
import io
import json
import math
import os

import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator

from hpunet_jax.infra import progress as progress_lib
from hpunet_jax.infra import writer as writer_lib


def _load(logdir):
  """What TensorBoard shows for `logdir`: every scalar, image and tensor (text) event."""
  accumulator = event_accumulator.EventAccumulator(
      str(logdir), size_guidance={event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0,
                                  event_accumulator.TENSORS: 0})
  return accumulator.Reload()


def test_tensorboard_reads_the_scalars(tmp_path):
  with writer_lib.MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": 2.5, "lambda": np.float32(0.25)})
    writer.write(2, {"loss": np.array(1.5), "kl": float("nan")})
    writer.write(2, {"ged_16": 0.75}, prefix="eval/")
  assert glob.glob(str(tmp_path / "events.out.tfevents.*"))
  board = _load(tmp_path)
  assert sorted(board.Tags()["scalars"]) == ["eval/ged_16", "kl", "lambda", "loss"]
  assert [(e.step, e.value) for e in board.Scalars("loss")] == [(1, 2.5), (2, 1.5)]
  assert board.Scalars("lambda")[0].value == 0.25
  assert math.isnan(board.Scalars("kl")[0].value)
  assert [(e.step, e.value) for e in board.Scalars("eval/ged_16")] == [(2, 0.75)]
  assert all(e.wall_time > 1e9 for e in board.Scalars("loss"))


def test_tensorboard_reads_figures_and_text(tmp_path):
  figure = np.random.default_rng(0).integers(0, 256, (20, 30, 3), dtype=np.uint8)
  with writer_lib.MetricWriter(tmp_path) as writer:
    writer.write_images(100, {"figures/all_scales_free": figure})
    writer.write_text(0, {"config": "```\n{\"train\": {\"batch_size\": 32}}\n```"})
  board = _load(tmp_path)
  (image,) = board.Images("figures/all_scales_free")
  assert (image.step, image.width, image.height) == (100, 30, 20)
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(image.encoded_image_string))),
                                figure)
  (text_tag,) = board.Tags()["tensors"]
  assert text_tag.startswith("config")
  (text,) = board.Tensors(text_tag)
  assert b"batch_size" in text.tensor_proto.string_val[0]


def test_jsonl_content(tmp_path):
  with writer_lib.MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": np.float32(2.0), "count": np.int64(3)})
    writer.write(2, {"kl": float("inf"), "bad": float("nan")}, prefix="eval/")
    with pytest.raises(ValueError, match="'vector'"):
      writer.write(3, {"vector": np.ones(3)})
  lines = open(tmp_path / writer_lib.METRICS_FILE).read().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "loss": 2.0, "count": 3.0},
      {"step": 2, "eval/kl": "inf", "eval/bad": "nan"},
  ]


def test_disabled_writer_writes_nothing(tmp_path):
  with writer_lib.MetricWriter(tmp_path / "run", enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "run")


def test_resume_truncates_jsonl_and_tensorboard_drops_the_replayed_steps(tmp_path):
  with writer_lib.MetricWriter(tmp_path) as writer:
    for step in (10, 20, 30, 40):
      writer.write(step, {"loss": float(step)})
  with open(tmp_path / writer_lib.METRICS_FILE, "a") as f:
    f.write('{"step": 50, "lo')  # A line cut short by a crash.
  with writer_lib.MetricWriter(tmp_path, resume_step=20) as writer:
    writer.write(30, {"loss": -30.0})
  records = writer_lib.read_jsonl(tmp_path / writer_lib.METRICS_FILE)
  assert records == [{"step": 10, "loss": 10.0}, {"step": 20, "loss": 20.0},
                     {"step": 30, "loss": -30.0}]
  assert not glob.glob(str(tmp_path / "*.tmp*"))
  # Each writer has its own event file (even within the same second); the
  # resumed one tells TensorBoard to drop the old events from step 21 on.
  assert len(glob.glob(str(tmp_path / "events.out.tfevents.*"))) == 2
  assert [(e.step, e.value) for e in _load(tmp_path).Scalars("loss")] == [
      (10, 10.0), (20, 20.0), (30, -30.0)]


def test_write_json_is_atomic_and_sanitised(tmp_path):
  path = tmp_path / "sub" / "evaluation.json"
  writer_lib.write_json(path, {"ged": np.float32(0.5), "per_class": np.arange(3),
                            "nan": float("nan"), "nested": {"t": (1, 2)}})
  assert json.loads(path.read_text()) == {
      "ged": 0.5, "per_class": [0, 1, 2], "nan": "nan", "nested": {"t": [1, 2]}}
  assert os.listdir(path.parent) == ["evaluation.json"]


class _FakeClock:

  def __init__(self):
    self.now = 1000.0

  def __call__(self):
    return self.now


def test_progress_rate_excludes_first_step_and_eta():
  clock = _FakeClock()
  lines = []
  progress = progress_lib.Progress(1000, batch_size=32, clock=clock, print_fn=lines.append)
  clock.now += 30.0  # The first step, with compilation.
  first = progress.update(1, {"loss": 12.5, "lambda": 1.0})
  assert "step 1/1000" in first and "loss 12.5" in first and "lambda 1" in first
  assert "steps/s" not in first and "30.0s" in first
  clock.now += 99 / 10.0  # 99 more steps at 10 steps/s.
  line = progress.update(100, {"loss": 3.0})
  assert lines == [first, line]
  assert "step 100/1000 (10.0%)" in line
  assert "10 steps/s" in line
  assert "320 img/s" in line
  assert "ETA 0:01:30" in line  # 900 steps at 10 steps/s.


def test_format_duration():
  assert progress_lib.format_duration(0) == "0:00:00"
  assert progress_lib.format_duration(3725.4) == "1:02:05"
  assert progress_lib.format_duration(90000) == "25:00:00"


def test_progress_counts_any_unit_and_throttles_lines():
  clock = _FakeClock()
  lines = []
  progress = progress_lib.Progress(100, clock=clock, print_fn=lines.append, unit="image", every_s=10)
  clock.now += 5.0
  assert "first 16 images took 5.0s" in progress.update(16)
  clock.now += 2.0
  line = progress.update(32)           # 2 s after the last line: computed, not printed
  assert "image 32/100 (32.0%)" in line and "8 images/s" in line and "ETA 0:00:08" in line
  clock.now += 9.0
  progress.update(96)                  # 11 s after the last printed line
  progress.update(100)                 # the last update always prints
  assert [l.split(" |")[0] for l in lines] == ["image 16/100 (16.0%)", "image 96/100 (96.0%)",
                                             "image 100/100 (100.0%)"]
