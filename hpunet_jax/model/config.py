"""What every model's typed config shares: activations, compute dtypes, execution fields, checks.

Each model's config dataclass lives in its own module (`HPUNetConfig` in
`hpunet.py`, `ProbUNetConfig` in `prob_unet.py`) and is the one source of that
model's defaults; the experiment config's `model` and `execution` groups are
built from its fields (`hpunet_jax.config_lib`). The fields in
`EXECUTION_FIELDS` change how the network is computed, never its parameters,
so a run may resume with them changed.
"""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "leaky_relu": jax.nn.leaky_relu,
}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Fields that change how the network is computed, not its parameters or
# outputs beyond rounding: the experiment config keeps them in the `execution`
# group, which a resumed run may change.
EXECUTION_FIELDS = ("compute_dtype", "remat", "gemm_weight_grad_sizes")

def positive_tuple(name, value, *, owner, allow_empty=False):
  try:
    value = tuple(int(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{owner}.{name} must be a sequence of ints, got {value!r}") from e
  if not value and not allow_empty:
    raise ValueError(f"{owner}.{name} must not be empty")
  if any(v <= 0 for v in value):
    raise ValueError(f"{owner}.{name} must hold positive sizes, got {value}")
  return value


def from_dict(cls, values, prefix, allowed):
  values = dict(values)
  fields = set(allowed) if allowed is not None else {f.name for f in dataclasses.fields(cls)}
  unknown = sorted(set(values) - fields)
  if unknown:
    raise ValueError(f"unknown field(s) {', '.join(prefix + '.' + k for k in unknown)}; "
                     f"known: {', '.join(sorted(fields))}")
  try:
    return cls(**values)
  except ValueError as e:
    raise ValueError(str(e).replace(cls.__name__ + ".", prefix + ".")) from None


def check_execution(config):
  """The execution fields both configs share."""
  name = type(config).__name__
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"{name}.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, "
                     f"got {config.compute_dtype!r}")
  if config.gemm_weight_grad_sizes is not None:
    object.__setattr__(config, "gemm_weight_grad_sizes", positive_tuple(
        "gemm_weight_grad_sizes", config.gemm_weight_grad_sizes, allow_empty=True, owner=name))


def positive_int(config, name, *, allow_zero=False):
  """Checks `config.<name>` is a positive int (or zero, if allowed) and stores it as an int."""
  value = getattr(config, name)
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 or (
      value == 0 and not allow_zero):
    raise ValueError(f"{type(config).__name__}.{name} must be a positive int, got {value!r}")
  object.__setattr__(config, name, int(value))


def check_common(config):
  """The checks every model config shares: `num_classes`, `activation`, the execution fields."""
  owner = type(config).__name__
  positive_int(config, "num_classes")
  if config.num_classes < 2:
    raise ValueError(f"{owner}.num_classes must be at least 2, got {config.num_classes}")
  if config.activation not in ACTIVATIONS:
    raise ValueError(f"{owner}.activation must be one of {sorted(ACTIVATIONS)}, "
                     f"got {config.activation!r}")
  check_execution(config)


def latent_placement(model_config, height, width):
  """Where the latents sit for `height x width` inputs: `(description, warning or None)`.

  The latent scales of an HPU-Net are fixed by its number of levels, not by
  the data: a network of L levels puts scale i at `H / 2**(L-1-i)`. So a
  config sized for 32x32 images (6 levels: latents at 1x1, 2x2, 4x4) trained
  on 64x64 images silently gets latents at 2x2, 4x4 and 8x8 and no global
  (1x1) latent at all. The warning says so when the coarsest latent is not
  1x1 (docs/model.md, "Where the latents sit"). A model whose latents do not
  depend on the image size (`latent_shapes` ignores it) gets no warning.
  """
  shapes = model_config.latent_shapes(height, width)
  cells = ", ".join(f"{h}x{w} ({c} ch)" for h, w, c in shapes)
  description = f"latents at {cells} for {height}x{width} images"
  if shapes == model_config.latent_shapes(2 * height, 2 * width):
    return description + " (one global latent)", None
  h, w, _ = shapes[0]
  warning = None
  if (h, w) != (1, 1):
    levels_needed = model_config.num_levels + int(np.log2(max(h, w)))
    warning = (f"the coarsest latent is {h}x{w}, not 1x1: model.channels_per_block has "
               f"{model_config.num_levels} levels, {height}x{width} images need "
               f"{levels_needed} to reach a global latent (was the config made for another "
               "image size?)")
  return description, warning
