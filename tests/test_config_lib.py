"""Tests of hpunet_jax.config_lib: overrides by name, and the one line for an unknown field."""
import sys

import pytest

from hpunet_jax import config_lib


def test_apply_overrides_names_unknown_fields():
  config = config_lib.base_config()
  config_lib.apply_overrides(config, {"execution.remat": True})
  assert config.execution.remat is True
  with pytest.raises(ValueError, match="model.bogus: the config has no field"):
    config_lib.apply_overrides(config, {"model.bogus": 1})
  with pytest.raises(ValueError, match="modle.remat: the config has no group 'modle'"):
    config_lib.apply_overrides(config, {"modle.remat": True})


@pytest.mark.parametrize("argv, line", [
    (["train", "--config=configs/prob_unet.py:tiny", "--config.model.latent_dims=1,1"],
     "--config.model.latent_dims: model.latent_dims is not a field of model 'prob_unet' "
     "(a field of model 'hpunet'); its fields: latent_dim, channels, num_classes, "
     "convs_per_block, num_1x1_convs, activation"),
    (["train", "--config=configs/synthetic.py:tiny", "--config.train.num_stepz=5"],
     "--config.train.num_stepz: the config has no field train.num_stepz "
     "(did you mean train.num_steps?)"),
    (["train", "--config=configs/synthetic.py:tiny", "--config.model.remat=True"],
     "--config.model.remat: model.remat is not a field of model 'hpunet'; its fields: "
     "latent_dims, channels_per_block, down_channels_per_block, num_classes, convs_per_block, "
     "blocks_per_level, activation, max_abs_log_sigma "
     "(it is execution.remat: settings that change no parameter)"),
    (["train", "--config=configs/synthetic.py:tiny", "--config.modle.remat=True"],
     "--config.modle.remat: the config has no group modle"),
])
def test_an_unknown_override_gets_one_line_naming_it(argv, line, monkeypatch):
  """The errors ml_collections raises for these overrides, read back into one line."""
  monkeypatch.setattr(sys, "argv", argv)   # ml_collections reads the overrides from sys.argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top
  from experiments import cli  # pylint: disable=g-import-not-at-top
  values = flags.FlagValues()
  config_flags.DEFINE_config_file("config", lock_config=True, flag_values=values)
  with pytest.raises((AttributeError, KeyError)) as error:
    values(argv)
  assert cli.unknown_field_message(error.value, argv) == line

