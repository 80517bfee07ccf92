"""The release's Prob. U-Net on `synthetic_grid`, at the budget of `configs/synthetic_grid.py`.

    python -m experiments.train --config=configs/prob_unet_grid.py --workdir=runs/grid_prob
    python -m experiments.evaluate --workdir=runs/grid_prob --config.eval.split=test

The network of `configs/prob_unet.py` (the release's: 7 levels, 3 convs per
block, one global 6-d latent, three 1x1 convs in f_comb; at a quarter of its
widths, 8..48 channels) trained with the release's ELBO (beta 1, L2 1e-5 on
the weights) on the same data, steps, batch, optimiser and seed as the
HPU-Net of `configs/synthetic_grid.py` (`common.synthetic_grid_budget`).

Runtime: 22.9 CPU-minutes (48 min wall on the shared 2-core development VM,
2026-12-02, beside the HPU-Net's run). Expected numbers (test, first 100
images, 100 samples; docs/results.md, "The grid"): mean per-object TVD 0.373
[0.371, 0.375], mean pairwise MI 0.032 nats, fidelity 0.869, P(absent) of the
three-state objects 0.004 (truth 0.30), IoU_rec 0.59.

`:tiny`: the `small` grid data, 4 levels of 4-8 channels, a few steps.
"""
from configs import common
from hpunet_jax import config_lib


def get_config(arg=None):
  tiny = common.parse_arg("configs/prob_unet_grid.py", arg) == "tiny"
  config = config_lib.base_config()
  common.synthetic_grid_budget(config, tiny)
  common.quarter_release_prob_unet(config, num_levels=len(common.RELEASE_CHANNELS))
  if tiny:
    common.tiny_prob_unet(config)
  return config
