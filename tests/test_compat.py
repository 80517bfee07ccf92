"""A workdir written before the layer folders (tests/fixtures/workdir_v1) still works.

Its `config.json` keeps the execution settings in the model group; its
checkpoint was written by the package as it was then. It must evaluate,
sample and resume as it is, and a resume may change the execution settings
but not the model.
"""
import json
import os
import shutil

import jax
import jax.numpy as jnp
import pytest

from conftest import run_cli
from hpunet_jax import config_lib
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import writer as writer_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_v1")


def _copy(fixture, tmp_path):
  """A copy of a fixture workdir, so that a test may resume it."""
  workdir = tmp_path / os.path.basename(fixture)
  shutil.copytree(fixture, workdir)
  return str(workdir)


@pytest.fixture
def old_workdir(tmp_path):
  return _copy(FIXTURE, tmp_path)


def test_old_config_moves_the_execution_settings_out_of_the_model_group():
  with open(os.path.join(FIXTURE, "config.json")) as f:
    assert "remat" in json.load(f)["model"]
  config = workdir_lib.Run(FIXTURE).config()
  assert "remat" not in config.model and config.execution.remat is False
  assert config.model.channels_per_block == (4, 8, 8, 8)


def test_old_workdir_restores_its_network_alone_and_samples(old_workdir):
  config, model, params, step = workdir_lib.Run(old_workdir).params()
  assert step == 4 and model.config.channels_per_block == (4, 8, 8, 8)
  images = jnp.zeros((2, 32, 32, 1))
  logits = model.sample(params, jax.random.key(0), images, num_samples=3)
  assert logits.shape == (3, 2, 32, 32, 2) and bool(jnp.isfinite(logits).all())
  del config


@pytest.mark.slow
def test_old_workdir_resumes_with_changed_execution_and_evaluates(old_workdir,
                                                                  synthetic_data_dir):
  data_dir = synthetic_data_dir
  run_cli("experiments.train", "--config=configs/synthetic.py:tiny",
          f"--workdir={old_workdir}", f"--config.data.data_dir={data_dir}",
          "--config.train.num_steps=6", "--config.train.checkpoint_every=6",
          "--config.execution.remat=True")   # fails the test unless it exits 0
  records = writer_lib.read_jsonl(os.path.join(old_workdir, "metrics.jsonl"))
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 4, 5, 6]
  assert workdir_lib.Run(old_workdir).config().execution.remat is True
  run_cli("experiments.evaluate", f"--workdir={old_workdir}", f"--config.data.data_dir={data_dir}")
  with open(os.path.join(old_workdir, "evaluation.json")) as f:
    assert json.load(f)["step"] == 6


@pytest.mark.slow
def test_a_changed_model_field_stops_the_resume_in_one_line(old_workdir, tmp_path):
  proc = run_cli("experiments.train", "--config=configs/synthetic.py:tiny",
                 f"--workdir={old_workdir}", f"--config.data.data_dir={tmp_path / 'tfds'}",
                 "--config.model.blocks_per_level=2", check=False)
  assert proc.returncode == 1
  fatal = [line for line in proc.stderr.splitlines() if line.startswith("FATAL")]
  assert len(fatal) == 1 and "model.blocks_per_level=2 differs from the run" in fatal[0], (
      proc.stderr[-3000:])
  assert "Traceback" not in proc.stderr


@pytest.mark.slow
def test_the_moved_execution_flag_is_named_where_it_went(tmp_path):
  proc = run_cli("experiments.train", "--config=configs/synthetic.py:tiny",
                 f"--workdir={tmp_path / 'run'}", "--config.model.remat=True", check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert "model.remat" in lines[0] and "execution.remat" in lines[0]


PROB_UNET_FIXTURE = os.path.join(ROOT, "tests", "fixtures", "workdir_prob_unet_v1")


@pytest.fixture
def old_prob_unet_workdir(tmp_path):
  return _copy(PROB_UNET_FIXTURE, tmp_path)


def test_old_prob_unet_config_keeps_only_the_fields_its_network_used():
  with open(os.path.join(PROB_UNET_FIXTURE, "config.json")) as f:
    saved = json.load(f)["model"]
  assert "latent_dims" in saved and "prob_unet" in saved   # the HPU-Net's fields beside its own
  config = workdir_lib.Run(PROB_UNET_FIXTURE).config()
  assert set(config.model) == {"name", *config_lib.model_fields("prob_unet")}
  assert (config.model.name, config.model.channels, config.model.latent_dim,
          config.model.num_1x1_convs) == ("prob_unet", (4, 8, 8, 8), 6, 3)
  assert config.model.num_classes == saved["num_classes"]


def test_old_prob_unet_workdir_restores_and_samples(old_prob_unet_workdir):
  _, model, params, step = workdir_lib.Run(old_prob_unet_workdir).params()
  assert step == 4 and model.config.channels == (4, 8, 8, 8)
  logits = model.sample(params, jax.random.key(0), jnp.zeros((2, 32, 32, 1)), num_samples=3)
  assert logits.shape == (3, 2, 32, 32, 2) and bool(jnp.isfinite(logits).all())


@pytest.mark.slow
def test_old_prob_unet_workdir_resumes_and_evaluates(old_prob_unet_workdir, tmp_path):
  data_dir = str(tmp_path / "tfds")
  run_cli("experiments.train", "--config=configs/prob_unet.py:tiny",
          f"--workdir={old_prob_unet_workdir}", f"--config.data.data_dir={data_dir}",
          "--config.train.num_steps=6", "--config.train.checkpoint_every=6")
  records = writer_lib.read_jsonl(os.path.join(old_prob_unet_workdir, "metrics.jsonl"))
  assert [r["step"] for r in records if "loss" in r] == [1, 2, 4, 5, 6]
  with open(os.path.join(old_prob_unet_workdir, "config.json")) as f:
    assert "latent_dims" not in json.load(f)["model"]   # rewritten with the fields used
  run_cli("experiments.evaluate", f"--workdir={old_prob_unet_workdir}",
          f"--config.data.data_dir={data_dir}", "--config.eval.num_examples=2")
  with open(os.path.join(old_prob_unet_workdir, "evaluation.json")) as f:
    assert json.load(f)["step"] == 6
