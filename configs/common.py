"""The named blocks that the configs are built from (docs/training.md#configs).

Every other file in `configs/` is one setting, `get_config(arg=None)`, read top
to bottom: `common.parse_arg`, `config_lib.base_config()`, the blocks of this
module it uses, then its own settings. No config imports another config, so
what a config sets is in its own file and here.

- argument parsing: `parse_arg`;
- each dataset's budget (data, optimiser, steps, batch, evaluation):
  `synthetic_multiscale_budget`, `synthetic_objects_budget`,
  `synthetic_grid_budget`, `lidc_budget`, `lidc_knegt_budget`;
- each model's recipe: `hpunet_model`, `geco_loss`, `elbo_loss`,
  `release_prob_unet`, `quarter_release_prob_unet` (`RELEASE_CHANNELS`);
- the `:tiny` shrinks of a smoke run: `tiny_data`, `tiny_training`,
  `tiny_evaluation`, `tiny_hpunet`, `tiny_prob_unet`.

A block sets fields of the config it is given, in place, and returns nothing.
"""
from hpunet_jax import config_lib

# The release's network (SimonKohl/probabilistic_unet, training/prob_unet_config.py).
RELEASE_CHANNELS = (32, 64, 128, 192, 192, 192, 192)


def parse_arg(config_file, arg, allowed=("tiny",)):
  """The config's argument: `arg` if it is one of `allowed`, None for none (None or '').

  Args:
    config_file: the file the user asked for, e.g. 'configs/synthetic.py'.
    arg: what followed ':' in `--config=FILE:ARG`, or None.
    allowed: the arguments that file takes.

  Raises:
    ValueError: naming `config_file`, `arg` and the `allowed` arguments.
  """
  if arg in (None, ""):
    return None
  if arg not in allowed:
    use = ", ".join(repr(a) for a in allowed)
    raise ValueError(f"{config_file}: unknown argument {arg!r} (use {use} or nothing)")
  return arg


# --- Each dataset's budget: data, optimiser, steps, batch, evaluation ---------------------------

def _synthetic_budget(config, name, *, num_steps, eval_batch_size):
  """What the synthetic datasets' budgets share.

  The images are the model's size (no crop); Adam at 1e-3, times 0.3 after 80%
  of the `num_steps` steps; batch 32, seed 0; logs every 100 steps, a
  checkpoint every 500; one evaluation at the end on 100 validation images
  with 100 samples each, 4 of them in the figures.
  """
  config.data.name = name
  config.data.crop_size = None

  config.optim.learning_rate = 1e-3
  config.optim.schedule = "piecewise"
  config.optim.boundaries = (int(num_steps * 0.8),)
  config.optim.decay_factor = 0.3

  config.train.seed = 0
  config.train.batch_size = 32
  config.train.num_steps = num_steps
  config.train.log_every = 100
  config.train.eval_every = num_steps
  config.train.checkpoint_every = 500

  config.eval.split = "validation"
  config.eval.num_examples = 100   # the final table and experiments.evaluate (None: all)
  config.eval.num_samples = 100
  config.eval.batch_size = eval_batch_size
  config.eval.num_figure_examples = 4


def _tiny_synthetic(config):
  """The `:tiny` of the 32x32 synthetic budgets: the `small` data, 6 steps of batch 8, 4 x 16."""
  tiny_data(config)
  tiny_training(config, batch_size=8, num_steps=6, log_every=2, checkpoint_every=3)
  tiny_evaluation(config, num_examples=4, num_samples=16, num_figure_examples=2)


def synthetic_multiscale_budget(config, tiny=False):
  """`synthetic_multiscale` (64x64): 1,500 steps, the rate cut at step 1,200; eval batches of 20.

  `tiny`: the `small` data (32x32), 6 steps of batch 8, 4 images x 16 samples.
  """
  _synthetic_budget(config, "synthetic_multiscale", num_steps=1500, eval_batch_size=20)
  if tiny:
    _tiny_synthetic(config)


def synthetic_objects_budget(config, tiny=False):
  """`synthetic_objects` (32x32): 4,500 steps, the rate cut at step 3,600; eval batches of 20.

  Steps were the knob that mattered (docs/results.md): 1,500 -> 4,500 took the
  joint TVD from 0.18 to 0.13 and the fidelity from 0.90 to 0.95.
  `tiny`: the `small` data, 6 steps of batch 8, 4 images x 16 samples.
  """
  _synthetic_budget(config, "synthetic_objects", num_steps=4500, eval_batch_size=20)
  if tiny:
    _tiny_synthetic(config)


def synthetic_grid_budget(config, tiny=False):
  """`synthetic_grid` (64x64): 2,000 steps, the rate cut at step 1,600; eval batches of 10.

  `tiny`: the `small` data, 4 steps of batch 4 (the rate cut at step 3),
  2 images x 8 samples.
  """
  _synthetic_budget(config, "synthetic_grid", num_steps=2000, eval_batch_size=10)
  if tiny:
    tiny_data(config)
    tiny_training(config, batch_size=4, num_steps=4, log_every=2, checkpoint_every=2)
    config.optim.boundaries = (3,)
    tiny_evaluation(config, num_examples=2, num_samples=8, num_figure_examples=1)


