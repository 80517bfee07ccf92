"""The paper's LIDC setting (REFERENCE.md): HPU-Net, GECO, 240k steps of batch 32.

    python -m experiments.train --config=configs/lidc.py --workdir=runs/lidc \
        [--config.data.manual_dir=/path/to/lidc_crops]

Data: DeepMind's LIDC crops (downloaded on first use, or from `manual_dir`),
centre-cropped 180 -> 128. Model: the release's defaults (21,877,230
parameters). Loss: GECO with kappa 0.05, top-k 2% with Gumbel noise. Adam at
1e-4, halved at 60k/120k/180k/210k steps.

Runtime: days on one GPU (not measured here); checkpoints every 5k steps, so
preempted runs resume with the same command.

Expected numbers (the paper, test split): IoU_rec 0.97, HM-IoU16 0.53
(subset B 0.47), GED16 0.27 (cited). `--config=configs/lidc.py:tiny` is a
smoke-test variant with the same data and a few steps.
"""
from hpunet_jax import config_lib


def get_config(arg=None):
  config = config_lib.base_config()  # the LIDC defaults
  config.eval.num_examples = 500     # a fixed slice of validation during training
  if arg == "tiny":
    config.train.num_steps = 4
    config.train.log_every = 1
    config.train.eval_every = 4
    config.train.checkpoint_every = 2
    config.train.batch_size = 2
    config.eval.num_examples = 2
    config.eval.num_samples = 16
    config.eval.batch_size = 2
  elif arg not in (None, ""):
    raise ValueError(f"configs/lidc.py: unknown argument {arg!r} (use 'tiny' or nothing)")
  return config
