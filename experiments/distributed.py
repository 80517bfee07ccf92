"""`--distributed`: the flag of every tool that runs on all processes of a multi-host job.

    python -m experiments.train --config=... --workdir=DIR --distributed
    python -m experiments.evaluate --workdir=DIR --distributed
    python -m experiments.sample --workdir=DIR --output=x.png --distributed

Set on every process. The coordinator, the number of processes and this
process's id come from `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES` and
`JAX_PROCESS_ID` where they are set, otherwise from jax's cluster detection
(TPU pods, SLURM, ...).
"""
import os

from absl import app, flags
import jax

DISTRIBUTED = flags.DEFINE_bool(
    "distributed", False, "Call jax.distributed.initialize() first: set it on every process of "
    "a multi-host run (TPU pod slice, several GPU nodes). Reads JAX_COORDINATOR_ADDRESS, "
    "JAX_NUM_PROCESSES and JAX_PROCESS_ID where set, else the TPU / SLURM environment.")

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


def initialize_if_asked():
  """`jax.distributed.initialize()` where `--distributed` is set; a no-op otherwise."""
  if not DISTRIBUTED.value:
    return
  # Collectives between the processes' CPU devices (CPU-only hosts, and the
  # tests' two processes on localhost) go through gloo; it is harmless where
  # the devices are GPUs or TPUs.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**distributed_arguments())


def describe_devices() -> str:
  """E.g. '8 devices (cpu) of 2 processes': what a tool runs on."""
  platforms = sorted({d.platform for d in jax.devices()})
  return (f"{jax.device_count()} device{'s' * (jax.device_count() != 1)} "
          f"({', '.join(platforms)}) of {jax.process_count()} "
          f"process{'es' * (jax.process_count() != 1)}")
