"""The Prob. U-Net-like baseline of `configs/prob_unet.py` on `synthetic_objects`.

    python -m experiments.train --config=configs/prob_unet_objects.py --workdir=runs/prob_unet_objects
    python -m experiments.evaluate --config=configs/prob_unet_objects.py \
        --workdir=runs/prob_unet_objects --num_examples=100

`configs/synthetic_objects.py` with a single 6-dimensional latent at the
coarsest level (1x1) and the ELBO (beta = 1) instead of GECO; same data,
network, optimiser and steps, so the comparison isolates the latent
hierarchy and the objective. Runtime and expected numbers: see EXPECTED and
README.md ("Several independent objects").

`:tiny` as in `configs/synthetic_objects.py`.
"""
from configs import synthetic_objects

EXPECTED = {}


def get_config(arg=None):
  config = synthetic_objects.get_config(arg)
  config.model.latent_dims = (6,)
  config.loss.type = "elbo"
  config.loss.beta = 1.0
  return config
