"""Fault injection: the training CLI under kill -9, a second run, corrupt checkpoints, a full disk.

Each test runs `python -m experiments.train` on the tiny synthetic config in
subprocesses with bounded timeouts, injects a fault from outside (a signal, a
damaged file, a tiny filesystem) and checks what the run leaves behind: one
writer per workdir, every step's records exactly once, checkpoints that are
verified and fall back, and errors that name the culprit in one line.
"""
import os
import shutil
import signal
import subprocess

import pytest

from conftest import Started, run_cli, run_python
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import checkpoint, lease
from hpunet_jax.infra import writer as writer_lib

TIMEOUT = 240   # seconds for one CLI run on a busy 2-core machine
# Every step logged; an evaluation (with figures) and a checkpoint every 3 steps.
CHAIN = ("--config.train.log_every=1", "--config.train.eval_every=3",
         "--config.eval.num_samples=4", "--config.eval.num_examples=2",
         "--config.eval.num_figure_examples=1")


def _train_args(workdir, data_dir, *overrides):
  """The training CLI's arguments to `python`."""
  return ["-m", "experiments.train", "--config=configs/synthetic.py:tiny",
          f"--workdir={workdir}", f"--config.data.data_dir={data_dir}", *overrides]


def _kill_9_at(args, text):
  """Runs the CLI and kills it with SIGKILL as soon as a line contains `text`."""
  run = Started(args)
  try:
    run.wait_for(text, timeout=TIMEOUT)
  finally:
    run.kill()
  return "".join(run.lines)


def _records(workdir):
  rows = writer_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train = [r["step"] for r in rows if "loss" in r]
  evals = [r["step"] for r in rows if any(k.startswith("eval/") for k in r)]
  return train, evals


def _flip_byte(step_dir):
  """Flips a byte in the middle of the largest file of the step's merged OCDBT store.

  After a save, orbax merges the per-process stores into `state/d/`, which is
  what a restore reads (the per-process copies are not read again). For the
  tiny model the arrays sit inline in b-tree nodes, which tensorstore checks
  (CRC-32C); large arrays, in files of their own, are not checked by
  tensorstore, only by the checkpoint's own checksums (tests/test_checkpoint.py).
  """
  root = os.path.join(step_dir, "state", "d")
  path = max((os.path.join(root, name) for name in os.listdir(root)), key=os.path.getsize)
  with open(path, "r+b") as f:
    data = bytearray(f.read())
    data[len(data) // 2] ^= 0x40
    f.seek(0)
    f.write(data)
  return path


@pytest.fixture(scope="module")
def data_dir(synthetic_data_dir):
  """The tiny synthetic data, prepared once for the session."""
  return synthetic_data_dir


@pytest.fixture(scope="module")
def killed_twice(tmp_path_factory, data_dir):
  """One workdir through three faults, then run to the end:

  1. a second run starts while the first is alive (the first is frozen with
     SIGSTOP after step 2, so it holds the workdir and has no checkpoint yet);
  2. the first is killed with SIGKILL there, before its first checkpoint;
  3. the next run is killed with SIGKILL between the evaluation of step 3 and
     step 3's checkpoint;
  4. a last run finishes.
  """
  workdir = str(tmp_path_factory.mktemp("killed"))
  args = _train_args(workdir, data_dir, *CHAIN)
  first = Started(args)
  try:
    first.wait_for("step 2/6", timeout=TIMEOUT)
    first.proc.send_signal(signal.SIGSTOP)
    second = run_python(*args, timeout=TIMEOUT, check=False)
  finally:
    first.kill()
  outputs = ["".join(first.lines), _kill_9_at(args, "Evaluation at step 3")]
  last = run_python(*args, timeout=TIMEOUT, check=False)
  assert last.returncode == 0, last.stderr[-3000:]
  outputs.append(last.stdout + last.stderr)
  return workdir, args, outputs, second, first.proc.pid


@pytest.mark.slow
def test_second_run_on_a_workdir_refuses_naming_the_first(killed_twice):
  _, _, _, second, first_pid = killed_twice
  assert second.returncode != 0
  assert f"is in use by pid {first_pid} on host" in second.stderr, second.stderr[-3000:]
  assert "step 1/" not in second.stdout                      # it trained nothing


@pytest.mark.slow
def test_kill_9_before_and_after_evaluation_leaves_every_record_once(killed_twice):
  workdir, _, outputs, _, _ = killed_twice
  train, evals = _records(workdir)
  assert train == [1, 2, 3, 4, 5, 6]
  assert evals == [3, 6]
  for step in (3, 6):
    assert os.path.exists(os.path.join(workdir, "figures", f"step_{step:07d}.png"))
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3, 6]
  # Each kill left its lease behind; the next run took it over with a warning.
  for output in outputs[1:]:
    assert "Taking over the stale lease" in output
  assert not os.path.exists(os.path.join(workdir, lease.LEASE_FILE))   # released at the end


