"""The training CLI as a two-process job on localhost, as a pod or a SLURM job runs it.

Two processes of `python -m experiments.train --distributed` find each other
through `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and `JAX_PROCESS_ID`
(the variables docs/distributed.md documents), talk through gloo, share one workdir and
one data_dir, are preempted by a SIGTERM to process 1 only, and resume. Their
metrics must equal those of one process with the same global batch.
`experiments.evaluate --distributed` and `experiments.sample --distributed`
run the same way on a trained workdir.
"""
import json
import os
import shutil
import signal
import socket

import numpy as np
import pytest

from conftest import ROOT, run_cli, start_cli
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import writer as writer_lib

pytestmark = pytest.mark.slow   # two-process jobs of the CLIs, minutes each

TINY = "--config=configs/synthetic.py:tiny"
TIMEOUT_S = 240


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _start(args, num_processes, port, module="experiments.train", config=(TINY,)):
  procs = []
  for process_id in range(num_processes):
    env = dict(JAX_COORDINATOR_ADDRESS=f"localhost:{port}", JAX_NUM_PROCESSES=str(num_processes),
               JAX_PROCESS_ID=str(process_id))
    procs.append(start_cli(module, *config, "--distributed", *args, env=env))
  return procs


def _finish(procs, timeout=TIMEOUT_S):
  outputs = []
  try:
    for proc in procs:
      outputs.append(proc.rest(timeout=timeout))
  finally:
    for proc in procs:
      proc.kill()
  for i, (proc, output) in enumerate(zip(procs, outputs)):
    assert proc.proc.returncode == 0, (
        f"process {i} failed ({proc.proc.returncode}):\n{output[-4000:]}")
  return outputs


def _records(workdir):
  return writer_lib.read_jsonl(os.path.join(workdir, writer_lib.METRICS_FILE))


def _event_files(workdir):
  return sorted(n for n in os.listdir(workdir) if n.startswith("events.out.tfevents"))


def test_two_processes_preempted_resume_and_match_one_process(tmp_path):
  data_dir, workdir, single = tmp_path / "tfds", tmp_path / "run", tmp_path / "single"
  common = [f"--config.data.data_dir={data_dir}", "--config.train.log_every=1",
            "--config.train.checkpoint_every=100000", "--config.train.eval_every=100000",
            "--config.eval.num_samples=4"]

  # Preemption: a SIGTERM to process 1 alone stops both at the same step, with a checkpoint.
  procs = _start([f"--workdir={workdir}", *common, "--config.train.num_steps=100000"], 2,
                 _free_port())
  try:
    procs[0].wait_for("step 2/", timeout=TIMEOUT_S)
    procs[1].proc.send_signal(signal.SIGTERM)
  finally:
    outputs = _finish(procs)
  stopped = [int(o.split("Stopped at step ")[1].split()[0]) for o in outputs
             if "Stopped at step " in o]
  assert len(stopped) == 2 and stopped[0] == stopped[1], outputs
  # jax's preemption service (through orbax) chose the step, on both processes.
  assert all("Preemption noticed by the processes" in o for o in outputs), outputs
  preempted_at = stopped[0]
  assert sorted(int(n) for n in os.listdir(workdir / "checkpoints")
                if n.isdigit()) == [preempted_at]

  # Rerunning the same command (with a reachable end) resumes, trains on, evaluates and draws.
  num_steps = preempted_at + 2
  # The one-process reference (same global batch) runs meanwhile, on its own data_dir.
  reference = start_cli("experiments.train", TINY, f"--workdir={single}", *common,
                        f"--config.data.data_dir={tmp_path / 'tfds_single'}",
                        f"--config.train.num_steps={num_steps}")
  try:
    _finish(_start([f"--workdir={workdir}", *common, f"--config.train.num_steps={num_steps}"],
                   2, _free_port()))
  finally:
    reference_output = _finish([reference])[0]
  assert f"{num_steps}" in os.listdir(workdir / "checkpoints")
  assert any(n.startswith(f"step_{num_steps:07d}") for n in os.listdir(workdir / "figures"))
  # Only process 0 writes: one event file per start, every step logged once.
  assert len(_event_files(workdir)) == 2
  records = _records(workdir)
  train = [r for r in records if "loss" in r]
  assert [r["step"] for r in train] == list(range(1, num_steps + 1))
  assert sum(any(k.startswith("eval/") for k in r) for r in records) == 1

  # One process, the same global batch: the same numbers.
  assert "Stopped at step" not in reference_output
  expected = _records(single)
  assert [r["step"] for r in expected] == [r["step"] for r in records]
  for got, want in zip(records, expected):
    for key, value in want.items():
      if key.endswith("_per_s"):   # wall-clock rates
        continue
      if isinstance(value, (int, float)):
        np.testing.assert_allclose(got[key], value, rtol=2e-4, atol=1e-5,
                                   err_msg=f"{key} at step {want['step']}")


def test_evaluate_and_sample_on_two_processes_match_one(tmp_path, synthetic_data_dir):
  workdir = tmp_path / "run"
  shutil.copytree(os.path.join(ROOT, "tests", "fixtures", "workdir_v1"), workdir)
  common = [f"--workdir={workdir}", f"--config.data.data_dir={synthetic_data_dir}",
            "--config.eval.num_examples=6", "--config.eval.num_samples=8",
            "--config.eval.batch_size=4", "--config.eval.sample_chunk=3"]
  # The data the run was trained on.
  assert workdir_lib.Run(str(workdir)).config().data.name == "synthetic_multiscale/small"
  single = run_cli("experiments.evaluate", *common, timeout=TIMEOUT_S)
  assert "Evaluating on 1 device (cpu) of 1 process" in single.stdout
  with open(workdir / "evaluation.json") as f:
    expected = json.load(f)
  os.remove(workdir / "evaluation.json")

  outputs = _finish(_start(common, 2, _free_port(), module="experiments.evaluate", config=()))
  assert "Evaluating on 2 devices (cpu) of 2 processes" in outputs[0]
  assert "Evaluating on" not in outputs[1] and "ged_16" not in outputs[1]   # process 0 reports
  with open(workdir / "evaluation.json") as f:
    got = json.load(f)
  assert got["num_images"] == expected["num_images"] == 6
  for key, value in expected.items():
    if isinstance(value, float):
      np.testing.assert_allclose(got[key], value, rtol=1e-5, atol=1e-7, err_msg=key)

  output = str(tmp_path / "samples.png")
  _finish(_start([f"--workdir={workdir}", f"--config.data.data_dir={synthetic_data_dir}",
                  f"--output={output}", "--num_samples=4", "--indices=0,1"], 2, _free_port(),
                 module="experiments.sample", config=()))
  assert os.path.exists(output) and os.path.exists(output[:-len(".png")] + ".npz")
