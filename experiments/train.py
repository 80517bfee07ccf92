"""Trains an HPU-Net, resuming from the latest checkpoint in --workdir.

    python -m experiments.train --config=configs/synthetic.py --workdir=runs/synthetic \
        [--config.train.num_steps=5000 ...]
"""
from absl import app, flags
import jax
from ml_collections import config_flags

from hpunet_jax import config_lib, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py (':tiny' shrinks it); override "
    "fields with --config.<group>.<field>=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Run directory: checkpoints, metrics, figures.")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: set it on every process of "
    "a multi-host run (TPU pod slice, several GPU nodes).")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  trainer.quiet_library_logs()
  if _DISTRIBUTED.value:
    jax.distributed.initialize()  # reads the TPU / SLURM / JAX_* environment
  trainer.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