@pytest.mark.slow
def test_rerunning_a_finished_run_does_not_evaluate_again(killed_twice):
  workdir, args, *_ = killed_twice
  proc = run_python(*args, timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "Already trained to step 6" in proc.stderr
  assert _records(workdir) == ([1, 2, 3, 4, 5, 6], [3, 6])


@pytest.mark.slow
def test_flipped_byte_in_the_latest_checkpoint_falls_back_and_keeps_it(killed_twice):
  workdir, args, *_ = killed_twice
  _flip_byte(os.path.join(workdir, "checkpoints", "6"))
  proc = run_python(*args, timeout=TIMEOUT, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "checkpoint step 6" in proc.stderr
  assert "is corrupt" in proc.stderr or "cannot be read" in proc.stderr
  assert "Resuming from step 3 instead of step 6" in proc.stderr
  kept = os.path.join(workdir, "checkpoints.corrupt", "6")
  assert os.path.isdir(kept)                      # set aside, never deleted
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3, 6]
  assert _records(workdir) == ([1, 2, 3, 4, 5, 6], [3, 6])


@pytest.mark.slow
def test_truncated_checkpoint_file_is_skipped_by_a_reader(killed_twice):
  workdir, *_ = killed_twice
  step_dir = os.path.join(workdir, "checkpoints", "6")
  files = [os.path.join(root, name) for root, _, names in os.walk(os.path.join(step_dir, "state"))
           if os.path.basename(root) == "d" for name in names]
  for path in files:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)
  # What experiments.evaluate and experiments.sample load with.
  _, _, params, step = workdir_lib.Run(workdir).params()
  assert step == 3 and params
  assert os.path.isdir(step_dir)                  # a reader never moves or deletes


@pytest.fixture
def tiny_filesystem(tmp_path):
  """A 256 KiB tmpfs: room for the run's small files, not for a checkpoint."""
  mount_point = tmp_path / "full"
  mount_point.mkdir()
  if shutil.which("mount") is None or not hasattr(os, "geteuid") or os.geteuid() != 0:
    pytest.skip("mounting a tmpfs needs root")
  proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)],
                        capture_output=True, text=True, timeout=60)
  if proc.returncode != 0:
    pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
  yield str(mount_point)
  subprocess.run(["umount", "-l", str(mount_point)], check=False, timeout=60)


@pytest.mark.slow
def test_save_into_a_full_filesystem_stops_training_before_evaluating(tiny_filesystem, data_dir):
  workdir = os.path.join(tiny_filesystem, "run")
  proc = run_python(*_train_args(workdir, data_dir, "--config.train.log_every=1"),
                    timeout=TIMEOUT, check=False)
  assert proc.returncode != 0
  # The traceback's last line (orbax's asyncio noise may follow it).
  errors = [line for line in proc.stderr.splitlines() if "CheckpointSaveError: " in line]
  assert errors, proc.stderr[-3000:]
  error = errors[-1]
  assert "saving step 3 in" in error and "No space left on device" in error, error
  # Stopped once the failure was known: at a step boundary after the save gave
  # up, at the latest before the next evaluation (which waits for the save).
  _, evals = _records(workdir)
  assert not evals and not os.path.exists(os.path.join(workdir, "figures"))
  assert not [n for n in os.listdir(workdir) if ".tmp" in n or n == lease.LEASE_FILE]
  left = [name for name in os.listdir(os.path.join(workdir, "checkpoints"))
          if ".orbax-checkpoint-tmp" in name]
  assert not left or all(name in error for name in left)


def test_unknown_override_is_named_in_one_line(tmp_path, data_dir):
  proc = run_python(*_train_args(tmp_path / "w", data_dir, "--config.model.foo=1"), timeout=120,
                    check=False)
  assert proc.returncode != 0
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "model.foo" in lines[0], proc.stderr[-3000:]


@pytest.mark.parametrize("module", ["experiments.evaluate",
                                    pytest.param("experiments.sample", marks=pytest.mark.slow)])
def test_unknown_override_of_a_reading_tool_is_named_in_one_line(tmp_path, module):
  # These tools' --config has a default file, so ml_collections applies the
  # overrides when the flag is defined, before any flag parser runs.
  proc = run_cli(module, f"--workdir={tmp_path}", "--config.eval.foo=1", timeout=120,
                 check=False)
  assert proc.returncode == 1
  lines = proc.stderr.strip().splitlines()
  assert len(lines) == 1 and "eval.foo" in lines[0], proc.stderr[-3000:]


@pytest.mark.slow
def test_evaluate_on_a_mistyped_workdir_creates_nothing(tmp_path, data_dir):
  typo = tmp_path / "typo"
  proc = run_cli("experiments.evaluate", "--config=configs/synthetic.py:tiny", f"--workdir={typo}",
                 f"--config.data.data_dir={data_dir}", timeout=180, check=False)
  assert proc.returncode != 0
  assert str(typo) in proc.stderr
  assert not os.path.exists(typo)
