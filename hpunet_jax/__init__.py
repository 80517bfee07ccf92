"""hpunet-jax: the Hierarchical Probabilistic U-Net (Kohl et al. 2019) in JAX/Haiku.

`import hpunet_jax` loads the model layer only (jax, haiku, numpy, scipy):
`make_model`, `HPUNetConfig` and the model's pure functions need nothing of
the data, training or I/O stacks. The training names (`TrainState`,
`create_train_state`, `make_train_step`) and the submodules `config_lib`,
`objective` and `parallel` load on first use. The layers: docs/architecture.md.
"""
import importlib

from hpunet_jax.model import HPUNetConfig, ProbUNetConfig, make_model

# Public name -> the module that defines it, imported when first asked for.
_LAZY = {
    "TrainState": "hpunet_jax.training.state",
    "create_train_state": "hpunet_jax.training.state",
    "make_train_step": "hpunet_jax.training.state",
    "config_lib": "hpunet_jax.config_lib",
    "objective": "hpunet_jax.objective",
    "parallel": "hpunet_jax.infra.parallel",
}

__all__ = ["HPUNetConfig", "ProbUNetConfig", "make_model", *_LAZY]


def __getattr__(name):
  if name not in _LAZY:
    raise AttributeError(f"module 'hpunet_jax' has no attribute {name!r}")
  module = importlib.import_module(_LAZY[name])
  value = module if module.__name__.endswith("." + name) else getattr(module, name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
