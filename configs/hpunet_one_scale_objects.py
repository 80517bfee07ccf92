"""The one-scale HPU-Net ablation of `configs/hpunet_one_scale.py` on `synthetic_objects`.

    python -m experiments.train --config=configs/hpunet_one_scale_objects.py --workdir=runs/hpunet_one_scale_objects
    python -m experiments.evaluate --workdir=runs/hpunet_one_scale_objects --config.eval.split=test

`configs/synthetic_objects.py` with a single 6-dimensional latent at the
coarsest level (1x1) and the ELBO (beta = 1) instead of GECO; same data,
network, optimiser and steps, so the comparison isolates the latent
hierarchy and the objective. Not the Prob. U-Net of Kohl et al. 2018
(that is `configs/prob_unet_objects.py`).

Runtime: 6.4 CPU-minutes (18 min wall on the shared 2-core development VM,
2026-11-29). Expected
numbers (test, first 100 images, 100 samples): per-object TVD 0.044 / 0.049 /
0.049, joint TVD 0.120 (HPU-Net 0.128, intervals overlap), mutual
information 0.026 nats (HPU-Net 0.020; floor 0.021), fidelity 0.958
(HPU-Net 0.949), exact GED 0.0127, normalised 0.021.

`:tiny` as in `configs/synthetic_objects.py`.
"""
from configs import common
from hpunet_jax import config_lib


def get_config(arg=None):
  tiny = common.parse_arg("configs/hpunet_one_scale_objects.py", arg) == "tiny"
  config = config_lib.base_config()
  common.synthetic_objects_budget(config, tiny)

  # The network of configs/synthetic_objects.py with one 6-d latent at 1x1.
  common.hpunet_model(config, channels_per_block=(8, 16, 16, 16, 16, 16),
                      latent_dims=(6,))
  common.elbo_loss(config, beta=1.0)
  config.loss.kappa = 0.02   # GECO's, as in configs/synthetic_objects.py; the ELBO does not read it

  if tiny:
    common.tiny_hpunet(config, num_levels=6, num_latents=3)   # the one latent kept
  return config
