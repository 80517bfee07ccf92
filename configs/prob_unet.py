"""A Prob. U-Net-like baseline on the synthetic dataset, in the same code.

    python -m experiments.train --config=configs/prob_unet.py --workdir=runs/prob_unet

A baseline, not a replica of Kohl et al. 2018: the HPU-Net of
`configs/synthetic.py` reduced to a single latent scale at the coarsest level
(1x1) with a 6-dimensional latent, trained with the ELBO (beta = 1) instead of
GECO. The original Prob. U-Net injects its latent only at the last layer of a
separate U-Net; here it enters the same decoder as the HPU-Net's coarsest
latent, so the comparison isolates the latent hierarchy and the objective.

Runtime and expected numbers: as `configs/synthetic.py` (README table).
"""
from configs import synthetic


def get_config(arg=None):
  config = synthetic.get_config(arg)
  config.model.latent_dims = (6,)
  config.loss.type = "elbo"
  config.loss.beta = 1.0
  return config
