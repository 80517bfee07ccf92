"""An ablation: the HPU-Net with one global latent, on the synthetic dataset.

    python -m experiments.train --config=configs/hpunet_one_scale.py --workdir=runs/hpunet_one_scale

Not the Prob. U-Net of Kohl et al. 2018 (that is `configs/prob_unet.py`): the HPU-Net of
`configs/synthetic.py` reduced to a single latent scale at the coarsest level
(1x1) with a 6-dimensional latent, trained with the ELBO (beta = 1) instead of
GECO. The original Prob. U-Net injects its latent only at the last layer of a
separate U-Net; here it enters the same decoder as the HPU-Net's coarsest
latent, so the comparison isolates the latent hierarchy and the objective.

Runtime: as `configs/synthetic.py` (7.7 CPU-minutes measured on the 2-core
development VM, 2026-11-28). Expected
numbers (first 100 test images, 100 samples): exact GED 0.063 (HPU-Net 0.050),
normalised exact GED 0.14 (HPU-Net 0.11), IoU_rec 0.99, match rate 0.47,
TVD 0.56, GED100 0.22, HM-IoU16 0.59.
"""
from configs import common
from hpunet_jax import config_lib


def get_config(arg=None):
  tiny = common.parse_arg("configs/hpunet_one_scale.py", arg) == "tiny"
  config = config_lib.base_config()
  common.synthetic_multiscale_budget(config, tiny)

  # The network of configs/synthetic.py with one 6-d latent at 1x1.
  common.hpunet_model(config, channels_per_block=(8, 16, 16, 16, 16, 16, 16),
                      latent_dims=(6,))
  common.elbo_loss(config, beta=1.0)
  config.loss.kappa = 0.02   # GECO's, as in configs/synthetic.py; the ELBO does not read it

  if tiny:
    common.tiny_hpunet(config)   # as configs/synthetic.py:tiny, the one latent kept
  return config
