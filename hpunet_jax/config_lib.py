"""The experiment config: its groups, their defaults, one early validation, its JSON form.

Configs in `configs/*.py` start from `base_config()` and change what their
setting needs. `validate(config)` runs before anything compiles and raises a
ValueError naming the offending field. `config_from_json` reads a saved
config back (a run's `config.json`, older schemas migrated);
`apply_overrides` sets `group.field` values by name. A run's files:
`hpunet_jax.workdir`.
"""
import collections.abc
import dataclasses
import typing

import ml_collections

from hpunet_jax.data import config as data_config_lib
from hpunet_jax.model import EXECUTION_FIELDS, registry

# `model.name` chooses the network (`hpunet_jax.model.registry`); the `model`
# group holds `name` and that model's own fields, the `execution` group its
# execution settings. Runs saved before the field existed are HPU-Nets.
MODEL_NAMES = tuple(registry.MODELS)
DEFAULT_MODEL = registry.DEFAULT_MODEL

LOSS_TYPES = ("geco", "elbo")
# The presets of hpunet_jax/evaluation/protocols.py (a layer above: named here
# so a wrong name stops the run before anything compiles; a test keeps both equal).
EVAL_PROTOCOLS = ("hpunet", "phiseg", "ssn", "car", "ccdm", "mose", "berdiff")
SCHEDULES = ("constant", "piecewise")


def base_config(model: str = registry.DEFAULT_MODEL) -> ml_collections.ConfigDict:
  """All groups with the paper's (LIDC) defaults (docs/model.md); `model`: a registered name."""
  c = ml_collections.ConfigDict()

  c.model = model_group(model)
  # Settings that change how the network is computed, not its parameters: a
  # resumed run may change them (e.g. remat to fit memory).
  c.execution = ml_collections.ConfigDict(_fields_of(model, execution=True))

  c.loss = ml_collections.ConfigDict(dict(
      type="geco",
      kappa=0.05,
      decay=0.99,
      rate=1e-2,
      beta=1.0,
      top_k_percentage=ml_collections.config_dict.placeholder(float),
      deterministic_top_k=False,
      l2_weight=1e-5,
  ))
  c.loss.top_k_percentage = 0.02

  c.optim = ml_collections.ConfigDict(dict(
      learning_rate=1e-4,
      schedule="piecewise",
      # Halved at each boundary: a public reproduction's LIDC schedule, unverified
      # against the HPU-Net appendix (see configs/lidc.py).
      boundaries=(60_000, 120_000, 180_000, 210_000),
      decay_factor=0.5,
      # One factor per boundary instead of `decay_factor` at each (e.g. the
      # Prob. U-Net release's 1e-4, 0.5e-4, 1e-5: factors 0.5, 0.2); None: off.
      decay_factors=ml_collections.config_dict.placeholder(tuple),
      # Clipping by global norm is off by default; a value such as 1.0 is the
      # usual fix when training is unstable.
      clip_global_norm=ml_collections.config_dict.placeholder(float),
  ))

  c.train = ml_collections.ConfigDict(dict(
      batch_size=32,
      num_steps=240_000,
      log_every=100,
      eval_every=10_000,
      checkpoint_every=5_000,
      keep_checkpoints=3,
      seed=0,
      # A workdir (e.g. from experiments.import_release) whose latest network
      # parameters start this run; optimiser and step start afresh.
      init_from=ml_collections.config_dict.placeholder(str),
  ))

  c.data = data_config_lib.default_config()
  c.data.name = "lidc_crops"
  c.data.crop_size = 128   # the release's colab centre-crops 180 -> 128

  c.eval = ml_collections.ConfigDict(dict(
      split="validation",
      num_examples=ml_collections.config_dict.placeholder(int),
      num_samples=100,
      batch_size=16,
      num_figure_examples=4,
      # Samples drawn at once per image: peak memory grows with it, the scores
      # do not change (docs/evaluation.md).
      sample_chunk=10,
      # The literature's evaluation protocols: hpunet_jax/evaluation/protocols.py.
      protocol="hpunet",
  ))
  return c


def _placeholder_type(field):
  """The type of a `None` default's placeholder: `Sequence[int] | None` -> tuple, `float | None` -> float."""
  kinds = [t for t in typing.get_args(field.type) if t is not type(None)]
  kind = typing.get_origin(kinds[0]) or kinds[0] if kinds else object
  return tuple if kind in (tuple, list, collections.abc.Sequence) else kind


