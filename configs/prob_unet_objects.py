"""The release's Prob. U-Net on `synthetic_objects` at the budget of `configs/synthetic_objects.py`.

    python -m experiments.train --config=configs/prob_unet_objects.py --workdir=runs/objects_prob
    python -m experiments.evaluate --workdir=runs/objects_prob --config.eval.split=test

The network of `configs/prob_unet.py` (the release's: 3 convs per block, one
global 6-d latent, three 1x1 convs in f_comb) with 6 levels for the 32x32
images, at a quarter of the release's widths (8..48 channels), trained with
the release's ELBO (beta 1, L2 1e-5 on the weights) on the same data, steps,
batch, optimiser and seed as the HPU-Net of `configs/synthetic_objects.py`
(`common.synthetic_objects_budget`). The one-scale HPU-Net ablation on
this data is `configs/hpunet_one_scale_objects.py`.

`:tiny`: the `small` objects data, 4 levels of 4-8 channels, a few steps.
"""
from configs import common
from hpunet_jax import config_lib


def get_config(arg=None):
  tiny = common.parse_arg("configs/prob_unet_objects.py", arg) == "tiny"
  config = config_lib.base_config()
  common.synthetic_objects_budget(config, tiny)
  common.quarter_release_prob_unet(config, num_levels=6)   # 32x32 down to 1x1
  if tiny:
    common.tiny_prob_unet(config)
  return config
