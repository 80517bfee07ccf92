"""Trains an HPU-Net, resuming from the latest checkpoint in --workdir.

    python -m experiments.train --config=configs/synthetic.py --workdir=runs/synthetic \
        [--config.train.num_steps=5000 ...]

With `--distributed` (every process of a multi-host run; experiments/distributed.py),
the processes find each other through jax.distributed.
"""
import sys

from absl import app, flags
from ml_collections import config_flags

from experiments import cli, distributed
from hpunet_jax.infra import lease, logs
from hpunet_jax.training import loop, run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py (':tiny' shrinks it); override "
    "fields with --config.<group>.<field>=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, figures. Any path etils.epath "
    "opens: a local folder, or gs://bucket/run (pip install 'hpunet-jax[gcs]').")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_library_logs()
  logs.divert_background_errors(_WORKDIR.value)
  logs.exit_on_storage_failure(_WORKDIR.value)
  distributed.initialize_if_asked()
  try:
    loop.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except (run.RunMismatchError, lease.WorkdirBusyError) as e:
    # One line: the field and both values, or the workdir and its holder; what to do.
    sys.stderr.write(f"FATAL {e}\n")
    sys.exit(1)
  except Exception as e:  # pylint: disable=broad-except
    if not logs.is_storage_error(e):
      raise
    # A store that failed (full, forbidden, gone): one line, then out at once; the
    # interpreter's teardown would wait on that store again in every library's
    # atexit handler and print their threads' tracebacks (docs/fault_tolerance.md).
    logs.exit_now(logs.storage_failure(e, _WORKDIR.value))


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