def _fields_of(name, *, execution=False):
  """`{field: default}` of model `name`'s config class: its model fields, or its execution fields."""
  values = {}
  for field in dataclasses.fields(registry.get(name).config_cls):
    if (field.name in EXECUTION_FIELDS) != execution:
      continue
    value = field.default
    if value is None:
      value = ml_collections.config_dict.placeholder(_placeholder_type(field))
    values[field.name] = value
  return values


def model_fields(name) -> tuple:
  """The fields of the `model` group of model `name` (`name` aside)."""
  return tuple(_fields_of(name))


def model_group(name: str = registry.DEFAULT_MODEL, **values) -> ml_collections.ConfigDict:
  """The `model` group of the registered model `name`: its fields, the defaults updated by `values`.

  Holds `name` and the model config class's fields but the execution ones
  (the `execution` group), so that `config.json` records only what the
  network used. A key of `values` the model does not have raises the
  ValueError of `model_config`.
  """
  fields = _fields_of(name)
  check_model_fields(name, values)
  group = ml_collections.ConfigDict({"name": name, **fields})
  group.update(values)
  return group


def check_model_fields(name, fields):
  unknown = sorted(set(fields) - set(model_fields(name)))
  if not unknown:
    return
  field = unknown[0]
  owners = [other for other in MODEL_NAMES if other != name and field in model_fields(other)]
  owner = f" (a field of model {', '.join(repr(o) for o in owners)})" if owners else ""
  raise ValueError(f"model.{field} is not a field of model {name!r}{owner}; its fields: "
                   f"{', '.join(model_fields(name))}")


def get_config(arg=None):
  """`base_config()`, so that this file can be a `--config` flag's default.

  The tools define `--config` with this file as its default: their
  `--config.<group>.<field>=` overrides are then parsed against every field
  (with its type) even when the config itself comes from a run's `config.json`.
  """
  del arg
  return base_config()


def model_config(config):
  """The typed model config from the `model` and `execution` groups (errors name the field).

  `model.name` chooses the registered model; the `model` group's other fields
  must be that model's (a field of another model raises a ValueError naming
  the field and the model).
  """
  fields = config.model.to_dict()
  name = fields.pop("name", registry.DEFAULT_MODEL)
  spec = registry.get(name)
  check_model_fields(name, fields)
  model = spec.config_cls.from_dict(fields, prefix="model")
  execution = config.get("execution")
  if execution is None:
    return model
  try:
    return dataclasses.replace(model, **execution.to_dict())
  except TypeError as e:
    raise ValueError(f"execution: {e}; known: {', '.join(EXECUTION_FIELDS)}") from None
  except ValueError as e:
    raise ValueError(str(e).replace(spec.config_cls.__name__ + ".", "execution.")) from None


def _require(ok, message):
  if not ok:
    raise ValueError(message)


