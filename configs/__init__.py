"""One file per setting; `with_shared_settings` starts the configs that share a dataset's budget."""
from hpunet_jax import config_lib


def with_shared_settings(shared_settings, arg, config_file):
  """`base_config()` with `shared_settings(config, arg)` applied (a dataset's data, optimiser,
  steps and evaluation, which the configs comparing models on it share); a bad `arg` raises
  the ValueError naming `config_file`, the file the user asked for."""
  config = config_lib.base_config()
  try:
    shared_settings(config, arg)
  except ValueError as e:
    raise ValueError(f"{config_file}: {e}") from None
  return config