def lidc_budget(config, tiny=False):
  """The paper's LIDC budget on DeepMind's crops (`lidc_crops`): the base config's schedule.

  Adam at 1e-4 halved at 60k/120k/180k/210k steps, 240k steps of batch 32
  (`base_config`); the 180x180 training examples augmented on the device into
  128x128 crops (`data.augment`); evaluation during training on a fixed slice
  of 500 validation images. `tiny`: 4 steps of batch 2, 2 images x 16 samples.
  """
  config.eval.num_examples = 500
  config.data.augment.enabled = True
  if tiny:
    tiny_training(config, batch_size=2, num_steps=4, log_every=1, checkpoint_every=2)
    tiny_evaluation(config, num_examples=2, num_samples=16, num_figure_examples=2)


def lidc_knegt_budget(config, tiny=False):
  """`lidc_budget` on the 128x128 LIDC of the later literature (`lidc_knegt` = `lidc_knegt/mose`).

  The images are the model's size: crop_size 128 is the whole image, and with
  no margin around the crop the augmentation does not translate.
  """
  config.data.name = "lidc_knegt"
  config.data.image_size = 128
  config.data.num_graders = 4
  config.data.crop_size = 128
  lidc_budget(config, tiny)


# --- Each model's recipe: network and loss ------------------------------------------------------

def hpunet_model(config, channels_per_block, latent_dims):
  """The HPU-Net of the CPU-sized configs: one res block of 2 convs per level.

  `channels_per_block`: one entry per level, finest first; `latent_dims`: the
  latent channels per scale, coarsest (1x1) first.
  """
  config.model.channels_per_block = channels_per_block
  config.model.latent_dims = latent_dims
  config.model.blocks_per_level = 1
  config.model.convs_per_block = 2


def geco_loss(config, kappa):
  """GECO with reconstruction target `kappa` per pixel, on every pixel (no top-k)."""
  config.loss.type = "geco"
  config.loss.kappa = kappa
  config.loss.top_k_percentage = None


def elbo_loss(config, beta):
  """The ELBO with the KL weighted by `beta`, on every pixel (no top-k)."""
  config.loss.type = "elbo"
  config.loss.beta = beta
  config.loss.top_k_percentage = None


def release_prob_unet(config, channels):
  """The Prob. U-Net as released (Kohl et al. 2018), with `channels` per level, and its loss.

  The network of `training/prob_unet_config.py`: 3 convs per block, one global
  6-d latent, f_comb of three 1x1 convs; the `num_classes` of the config's
  model. Loss: the ELBO with beta 1 and the release's L2 rule at 1e-5.
  """
  config.model = config_lib.model_group(
      "prob_unet", channels=channels, latent_dim=6, convs_per_block=3, num_1x1_convs=3,
      num_classes=config.model.num_classes)
  elbo_loss(config, beta=1.0)
  config.loss.l2_weight = 1e-5


def quarter_release_prob_unet(config, num_levels):
  """`release_prob_unet` at a quarter of the release's widths on its first `num_levels` levels.

  The size of the CPU-sized comparisons with the HPU-Net (8..48 channels).
  """
  release_prob_unet(config, tuple(c // 4 for c in RELEASE_CHANNELS[:num_levels]))


# --- The `:tiny` shrinks of a smoke run ---------------------------------------------------------

def tiny_data(config):
  """A synthetic dataset's `small` variant: 256/32/32 images (`synthetic_multiscale`: 32x32)."""
  config.data.name = f"{config.data.name}/small"


def tiny_training(config, *, batch_size, num_steps, log_every, checkpoint_every):
  """`num_steps` steps of `batch_size`, evaluated once, at the end."""
  config.train.batch_size = batch_size
  config.train.num_steps = num_steps
  config.train.log_every = log_every
  config.train.eval_every = num_steps
  config.train.checkpoint_every = checkpoint_every


def tiny_evaluation(config, *, num_examples, num_samples, num_figure_examples):
  """`num_examples` images in one batch, `num_samples` samples each."""
  config.eval.num_examples = num_examples
  config.eval.num_samples = num_samples
  config.eval.batch_size = num_examples
  config.eval.num_figure_examples = num_figure_examples


def tiny_hpunet(config, num_levels=4, width=8, num_latents=2):
  """A small HPU-Net: `num_levels` levels of 4, then `width`, channels; one res block of 2 convs.

  Keeps the config's `num_latents` coarsest latent scales.
  """
  config.model.channels_per_block = (4,) + (width,) * (num_levels - 1)
  config.model.latent_dims = tuple(config.model.latent_dims[:num_latents])
  config.model.blocks_per_level = 1
  config.model.convs_per_block = 2


def tiny_prob_unet(config):
  """A small Prob. U-Net: 4 levels of 4-8 channels, 2 convs per block."""
  config.model.channels = (4, 8, 8, 8)
  config.model.convs_per_block = 2
