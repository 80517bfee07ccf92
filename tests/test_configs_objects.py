"""The `synthetic_objects` configs: validated, and run end to end through the CLIs (`:tiny`)."""
import json
import math
import os

import pytest

from conftest import run_cli
from configs import hpunet_one_scale_objects, prob_unet_objects, synthetic_objects
from hpunet_jax import config_lib

def test_configs_are_valid_and_differ_only_where_documented():
  hpu, prob = synthetic_objects.get_config(), hpunet_one_scale_objects.get_config()
  config_lib.validate(hpu)
  config_lib.validate(prob)
  assert hpu.data.name == prob.data.name == "synthetic_objects"
  assert hpu.model.latent_dims != prob.model.latent_dims and len(prob.model.latent_dims) == 1
  assert (hpu.loss.type, prob.loss.type) == ("geco", "elbo")
  for group in ("optim", "train", "data"):
    assert hpu[group].to_dict() == prob[group].to_dict(), group
  assert synthetic_objects.get_config("tiny").data.name == "synthetic_objects/small"
  # The release's Prob. U-Net at the HPU-Net's budget: only the model and its loss differ.
  release = prob_unet_objects.get_config()
  config_lib.validate(release)
  assert (release.model.name, release.model.channels) == (
      "prob_unet", (8, 16, 32, 48, 48, 48))
  assert (release.loss.type, release.loss.beta, release.loss.l2_weight) == ("elbo", 1.0, 1e-5)
  for group in ("optim", "train", "data", "eval"):
    assert hpu[group].to_dict() == release[group].to_dict(), group
  for arg in ("tiny", None):
    assert (prob_unet_objects.get_config(arg).train.to_dict()
            == synthetic_objects.get_config(arg).train.to_dict())
  with pytest.raises(ValueError, match="prob_unet_objects.py: unknown argument"):
    prob_unet_objects.get_config("huge")
  with pytest.raises(ValueError, match="unknown argument"):
    synthetic_objects.get_config("huge")


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/synthetic_objects.py:tiny",
                                    "configs/hpunet_one_scale_objects.py:tiny"])
def test_tiny_config_trains_and_evaluates_per_object(config, tmp_path, objects_data_dir):
  data_dir, workdir = objects_data_dir, str(tmp_path / "run")
  train = run_cli("experiments.train", f"--config={config}", f"--workdir={workdir}",
                  f"--config.data.data_dir={data_dir}", timeout=1800)
  assert "joint TVD" in train.stdout
  evaluate = run_cli("experiments.evaluate", f"--workdir={workdir}", "--config.eval.split=test",
                     "--config.eval.num_samples=16", "--config.eval.num_examples=4",
                     timeout=1800)
  results = json.load(open(os.path.join(workdir, "evaluation.json")))
  for key in ("joint_tvd", "fidelity", "object_tvd_0", "object_tvd_2", "fidelity_1"):
    assert 0.0 <= results[key] <= 1.0, key
  assert 0.0 <= results["mutual_information"] <= math.log(8)
  assert math.isfinite(results["exact_ged_normalised"])
  assert "object 1: TVD" in evaluate.stdout
  if "synthetic_objects" in config:
    assert "only 2x2 free" in evaluate.stdout
    assert set(results["object_scales"]) >= {"all scales free", "only 1x1 free"}
  else:
    assert list(results["object_scales"]) == ["all scales free", "none free (all means)"]
