"""End-to-end tests of the command-line tools on a tiny synthetic config."""
import json
import os
import signal

import jax
import numpy as np
from PIL import Image
import pytest
from tensorboard.backend.event_processing import event_accumulator

from conftest import run_cli, start_cli
from configs import synthetic
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import checkpoint
from hpunet_jax.infra import writer as writer_lib
from hpunet_jax.training import loop
from hpunet_jax.data import pipeline


@pytest.fixture(scope="module")
def data_dir(synthetic_data_dir):
  return synthetic_data_dir


@pytest.fixture(scope="module")
def trained(tmp_path_factory, data_dir):
  workdir = str(tmp_path_factory.mktemp("run"))
  proc = run_cli("experiments.train", "--config=configs/synthetic.py:tiny",
                 f"--workdir={workdir}", f"--config.data.data_dir={data_dir}")
  return workdir, proc


@pytest.mark.slow
def test_train_cli_writes_metrics_checkpoints_figures(trained):
  workdir, proc = trained
  rows = writer_lib.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
  train_rows = [r for r in rows if "loss" in r]
  assert [r["step"] for r in train_rows] == [1, 2, 4, 6]
  assert all(np.isfinite(r["loss"]) for r in train_rows)
  eval_rows = [r for r in rows if "eval/ged_16" in r]
  assert [r["step"] for r in eval_rows] == [6] and "eval/exact_ged" in eval_rows[0]
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3, 6]
  for name in ("step_0000006.png", "step_0000006_coarsest_free.png",
               "step_0000006_finest_free.png"):
    image = np.asarray(Image.open(os.path.join(workdir, "figures", name)))
    assert image.shape[2] == 3 and image.shape[0] > 100
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["train"]["num_steps"] == 6
  assert "steps_per_s" not in train_rows[0]  # the first logged step includes compilation
  for row in train_rows[1:]:
    assert row["steps_per_s"] > 0
    assert row["images_per_s"] == pytest.approx(row["steps_per_s"] * config["train"]["batch_size"])
  board = event_accumulator.EventAccumulator(
      workdir, size_guidance={event_accumulator.IMAGES: 0, event_accumulator.TENSORS: 0}).Reload()
  tags = board.Tags()
  assert {"loss", "eval/ged_16", "eval/exact_ged"} <= set(tags["scalars"])
  assert sorted(tags["images"]) == ["figures/all_scales_free", "figures/coarsest_free",
                                    "figures/finest_free"]
  assert [e.step for e in board.Images("figures/all_scales_free")] == [6]
  (config_text,) = board.Tensors("config/text_summary")
  assert b'"num_steps": 6' in config_text.tensor_proto.string_val[0]
  assert "ged_16" in proc.stdout and "exact GED" in proc.stdout     # the final table
  assert "img/s" in proc.stdout and "ETA" in proc.stdout            # progress lines


@pytest.mark.slow
def test_rerun_after_the_end_does_not_train_again(trained, data_dir):
  workdir, _ = trained
  proc = run_cli("experiments.train", "--config=configs/synthetic.py:tiny",
                 f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                 "--config.eval.num_samples=4")
  assert "Already trained to step 6" in proc.stderr
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).latest_step() == 6


def _listing(folder):
  return sorted(os.path.relpath(os.path.join(d, n), folder)
                for d, dirs, files in os.walk(folder) for n in dirs + files)


@pytest.mark.slow
def test_evaluate_and_sample_cli(trained, tmp_path):
  """Both tools read the run's config.json; --config.<group>.<field>= overrides it."""
  workdir, _ = trained
  before = _listing(workdir)
  proc = run_cli("experiments.evaluate", f"--workdir={workdir}", "--config.eval.split=test",
                 "--config.eval.num_samples=16", "--config.eval.num_examples=3")
  results = json.load(open(os.path.join(workdir, "evaluation.json")))
  for key in ("ged_16", "hm_iou_16", "iou_rec", "ncc", "diversity", "exact_ged",
              "exact_ged_floor", "exact_ged_single_guess", "exact_ged_normalised", "match_rate",
              "tvd"):
    assert key in results and key in proc.stdout
  assert results["num_images"] == 3 and results["step"] == 6
  assert results["split"] == "test" and results["num_samples"] == 16
  assert "image 3/3 (100.0%)" in proc.stdout          # progress lines
  # It wrote evaluation.json and nothing else into the run it only reads.
  assert sorted(set(_listing(workdir)) - set(before)) == ["evaluation.json"]
  out = str(tmp_path / "s" / "samples.png")
  proc = run_cli("experiments.sample", f"--workdir={workdir}", f"--output={out}",
                 "--num_samples=4", "--indices=1,3", "--config.eval.split=test")
  arrays = np.load(str(tmp_path / "s" / "samples.npz"))
  assert arrays["samples"].shape == (4, 2, 32, 32)
  assert list(arrays["indices"]) == [1, 3]
  assert os.path.exists(str(tmp_path / "s" / "samples_finest_free.png"))
  assert "figure 3/3 (100.0%)" in proc.stdout


