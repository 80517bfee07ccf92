"""The Probabilistic U-Net (Kohl et al. 2018) as released, beside the HPU-Net.

    python -m experiments.train --config=configs/prob_unet.py --workdir=runs/prob_unet
    python -m experiments.evaluate --workdir=runs/prob_unet --config.eval.split=test
    python -m experiments.train --config=configs/prob_unet.py:lidc --workdir=runs/prob_unet_lidc

The network of SimonKohl/probabilistic_unet (`model.name = 'prob_unet'`,
`hpunet_jax.model.prob_unet`, docs/model.md): a U-Net, separate prior and
posterior encoders with one global 6-d latent, f_comb of three 1x1 convs;
trained with the ELBO (beta 1) and the release's L2 rule (1e-5 * sum(w**2) / 2
over the weights but f_comb's logits conv). The HPU-Net with one latent scale,
an ablation, is `configs/hpunet_one_scale.py`.

Default (no argument): the synthetic default job of `configs/synthetic.py` at
an equal budget (same data, steps, batch, optimiser, seed), with the
release's architecture (7 levels, 3 convs per block, latent 6, three 1x1
convs) at a quarter of its widths (8..48 channels instead of 32..192; the
HPU-Net of `configs/synthetic.py` is narrowed likewise, so that 1,500 steps run
on a CPU). Runtime: 20 CPU-minutes (user + sys), 47 min wall on the shared
2-core development VM with other jobs beside it (2026-12-02), the final
validation evaluation included. Expected numbers (`experiments.evaluate
--config.eval.split=test --config.eval.num_examples=100`, 100 samples, one
run): exact GED 0.061 [0.056, 0.066], normalised 0.13, IoU_rec 0.98, match
rate 0.49, TVD 0.53, GED100 0.21, HM-IoU16 0.61, S_NCC 0.80; the HPU-Net of
`configs/synthetic.py` has exact GED 0.0505 [0.047, 0.054] on the same images
(README), the one-scale HPU-Net 0.063.

`:tiny`: 32x32 synthetic data, 4 levels of 4-8 channels, a few steps, for
smoke tests (tests/test_prob_unet.py runs it through the CLIs).

`:lidc`: the release's network at its defaults (17,945,946 parameters with one
image channel and 2 classes; the count of the release's TF code,
tests/fixtures/prob_unet_release_small/config.json) on DeepMind's LIDC crops.
Every setting and its source:
- network: `training/prob_unet_config.py` (channels 32, 64, 128, 192 x 4;
  3 convs per block; latent_dim 6; num_1x1_convs 3) and
  `model/probabilistic_unet.py` (the layers, He-normal init);
- loss: `train_prob_unet.py` (ELBO, beta 1, analytic KL, posterior sample,
  not its mean, in the reconstruction; L2 weight 1e-5 on the weights only);
- optimiser: Adam at 1e-4, times 0.5 at 80k and 0.2 at 160k steps (1e-4,
  0.5e-4, 1e-5: `learning_rate_kwargs` of `prob_unet_config.py`, whose last
  value, 0.5e-6 from step 240k, is never reached in 240k steps);
- steps: 240k (`n_training_batches`);
- data, 128x128 crops of the 180x180 examples, augmentation and evaluation:
  those of `configs/lidc.py`, so that both models see the same data, as the
  HPU-Net paper compares them on one LIDC split.
Unverified:
- batch 32 (the HPU-Net's LIDC batch) instead of the release's 10, which is
  its Cityscapes setting; the Prob. U-Net paper's LIDC batch could not be
  read here;
- whether the HPU-Net paper trained its Prob. U-Net baseline with this
  schedule, with the ELBO or with GECO, and with which augmentation: its
  appendix could not be read here;
- the release trains on Cityscapes only; its LIDC training code is not
  public, so no LIDC setting of the release is verified beyond the network;
- TF's `piecewise_constant` changes the rate one step later than optax.
"""
from configs import common
from hpunet_jax import config_lib


def get_config(arg=None):
  arg = common.parse_arg("configs/prob_unet.py", arg, ("tiny", "lidc"))
  config = config_lib.base_config()
  if arg == "lidc":
    common.lidc_budget(config)
    common.release_prob_unet(config, common.RELEASE_CHANNELS)
    # The release's schedule (`learning_rate_kwargs`, `n_training_batches`).
    config.optim.learning_rate = 1e-4
    config.optim.schedule = "piecewise"
    config.optim.boundaries = (80_000, 160_000)
    config.optim.decay_factors = (0.5, 0.2)
    config.train.num_steps = 240_000
    return config

  common.synthetic_multiscale_budget(config, arg == "tiny")
  common.quarter_release_prob_unet(config, len(common.RELEASE_CHANNELS))
  config.loss.kappa = 0.02   # GECO's, as in configs/synthetic.py; the ELBO does not read it
  if arg == "tiny":
    common.tiny_prob_unet(config)
  return config
