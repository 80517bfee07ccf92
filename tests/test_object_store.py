"""The training CLI with --workdir and data.data_dir on gs://: everything lands in the store.

`tests/fake_gcs.py` serves `gs://` from a local folder through fsspec, the
filesystem layer `etils.epath` uses for `gs://` (gcsfs in real use), and
points TensorStore's GCS kvstore (orbax's arrays) at the same folder. The run
must leave its checkpoint, metrics, events, figures and dataset there, and
nothing in the directory it was started from.
"""
import os
import subprocess
import sys

from tensorboard.backend.event_processing import event_accumulator

from hpunet_jax.infra import writer as writer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _listing(folder):
  return sorted(os.path.relpath(os.path.join(d, f), folder)
                for d, _, files in os.walk(folder) for f in files)


def test_gs_workdir_and_data_dir_are_written_to_the_object_store(tmp_path):
  store, cwd = tmp_path / "store", tmp_path / "cwd"
  (store / "bucket").mkdir(parents=True)
  cwd.mkdir()
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  proc = subprocess.run(
      [sys.executable, os.path.join(ROOT, "tests", "fake_gcs.py"), str(store),
       "experiments.train", f"--config={os.path.join(ROOT, 'configs', 'synthetic.py')}:tiny",
       "--workdir=gs://bucket/run", "--config.data.data_dir=gs://bucket/tfds",
       "--config.eval.num_samples=4"],
      cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]

  assert _listing(cwd) == [] and not os.path.exists(os.path.join(ROOT, "gs:"))
  run = store / "bucket" / "run"
  files = _listing(run)
  assert "config.json" in files
  assert any(f.startswith("checkpoints/6/") for f in files), files
  events = [f for f in files if f.startswith("events.out.tfevents")]
  assert len(events) == 1, files
  accumulator = event_accumulator.EventAccumulator(str(run / events[0]))
  accumulator.Reload()
  assert [e.step for e in accumulator.Scalars("loss")] == [1, 2, 4, 6]
  assert any(f.startswith("figures/step_0000006") and f.endswith(".png") for f in files), files
  records = writer_lib.read_jsonl(run / writer_lib.METRICS_FILE)
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 4, 6]
  assert any(any(k.startswith("eval/") for k in r) for r in records)
  # The dataset was built and uploaded: its files are in the store.
  assert any("dataset_info.json" in f for f in _listing(store / "bucket" / "tfds"))