@pytest.mark.slow
def test_tools_refuse_other_data_and_non_runs_creating_nothing(trained, tmp_path):
  workdir, _ = trained
  before = _listing(workdir)
  proc = run_cli("experiments.evaluate", f"--workdir={workdir}", "--config=configs/synthetic.py",
                 check=False, timeout=300)
  assert proc.returncode != 0
  assert "data.name='synthetic_multiscale' differs from the run" in proc.stderr
  assert "--allow_other_data" in proc.stderr
  assert _listing(workdir) == before
  empty = tmp_path / "not_a_run"
  empty.mkdir()
  for module, extra in (("experiments.evaluate", []),
                        ("experiments.sample", [f"--output={tmp_path / 'x.png'}"])):
    proc = run_cli(module, f"--workdir={empty}", *extra, check=False, timeout=300)
    assert proc.returncode != 0 and f"{empty}/config.json not found" in proc.stderr
  assert not list(empty.iterdir())


@pytest.mark.parametrize("override,message", [
    ("--config.train.batch_size=-8", "train.batch_size"),
    pytest.param("--config.train.batch_size=abc", "batch_size", marks=pytest.mark.slow),
    ("--config.model.bogus=3", "bogus"),
    pytest.param("--config.loss.type=mse", "loss.type", marks=pytest.mark.slow),
    pytest.param("--config.model.channels_per_block=(4,8,8,8,8,8,8)", "data",
                 marks=pytest.mark.slow),
])
def test_bad_overrides_stop_with_a_message_naming_the_field(tmp_path, data_dir, override,
                                                             message):
  proc = run_cli("experiments.train", "--config=configs/synthetic.py:tiny",
                 f"--workdir={tmp_path / 'w'}", f"--config.data.data_dir={data_dir}", override,
                 check=False, timeout=300)
  assert proc.returncode != 0
  assert message in proc.stderr, proc.stderr[-3000:]
  assert not os.path.exists(tmp_path / "w" / "checkpoints" / "1")


def _tiny(data_dir, **train):
  config = synthetic.get_config("tiny")
  config.data.data_dir = data_dir
  config.train.eval_every = 1000
  config.eval.num_samples = 4
  config.eval.num_examples = 2
  for key, value in train.items():
    config.train[key] = value
  return config


def _final_params(workdir, config):
  _, _, params, step = workdir_lib.Run(workdir).params(config)
  return step, jax.tree.leaves(params)


@pytest.mark.slow
def test_stop_and_resume_equals_uninterrupted(tmp_path, data_dir):
  straight, resumed = str(tmp_path / "straight"), str(tmp_path / "resumed")
  loop.train_and_evaluate(_tiny(data_dir, num_steps=6), straight)
  loop.train_and_evaluate(_tiny(data_dir, num_steps=3), resumed)
  loop.train_and_evaluate(_tiny(data_dir, num_steps=6), resumed)   # raising num_steps resumes
  step_a, params_a = _final_params(straight, _tiny(data_dir, num_steps=6))
  step_b, params_b = _final_params(resumed, _tiny(data_dir, num_steps=6))
  assert step_a == step_b == 6
  for a, b in zip(params_a, params_b):
    np.testing.assert_array_equal(a, b)
  rows_a = [r for r in writer_lib.read_jsonl(os.path.join(straight, "metrics.jsonl")) if "loss" in r]
  rows_b = [r for r in writer_lib.read_jsonl(os.path.join(resumed, "metrics.jsonl")) if "loss" in r]
  timing = ("steps_per_s", "images_per_s")   # wall-clock rates differ between runs
  drop_timing = lambda row: {k: v for k, v in row.items() if k not in timing}
  assert drop_timing(rows_a[-1]) == drop_timing(rows_b[-1])


def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    tmp_path, data_dir, monkeypatch):
  make = pipeline.make_train_iterator

  class Poisoned:
    """Yields NaN images from the 5th batch on."""

    def __init__(self, inner):
      self.inner, self.count = inner, 0

    def __next__(self):
      batch = next(self.inner)
      self.count += 1
      if self.count >= 5:
        batch = dict(batch, image=np.full_like(batch["image"], np.nan))
      return batch

    def get_state(self):
      return self.inner.get_state()

    def set_state(self, state):
      self.inner.set_state(state)

  monkeypatch.setattr(pipeline, "make_train_iterator", lambda *a, **k: Poisoned(make(*a, **k)))
  workdir = str(tmp_path / "nan")
  # The first next() only peeks at shapes (the iterator is rewound), so step 4 sees the 5th batch.
  with pytest.raises(loop.NonFiniteError, match=r"at step 4.*last good checkpoint is step 3"):
    loop.train_and_evaluate(_tiny(data_dir, num_steps=6, log_every=1), workdir)
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [3]


@pytest.mark.slow
def test_sigterm_saves_and_exits_cleanly(tmp_path, data_dir):
  workdir = str(tmp_path / "preempt")
  run = start_cli("experiments.train", "--config=configs/synthetic.py:tiny",
                  f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
                  "--config.train.num_steps=100000", "--config.train.log_every=1",
                  "--config.train.checkpoint_every=100000")
  try:
    run.wait_for("step 3/", timeout=300)
    run.proc.send_signal(signal.SIGTERM)
    output = run.rest(timeout=120)
  finally:
    run.kill()
  assert run.proc.returncode == 0, output[-3000:]
  assert "Stopped at step" in output
  steps = checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps()
  assert len(steps) == 1 and 3 <= steps[0] < 100000
