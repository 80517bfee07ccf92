"""Trains an HPU-Net, resuming from the latest checkpoint in --workdir.

    python -m experiments.train --config=configs/synthetic.py --workdir=runs/synthetic \
        [--config.train.num_steps=5000 ...]

With `--distributed` (every process of a multi-host run), the coordinator, the
number of processes and this process's id come from `JAX_COORDINATOR_ADDRESS`,
`JAX_NUM_PROCESSES` and `JAX_PROCESS_ID` where they are set, otherwise from
jax's cluster detection (TPU pods, SLURM, ...).
"""
import os
import sys

from absl import app, flags
import jax
from ml_collections import config_flags

from hpunet_jax import config_lib
from hpunet_jax.infra import lease, logs
from hpunet_jax.training import loop, run

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config file, e.g. configs/synthetic.py (':tiny' shrinks it); override "
    "fields with --config.<group>.<field>=value.", lock_config=True)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory: checkpoints, metrics, figures. Any path etils.epath "
    "opens: a local folder, or gs://bucket/run (pip install 'hpunet-jax[gcs]').")
_DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: set it on every process of "
    "a multi-host run (TPU pod slice, several GPU nodes). Reads JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES and JAX_PROCESS_ID where set, else the TPU / SLURM environment.")
flags.mark_flags_as_required(["config", "workdir"])

_ENV_INTS = {"num_processes": "JAX_NUM_PROCESSES", "process_id": "JAX_PROCESS_ID"}


def distributed_arguments(environ=os.environ) -> dict:
  """The `jax.distributed.initialize` arguments given by the JAX_* variables that are set.

  jax itself reads only JAX_COORDINATOR_ADDRESS; the process count and id
  otherwise come from cluster detection, which finds nothing on a plain host.
  """
  arguments = {}
  if environ.get("JAX_COORDINATOR_ADDRESS"):
    arguments["coordinator_address"] = environ["JAX_COORDINATOR_ADDRESS"]
  for name, variable in _ENV_INTS.items():
    value = environ.get(variable)
    if value:
      try:
        arguments[name] = int(value)
      except ValueError:
        raise app.UsageError(f"{variable}={value!r}: need an integer") from None
  return arguments


def initialize_distributed():
  # Collectives between the processes' CPU devices (CPU-only hosts, and the
  # tests' two processes on localhost) go through gloo; it is harmless where
  # the devices are GPUs or TPUs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**distributed_arguments())


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_library_logs()
  logs.divert_background_errors(_WORKDIR.value)
  logs.exit_on_storage_failure(_WORKDIR.value)
  if _DISTRIBUTED.value:
    initialize_distributed()
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
  app.run(main, flags_parser=config_lib.parse_flags)
