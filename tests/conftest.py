"""What the tests share: the suite's one tiny experiment config.

`tests/` is on `sys.path` under pytest (and for `tests/parallel_worker.py`,
which imports this module directly).
"""
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # parallel_worker.py runs as a script from tests/
  sys.path.insert(0, ROOT)

from hpunet_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(**model):
  """The base config shrunk to compile in seconds: 16x16 crops, three levels, batch 8.

  `model` overrides fields of the model group (e.g. two levels where a test
  needs them).
  """
  config = config_lib.base_config()
  config.model.channels_per_block = (4, 8, 8)
  config.model.latent_dims = (2, 1)
  config.model.blocks_per_level = 1
  config.model.convs_per_block = 2
  config.model.update(model)
  config.data.crop_size = 16
  config.train.batch_size = 8
  return config
