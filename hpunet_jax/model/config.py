"""The models' typed configs: sizes that define the network, and execution settings.

`HPUNetConfig` (the HPU-Net) and `ProbUNetConfig` (the Prob. U-Net of Kohl et
al. 2018); `make_model` builds whichever it is given.

`HPUNetConfig` is the one source of the model's defaults (the release's LIDC
setting); the experiment config's `model` and `execution` groups are built
from its fields (`hpunet_jax.config_lib`). The fields in `EXECUTION_FIELDS`
change how the network is computed, never its parameters, so a run may
resume with them changed.
"""
import dataclasses
from typing import Sequence

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

def _positive_tuple(name, value, allow_empty=False, owner="HPUNetConfig"):
  try:
    value = tuple(int(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"{owner}.{name} must be a sequence of ints, got {value!r}") from e
  if not value and not allow_empty:
    raise ValueError(f"{owner}.{name} must not be empty")
  if any(v <= 0 for v in value):
    raise ValueError(f"{owner}.{name} must hold positive sizes, got {value}")
  return value


def _from_dict(cls, values, prefix, allowed):
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


def _check_execution(config):
  """The execution fields both configs share."""
  name = type(config).__name__
  if config.compute_dtype not in COMPUTE_DTYPES:
    raise ValueError(f"{name}.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, "
                     f"got {config.compute_dtype!r}")
  if config.gemm_weight_grad_sizes is not None:
    object.__setattr__(config, "gemm_weight_grad_sizes", _positive_tuple(
        "gemm_weight_grad_sizes", config.gemm_weight_grad_sizes, allow_empty=True, owner=name))


@dataclasses.dataclass(frozen=True)
class HPUNetConfig:
  """Sizes of the HPU-Net; the defaults are the release's LIDC setting.

  Attributes:
    latent_dims: latent channels per scale, coarsest first. Scale `i` has
      spatial size `H / 2**(L - 1 - i)` with `L = len(channels_per_block)`.
    channels_per_block: output channels of the residual blocks at each level,
      finest first; levels are separated by 2x2 average pooling.
    down_channels_per_block: inner channels of the blocks per level; None means
      half of `channels_per_block` (the release falls back to half of its
      *default* channels, which is a bug for other sizes).
    num_classes: segmentation classes (2: background, foreground).
    convs_per_block: 3x3 convolutions per residual block.
    blocks_per_level: residual blocks per level.
    activation: one of `ACTIVATIONS`.
    compute_dtype: 'float32' or 'bfloat16'; parameters stay float32, the
      convolutions run in this dtype, Gaussians and logits come out float32.
    remat: recompute each residual block's activations in the backward pass
      instead of storing them (less memory, more compute).
    max_abs_log_sigma: if set, clip `log_sigma` to this magnitude before use
      (other ports clip at 10 to avoid `exp` overflow); None, as the release.
    gemm_weight_grad_sizes: feature-map heights at which the 3x3 convolutions
      compute their weight gradient as one GEMM (see `Conv`) instead of XLA's
      convolution: the same values, only a speed choice. None: `make_model`
      uses `CPU_GEMM_WEIGHT_GRAD_SIZES` on CPU and () elsewhere.
  """
  latent_dims: Sequence[int] = (1, 1, 1, 1)
  channels_per_block: Sequence[int] = (24, 48, 96, 192, 192, 192, 192, 192)
  down_channels_per_block: Sequence[int] | None = None
  num_classes: int = 2
  convs_per_block: int = 3
  blocks_per_level: int = 3
  activation: str = "relu"
  compute_dtype: str = "float32"
  remat: bool = False
  max_abs_log_sigma: float | None = None
  gemm_weight_grad_sizes: Sequence[int] | None = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("channels_per_block", _positive_tuple("channels_per_block", self.channels_per_block))
    set_("latent_dims", _positive_tuple("latent_dims", self.latent_dims))
    num_levels = len(self.channels_per_block)
    if len(self.latent_dims) > num_levels - 1:
      raise ValueError(
          f"HPUNetConfig.latent_dims has {len(self.latent_dims)} scales but "
          f"channels_per_block has {num_levels} levels: at most levels - 1 = "
          f"{num_levels - 1} latent scales fit")
    if self.down_channels_per_block is None:
      set_("down_channels_per_block", tuple(max(1, c // 2) for c in self.channels_per_block))
    else:
      set_("down_channels_per_block",
           _positive_tuple("down_channels_per_block", self.down_channels_per_block))
      if len(self.down_channels_per_block) != num_levels:
        raise ValueError(
            f"HPUNetConfig.down_channels_per_block has {len(self.down_channels_per_block)} "
            f"entries but channels_per_block has {num_levels}")
    for name in ("num_classes", "convs_per_block", "blocks_per_level"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"HPUNetConfig.{name} must be a positive int, got {value!r}")
      set_(name, int(value))
    if self.num_classes < 2:
      raise ValueError(f"HPUNetConfig.num_classes must be at least 2, got {self.num_classes}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"HPUNetConfig.activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    _check_execution(self)
    if self.max_abs_log_sigma is not None and not self.max_abs_log_sigma > 0:
      raise ValueError(f"HPUNetConfig.max_abs_log_sigma must be positive or None, "
                       f"got {self.max_abs_log_sigma!r}")

  @property
  def num_levels(self) -> int:
    return len(self.channels_per_block)

  @property
  def num_scales(self) -> int:
    return len(self.latent_dims)

  @property
  def size_multiple(self) -> int:
    """Image height and width must be multiples of this."""
    return 2 ** (self.num_levels - 1)

  def latent_shapes(self, height, width):
    """Spatial shape `(h, w, c)` of each latent scale, coarsest first."""
    return [(height // 2 ** (self.num_levels - 1 - i), width // 2 ** (self.num_levels - 1 - i), d)
            for i, d in enumerate(self.latent_dims)]

  @classmethod
  def from_dict(cls, values, *, prefix="model", allowed=None):
    """Builds a config from a mapping (e.g. the `model` ConfigDict group).

    Keys outside `allowed` (default: every field) raise a ValueError naming
    `<prefix>.<key>`.
    """
    return _from_dict(cls, values, prefix, allowed)


@dataclasses.dataclass(frozen=True)
class ProbUNetConfig:
  """Sizes of the Probabilistic U-Net (Kohl et al. 2018) as released.

  The defaults are those of the release's `training/prob_unet_config.py`
  (SimonKohl/probabilistic_unet), but for `num_classes`: the release's
  Cityscapes setting has 19 + 5 classes, LIDC (the HPU-Net paper's
  comparison) 2. docs/model.md describes the network.

  Attributes:
    latent_dim: size of the one global latent `z`.
    channels: output channels of the U-Net's blocks, finest first; the prior
      and posterior encoders have the same. Blocks after the first start with
      2x2 average pooling.
    num_classes: segmentation classes.
    convs_per_block: 3x3 convolutions (each followed by ReLU) per block.
    num_1x1_convs: f_comb's 1x1 convolutions of `channels[0]` channels (each
      followed by ReLU) before its 1x1 logits convolution.
    activation: one of `ACTIVATIONS`.
    compute_dtype, remat, gemm_weight_grad_sizes: execution settings, as
      `HPUNetConfig`'s (remat recomputes each block's activations).
  """
  latent_dim: int = 6
  channels: Sequence[int] = (32, 64, 128, 192, 192, 192, 192)
  num_classes: int = 2
  convs_per_block: int = 3
  num_1x1_convs: int = 3
  activation: str = "relu"
  compute_dtype: str = "float32"
  remat: bool = False
  gemm_weight_grad_sizes: Sequence[int] | None = None

  def __post_init__(self):
    object.__setattr__(self, "channels",
                       _positive_tuple("channels", self.channels, owner="ProbUNetConfig"))
    for name in ("latent_dim", "num_classes", "convs_per_block", "num_1x1_convs"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0 or (
          value == 0 and name != "num_1x1_convs"):
        raise ValueError(f"ProbUNetConfig.{name} must be a positive int, got {value!r}")
      object.__setattr__(self, name, int(value))
    if self.num_classes < 2:
      raise ValueError(f"ProbUNetConfig.num_classes must be at least 2, got {self.num_classes}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"ProbUNetConfig.activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    _check_execution(self)

  @property
  def num_levels(self) -> int:
    return len(self.channels)

  @property
  def num_scales(self) -> int:
    """One global latent: one "scale" for the code that loops over scales."""
    return 1

  @property
  def latent_dims(self):
    return (self.latent_dim,)

  @property
  def size_multiple(self) -> int:
    """Image height and width must be multiples of this (2x2 pooling per level)."""
    return 2 ** (self.num_levels - 1)

  def latent_shapes(self, height, width):
    """`[(1, 1, latent_dim)]`: the global latent as a 1x1 map, as `HPUNetConfig`'s scales."""
    del height, width
    return [(1, 1, self.latent_dim)]

  @classmethod
  def from_dict(cls, values, *, prefix="model", allowed=None):
    """As `HPUNetConfig.from_dict`."""
    return _from_dict(cls, values, prefix, allowed)


def latent_placement(model_config, height, width):
  """Where the latents sit for `height x width` inputs: `(description, warning or None)`.

  The latent scales of an HPU-Net are fixed by its number of levels, not by
  the data: a network of L levels puts scale i at `H / 2**(L-1-i)`. So a
  config sized for 32x32 images (6 levels: latents at 1x1, 2x2, 4x4) trained
  on 64x64 images silently gets latents at 2x2, 4x4 and 8x8 and no global
  (1x1) latent at all. The warning says so when the coarsest latent is not
  1x1 (docs/model.md, "Where the latents sit").
  """
  shapes = model_config.latent_shapes(height, width)
  cells = ", ".join(f"{h}x{w} ({c} ch)" for h, w, c in shapes)
  description = f"latents at {cells} for {height}x{width} images"
  if isinstance(model_config, ProbUNetConfig):
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
