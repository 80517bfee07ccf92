"""Tests of hpunet_jax.workdir: a run's folder, and the config a tool uses for a run."""
import json
import os
import shutil

import pytest

from configs import lidc
from configs import synthetic
from hpunet_jax import config_lib
from hpunet_jax import workdir as workdir_lib

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "workdir_v1")


def test_a_runs_paths_config_records_and_evaluation(tmp_path):
  shutil.copytree(FIXTURE, tmp_path / "run")
  run = workdir_lib.Run(tmp_path / "run")
  assert run.config_file == tmp_path / "run" / "config.json"
  assert run.checkpoint_dir.name == "checkpoints" and run.checkpoint_dir.exists()
  assert run.config().model.channels_per_block == (4, 8, 8, 8)
  records = run.records()
  with open(os.path.join(FIXTURE, "metrics.jsonl")) as f:
    assert records == [json.loads(line) for line in f]
  evaluated = [r for r in records if any(k.startswith("eval/") for k in r)][-1]
  recorded = run.recorded_evaluation(evaluated["step"])
  assert recorded and all(recorded[k[len("eval/"):]] == v for k, v in evaluated.items()
                          if k.startswith("eval/"))
  assert run.recorded_evaluation(evaluated["step"] + 1) is None
  assert run.evaluation() is None
  run.write_evaluation({"step": 4, "ged_16": 0.5})
  assert run.evaluation() == {"step": 4, "ged_16": 0.5}
  empty = workdir_lib.Run(tmp_path / "empty")
  assert empty.records() == [] and not empty.has_config()
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    empty.config()


def test_write_config_reads_back_as_the_same_config(tmp_path):
  config = lidc.get_config("tiny")
  run = workdir_lib.Run(tmp_path)
  run.write_config(config)
  assert run.config().to_dict() == config.to_dict()


@pytest.fixture
def run_dir(tmp_path):
  config = synthetic.get_config("tiny")
  config.data.data_dir = str(tmp_path / "tfds")
  (tmp_path / "config.json").write_text(config.to_json_best_effort())
  return tmp_path


def test_the_runs_config_with_overrides(run_dir):
  config = workdir_lib.tool_config(run_dir, None, {"eval.num_samples": 7, "eval.split": "test"})
  assert (config.eval.num_samples, config.eval.split) == (7, "test")
  assert config.data.data_dir == str(run_dir / "tfds")          # from the run
  assert config.model.channels_per_block == synthetic.get_config("tiny").model.channels_per_block
  assert isinstance(config.model.channels_per_block, tuple)      # JSON lists back to tuples
  config_lib.validate(config)


def test_a_given_config_must_have_the_runs_data(run_dir):
  other = synthetic.get_config()                                # synthetic_multiscale, not /small
  with pytest.raises(ValueError, match=r"data.name='synthetic_multiscale' differs from the run "
                                       r".*'synthetic_multiscale/small'.*--allow_other_data"):
    workdir_lib.tool_config(run_dir, other)
  assert workdir_lib.tool_config(run_dir, other, allow_other_data=True) is other
  same = synthetic.get_config("tiny")                           # same data, stored elsewhere
  same.data.data_dir = "/elsewhere"
  assert workdir_lib.tool_config(run_dir, same) is same


def test_no_run_config(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json not found"):
    workdir_lib.tool_config(tmp_path)
  assert not list(tmp_path.iterdir())
  assert workdir_lib.tool_config(None, None, {"train.batch_size": 8}).train.batch_size == 8


def test_nested_groups_round_trip_and_take_overrides(tmp_path):
  trained = lidc.get_config("tiny")                                # data.augment on
  (tmp_path / "config.json").write_text(trained.to_json_best_effort())
  config = workdir_lib.tool_config(tmp_path, None, {"data.augment.max_scale": 1.1})
  assert config.data.augment.enabled is True and config.data.augment.max_scale == 1.1
  assert config.data.augment.elastic_spacing == trained.data.augment.elastic_spacing
  assert config.data.augment.max_translation is None
  assert config.to_dict() == {**trained.to_dict(), "data": {
      **trained.data.to_dict(), "augment": {**trained.data.augment.to_dict(), "max_scale": 1.1}}}
