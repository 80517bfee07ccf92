"""Tests for hpunet_jax.summary."""
import glob
import json
import math
import os
import struct

import numpy as np
import pytest

from hpunet_jax import summary


def _read_records(path):
  """Reads TFRecords, checking both masked CRCs of every record."""
  with open(path, "rb") as f:
    data = f.read()
  records, pos = [], 0
  while pos < len(data):
    length_bytes = data[pos:pos + 8]
    (length,) = struct.unpack("<Q", length_bytes)
    (length_crc,) = struct.unpack("<I", data[pos + 8:pos + 12])
    assert length_crc == summary.masked_crc32c(length_bytes)
    payload = data[pos + 12:pos + 12 + length]
    (data_crc,) = struct.unpack("<I", data[pos + 12 + length:pos + 16 + length])
    assert data_crc == summary.masked_crc32c(payload)
    records.append(payload)
    pos += 16 + length
  assert pos == len(data)
  return records


def _read_varint(buf, pos):
  result = shift = 0
  while True:
    byte = buf[pos]
    pos += 1
    result |= (byte & 0x7F) << shift
    shift += 7
    if not byte & 0x80:
      return result, pos


def _parse_message(buf):
  """Minimal protobuf decoder: {field number: [raw values]}."""
  fields, pos = {}, 0
  while pos < len(buf):
    key, pos = _read_varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _read_varint(buf, pos)
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    elif wire == 2:
      length, pos = _read_varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    else:
      raise AssertionError(f"unexpected wire type {wire}")
    fields.setdefault(number, []).append(value)
  return fields


def _decode_event(payload):
  fields = _parse_message(payload)
  event = {"wall_time": struct.unpack("<d", fields[1][0])[0], "step": fields[2][0]}
  if 3 in fields:
    event["file_version"] = fields[3][0].decode()
  if 5 in fields:
    event["scalars"] = {}
    for value in _parse_message(fields[5][0])[1]:
      value = _parse_message(value)
      event["scalars"][value[1][0].decode()] = struct.unpack("<f", value[2][0])[0]
  if 7 in fields:
    event["session_log_status"] = _parse_message(fields[7][0])[1][0]
  return event


def _event_file(workdir):
  (path,) = glob.glob(os.path.join(workdir, "events.out.tfevents.*"))
  return path


def test_crc32c_known_value():
  assert summary.crc32c(b"123456789") == 0xE3069283
  assert summary.crc32c(b"") == 0


def test_event_file_round_trip(tmp_path):
  with summary.MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": 2.5, "lambda": np.float32(0.25)})
    writer.write(2, {"loss": np.array(1.5), "kl": float("nan")})
    writer.write(2, {"ged_16": 0.75}, prefix="eval/")
  path = _event_file(tmp_path)
  assert os.path.basename(path).startswith("events.out.tfevents.")
  events = [_decode_event(r) for r in _read_records(path)]
  assert events[0]["file_version"] == "brain.Event:2"
  assert [e["step"] for e in events[1:]] == [1, 2, 2]
  assert events[1]["scalars"] == {"loss": 2.5, "lambda": 0.25}
  assert events[2]["scalars"]["loss"] == 1.5 and math.isnan(events[2]["scalars"]["kl"])
  assert events[3]["scalars"] == {"eval/ged_16": 0.75}
  assert all(e["wall_time"] > 1e9 for e in events)


def test_event_file_decodes_with_real_protobufs(tmp_path):
  event_pb2 = pytest.importorskip("tensorboardX.proto.event_pb2")
  with summary.MetricWriter(tmp_path, resume_step=9) as writer:
    writer.write(10, {"train/loss": 3.0})
  events = [event_pb2.Event.FromString(r) for r in _read_records(_event_file(tmp_path))]
  assert events[0].file_version == "brain.Event:2"
  assert events[1].session_log.status == event_pb2.SessionLog.START
  assert events[1].step == 10
  assert events[2].step == 10
  assert events[2].summary.value[0].tag == "train/loss"
  assert events[2].summary.value[0].simple_value == 3.0


def test_event_file_loads_in_tensorboard(tmp_path):
  loader_lib = pytest.importorskip(
      "tensorboard.backend.event_processing.event_file_loader")
  with summary.MetricWriter(tmp_path) as writer:
    writer.write(3, {"loss": 4.0})
  events = list(loader_lib.EventFileLoader(_event_file(tmp_path)).Load())
  assert events[-1].step == 3
  # The loader migrates simple_value to a scalar tensor.
  value = events[-1].summary.value[0]
  assert value.tag == "loss"


def test_jsonl_content(tmp_path):
  with summary.MetricWriter(tmp_path) as writer:
    writer.write(1, {"loss": np.float32(2.0), "count": np.int64(3)})
    writer.write(2, {"kl": float("inf"), "bad": float("nan")}, prefix="eval/")
    with pytest.raises(ValueError, match="'vector'"):
      writer.write(3, {"vector": np.ones(3)})
  lines = open(tmp_path / summary.METRICS_FILE).read().splitlines()
  assert [json.loads(line) for line in lines] == [
      {"step": 1, "loss": 2.0, "count": 3.0},
      {"step": 2, "eval/kl": "inf", "eval/bad": "nan"},
  ]


def test_disabled_writer_writes_nothing(tmp_path):
  with summary.MetricWriter(tmp_path / "run", enabled=False) as writer:
    writer.write(1, {"loss": 1.0})
  assert not os.path.exists(tmp_path / "run")


def test_resume_truncates_jsonl(tmp_path):
  with summary.MetricWriter(tmp_path) as writer:
    for step in (10, 20, 30, 40):
      writer.write(step, {"loss": float(step)})
  with open(tmp_path / summary.METRICS_FILE, "a") as f:
    f.write('{"step": 50, "lo')  # A line cut short by a crash.
  with summary.MetricWriter(tmp_path, resume_step=20) as writer:
    writer.write(30, {"loss": -30.0})
  records = summary.read_jsonl(tmp_path / summary.METRICS_FILE)
  assert records == [{"step": 10, "loss": 10.0}, {"step": 20, "loss": 20.0},
                     {"step": 30, "loss": -30.0}]
  assert not glob.glob(str(tmp_path / "*.tmp*"))
  # Each writer has its own event file; the resumed one starts by telling
  # TensorBoard to drop older events from step 21 on.
  files = sorted(glob.glob(str(tmp_path / "events.out.tfevents.*")))
  assert len(files) == 2
  resumed = [_decode_event(r) for r in _read_records(files[-1])]
  assert resumed[1]["session_log_status"] == 1 and resumed[1]["step"] == 21


def test_write_json_is_atomic_and_sanitised(tmp_path):
  path = tmp_path / "sub" / "evaluation.json"
  summary.write_json(path, {"ged": np.float32(0.5), "per_class": np.arange(3),
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
  progress = summary.Progress(1000, batch_size=32, clock=clock, print_fn=lines.append)
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
  assert summary.format_duration(0) == "0:00:00"
  assert summary.format_duration(3725.4) == "1:02:05"
  assert summary.format_duration(90000) == "25:00:00"