def validate(config, *, num_devices=None):
  """Checks the config before anything compiles; returns the typed model config.

  Raises:
    ValueError naming the field (e.g. `train.batch_size`).
  """
  for group in ("model", "execution", "loss", "optim", "train", "data", "eval"):
    _require(group in config, f"config has no '{group}' group")
  model = model_config(config)

  loss = config.loss
  _require(loss.type in LOSS_TYPES, f"loss.type must be one of {LOSS_TYPES}, got {loss.type!r}")
  _require(loss.kappa >= 0, f"loss.kappa must be >= 0, got {loss.kappa}")
  _require(0 <= loss.decay < 1, f"loss.decay must be in [0, 1), got {loss.decay}")
  _require(loss.rate > 0, f"loss.rate must be > 0, got {loss.rate}")
  _require(loss.beta >= 0, f"loss.beta must be >= 0, got {loss.beta}")
  _require(loss.l2_weight >= 0, f"loss.l2_weight must be >= 0, got {loss.l2_weight}")
  if loss.top_k_percentage is not None:
    _require(0 < loss.top_k_percentage <= 1,
             f"loss.top_k_percentage must be in (0, 1] or None, got {loss.top_k_percentage}")

  optim = config.optim
  _require(optim.learning_rate > 0, f"optim.learning_rate must be > 0, got {optim.learning_rate}")
  _require(optim.schedule in SCHEDULES,
           f"optim.schedule must be one of {SCHEDULES}, got {optim.schedule!r}")
  _require(list(optim.boundaries) == sorted(optim.boundaries) and
           all(b > 0 for b in optim.boundaries),
           f"optim.boundaries must be increasing positive steps, got {optim.boundaries}")
  _require(optim.decay_factor > 0, f"optim.decay_factor must be > 0, got {optim.decay_factor}")
  factors = optim.get("decay_factors")
  if factors is not None:
    _require(len(factors) == len(optim.boundaries) and all(f > 0 for f in factors),
             f"optim.decay_factors must hold one positive factor per boundary "
             f"({len(optim.boundaries)}), got {factors}")
  if optim.clip_global_norm is not None:
    _require(optim.clip_global_norm > 0,
             f"optim.clip_global_norm must be > 0 or None, got {optim.clip_global_norm}")

  train = config.train
  for field in ("batch_size", "num_steps", "log_every", "eval_every", "checkpoint_every",
                "keep_checkpoints"):
    value = train[field]
    _require(isinstance(value, int) and value > 0,
             f"train.{field} must be a positive integer, got {value!r}")
  if num_devices is not None:
    _require(train.batch_size % num_devices == 0,
             f"train.batch_size={train.batch_size} does not divide over the {num_devices} "
             f"devices; use a multiple of {num_devices}")

  data = config.data
  size = data.crop_size if data.crop_size is not None else data.get("image_size")
  if isinstance(size, int) and size > 0 and size % model.size_multiple:
    field = "data.crop_size" if data.crop_size is not None else "data.image_size"
    channels = f"model.{model.LEVELS_FIELD}"
    raise ValueError(
        f"{field}={size} cannot be taken by the model: it needs a multiple of "
        f"2**(len({channels}) - 1) = {model.size_multiple} "
        f"(e.g. {model.size_multiple}, {2 * model.size_multiple}, {4 * model.size_multiple})")
  data_config_lib.validate_config(data)

  ev = config.eval
  _require(ev.num_samples >= 1, f"eval.num_samples must be >= 1, got {ev.num_samples}")
  _require(ev.batch_size >= 1, f"eval.batch_size must be >= 1, got {ev.batch_size}")
  chunk = ev.sample_chunk
  _require(isinstance(chunk, int) and chunk >= 1,
           f"eval.sample_chunk must be a positive integer, got {chunk!r}")
  _require(ev.get("protocol", "hpunet") in EVAL_PROTOCOLS,
           f"eval.protocol={ev.get('protocol')!r}: need one of {EVAL_PROTOCOLS}")
  if ev.num_examples is not None:
    _require(ev.num_examples >= 1, f"eval.num_examples must be >= 1 or None, got {ev.num_examples}")
  return model


# ---------------------------------------------------------------------------
# Configs saved as JSON (a run's `config.json`: `hpunet_jax.workdir.Run.config`).


def _from_json(reference, value):
  """`value` read back from JSON, shaped as `reference` (sub-configs merged, lists to tuples)."""
  if isinstance(reference, ml_collections.ConfigDict) and isinstance(value, dict):
    for key, item in value.items():
      with reference.unlocked():
        reference[key] = _from_json(reference.get(key) if key in reference else None, item)
    return reference
  if isinstance(value, list) and (reference is None or isinstance(reference, tuple)):
    return tuple(value)
  return value


def config_from_json(values) -> ml_collections.ConfigDict:
  """Rebuilds a ConfigDict saved as JSON by the trainer (`config.json`; tuples restored).

  Starts from `base_config(model.name)`, so fields a run's file lacks keep
  their defaults; nested groups (e.g. `data.augment`) are merged field by
  field. Older files are migrated: execution fields kept in `model` move to
  the `execution` group; the `model.prob_unet` sub-group (a Prob. U-Net's
  fields, written beside the HPU-Net's whichever model ran) becomes the
  `model` group of a Prob. U-Net and is dropped from an HPU-Net's.
  """
  values = dict(values)
  model = dict(values.get("model", {}))
  moved = {k: model.pop(k) for k in EXECUTION_FIELDS if k in model}
  if moved:
    values["execution"] = {**moved, **values.get("execution", {})}
  name = model.get("name", registry.DEFAULT_MODEL)
  prob_unet_group = model.pop("prob_unet", None)
  if isinstance(prob_unet_group, dict) and name == "prob_unet":
    model = {"name": name, "num_classes": model.get("num_classes", 2), **prob_unet_group}
  values["model"] = model
  return _from_json(base_config(name), values)


def apply_overrides(config, overrides):
  """Sets `{"group.field": value}` in `config` (in place; returned); unknown fields raise.

  Raises:
    ValueError: naming the field that `config` does not have.
  """
  for path, value in overrides.items():
    *groups, field = path.split(".")
    node = config
    for depth, group in enumerate(groups):
      if not isinstance(node, ml_collections.ConfigDict) or group not in node:
        raise ValueError(f"{path}: the config has no group {'.'.join(groups[:depth + 1])!r}")
      node = node[group]
    if not groups or field not in node:
      raise ValueError(f"{path}: the config has no field {path!r}")
    with config.unlocked():
      node[field] = value
  return config
