"""The models by name: `model.name` -> its config class and its builder.

Adding a model is one module (its config dataclass, its Haiku modules and a
`build(config) -> base.Model`) plus one line in `MODELS`. The experiment
config's `model` group holds `name` and that config class's fields
(`hpunet_jax.config_lib`); everything above the model layer reaches a model
through `make_model` and the `Model`'s functions, never through its module.
"""
import dataclasses
from typing import Callable

from hpunet_jax.model import base, hpunet, prob_unet


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """A registered model: its config dataclass and `build(config) -> base.Model`."""
  name: str
  config_cls: type
  build: Callable[..., base.Model]
  description: str


MODELS = {spec.name: spec for spec in (
    ModelSpec("hpunet", hpunet.HPUNetConfig, hpunet.build,
              "the Hierarchical Probabilistic U-Net (Kohl et al. 2019) as released"),
    ModelSpec("prob_unet", prob_unet.ProbUNetConfig, prob_unet.build,
              "the Probabilistic U-Net (Kohl et al. 2018) as released"),
)}
DEFAULT_MODEL = "hpunet"


def get(name: str) -> ModelSpec:
  """The registered model called `name`; a ValueError lists the names there are."""
  try:
    return MODELS[name]
  except (KeyError, TypeError):
    raise ValueError(f"model.name={name!r} is not a registered model; known: "
                     f"{', '.join(MODELS)}") from None


def name_of(config) -> str:
  """The registered name of a model config (by its class)."""
  for spec in MODELS.values():
    if type(config) is spec.config_cls:   # pylint: disable=unidiomatic-typecheck
      return spec.name
  raise TypeError(f"{type(config).__name__} is not the config of a registered model "
                  f"({', '.join(s.config_cls.__name__ for s in MODELS.values())})")


@base.cached
def _build(config) -> base.Model:
  return get(name_of(config)).build(config)


def make_model(config=None) -> base.Model:
  """The pure functions of the model that `config` describes (default: `HPUNetConfig()`).

  One `Model` per distinct config, shared by every caller (so are its jitted
  functions' compilations). Its functions: `base.build_model`.
  """
  config = get(DEFAULT_MODEL).config_cls() if config is None else config
  name_of(config)   # a TypeError for anything but a registered model's config
  return _build(base.with_execution_defaults(config))
