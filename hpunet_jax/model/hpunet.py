"""The Hierarchical Probabilistic U-Net (Kohl et al. 2019): its config and its Haiku modules.

Layer for layer the network of DeepMind's TF1/Sonnet release
(`hierarchical_probabilistic_unet`): a pre-activated residual block, the
hierarchical core used both as prior `p(z|x)` and as posterior `q(z|x,y)`, and
the stitching decoder `f_comb` that turns the prior's features into logits.

`build(config)` hands the modules to `base.build_model`, which gives them the
pure functions every model has (`init`, `sample`, `reconstruct`, `forward`);
nothing here keeps state. `hpunet_jax.model.make_model` is the way in.

The posterior's residual blocks after its last latent scale feed nothing any
loss uses, but the release builds them, so this package builds them too: the
parameter count is the release's (21,877,230 at the LIDC defaults). Under `jit`
XLA removes their forward computation because nothing reads it.
"""
import dataclasses
from typing import ClassVar, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.model import base
from hpunet_jax.model.config import (COMPUTE_DTYPES, check_common, from_dict, positive_int,
                                     positive_tuple)
from hpunet_jax.model.layers import (Conv, Gaussian, downsample, in_compute_dtype, kl_divergence,
                                     res_stack, upsample)

OWNER = "HPUNetConfig"
# The first convolution of the prior sees the image alone: its input channels are the image's.
IMAGE_CONV = "hpunet/~/prior/encoder_level_0_block_0/conv_0"


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
  # The field whose length (the levels) sets `size_multiple`.
  LEVELS_FIELD: ClassVar[str] = "channels_per_block"

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
    set_("channels_per_block", positive_tuple("channels_per_block", self.channels_per_block,
                                              owner=OWNER))
    set_("latent_dims", positive_tuple("latent_dims", self.latent_dims, owner=OWNER))
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
           positive_tuple("down_channels_per_block", self.down_channels_per_block, owner=OWNER))
      if len(self.down_channels_per_block) != num_levels:
        raise ValueError(
            f"HPUNetConfig.down_channels_per_block has {len(self.down_channels_per_block)} "
            f"entries but channels_per_block has {num_levels}")
    for name in ("convs_per_block", "blocks_per_level"):
      positive_int(self, name)
    check_common(self)
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
    return from_dict(cls, values, prefix, allowed)



class CoreOutput(NamedTuple):
  decoder_features: jax.Array          # [B, h, w, C] after the last latent scale
  encoder_features: list               # per level, finest first
  distributions: list                  # Gaussian per latent scale, coarsest first
  latents: list                        # z used per scale [B, h_i, w_i, latent_dims[i]]


class HierarchicalCore(hk.Module):
  """Encoder plus truncated decoder with one latent Gaussian per scale."""

  def __init__(self, config: HPUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, inputs, *, mean=None, latents=None) -> CoreOutput:
    """Runs the core.

    Args:
      inputs: `[B, H, W, C]`.
      mean: one bool per scale: use the Gaussian's mean instead of a sample.
      latents: optional list with one entry per scale: a
        `[B, h_i, w_i, latent_dims[i]]` array used instead of the core's own
        latent at that scale (this is how the posterior's latents enter the
        prior), or None to let `mean` decide that scale.
    """
    cfg = self._config
    mean = mean if mean is not None else (False,) * cfg.num_scales
    features = inputs
    encoder_features = []
    for level in range(cfg.num_levels):
      features = res_stack(features, cfg, level, f"encoder_level_{level}")
      encoder_features.append(features)
      if level < cfg.num_levels - 1:
        features = downsample(features)

    distributions, used_latents = [], []
    for i, dim in enumerate(cfg.latent_dims):
      params = Conv(2 * dim, 1, f"latent_{i}")(features).astype(jnp.float32)
      mu, log_sigma = params[..., :dim], params[..., dim:]
      if cfg.max_abs_log_sigma is not None:
        log_sigma = jnp.clip(log_sigma, -cfg.max_abs_log_sigma, cfg.max_abs_log_sigma)
      dist = Gaussian(mu, log_sigma)
      if latents is not None and latents[i] is not None:
        z = latents[i]
      elif mean[i]:
        z = mu
      else:
        z = dist.sample(hk.next_rng_key())
      distributions.append(dist)
      used_latents.append(z)
      features = jnp.concatenate([z.astype(features.dtype), features], axis=-1)
      features = upsample(features)
      features = jnp.concatenate([features, encoder_features[-(i + 2)]], axis=-1)
      features = res_stack(features, cfg, cfg.num_levels - i - 2, f"decoder_level_{i}")
    return CoreOutput(features, encoder_features, distributions, used_latents)


class StitchingDecoder(hk.Module):
  """f_comb: continues the prior's decoder to full resolution, then logits."""

  def __init__(self, config: HPUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, decoder_features, encoder_features):
    cfg = self._config
    features = decoder_features
    for j in range(cfg.num_scales + 1, cfg.num_levels):
      features = upsample(features)
      features = jnp.concatenate([features, encoder_features[-(j + 1)]], axis=-1)
      features = res_stack(features, cfg, cfg.num_levels - j - 1, f"level_{j}")
    return Conv(cfg.num_classes, 1, "logits")(features).astype(jnp.float32)


class HPUNet(hk.Module):
  """The combined model: prior, posterior and f_comb."""

  def __init__(self, config: HPUNetConfig, name="hpunet"):
    super().__init__(name=name)
    self._config = config
    self.prior = HierarchicalCore(config, name="prior")
    self.posterior = HierarchicalCore(config, name="posterior")
    self.f_comb = StitchingDecoder(config, name="f_comb")

  def _dtype(self, x):
    return x.astype(COMPUTE_DTYPES[self._config.compute_dtype])

  def __call__(self, method, *args):
    """Runs `method` with parameters kept in float32 and used in the compute dtype."""
    return in_compute_dtype(COMPUTE_DTYPES[self._config.compute_dtype], method, *args)

  def sample(self, images, mean, latents=None):
    return self(self._sample, images, mean, latents)

  def _sample(self, images, mean, latents):
    prior = self.prior(self._dtype(images), mean=mean, latents=latents)
    return self.f_comb(prior.decoder_features, prior.encoder_features)

  def forward(self, images, segmentations, mean):
    return self(self._forward, images, segmentations, mean)

  def _forward(self, images, segmentations, mean):
    """Posterior latents through the prior and f_comb.

    Returns:
      A dict with `logits` `[B, H, W, K]`, the per-scale `prior` and
      `posterior` Gaussians, the `posterior_latents` used, and `kl`: one
      `[B]` array per scale, KL(q || p) summed over pixels and channels.
    """
    posterior_inputs = jnp.concatenate([segmentations, images], axis=-1)
    posterior = self.posterior(self._dtype(posterior_inputs), mean=mean)
    prior = self.prior(self._dtype(images), latents=posterior.latents)
    logits = self.f_comb(prior.decoder_features, prior.encoder_features)
    kl = [kl_divergence(q, p) for q, p in zip(posterior.distributions, prior.distributions)]
    return dict(logits=logits, prior=prior.distributions, posterior=posterior.distributions,
                posterior_latents=posterior.latents, kl=kl)


def build(config: HPUNetConfig) -> base.Model:
  """The `Model` of an HPU-Net (see `base.build_model`); use `hpunet_jax.model.make_model`."""

  def _fns():
    net = HPUNet(config)

    def init(images, segmentations):
      # Touches every module: posterior, prior (with posterior latents) and f_comb.
      return net.forward(images, segmentations, (False,) * config.num_scales)

    return init, (net.sample, net.forward)

  transformed = hk.multi_transform(_fns)
  apply_sample = transformed.apply[0]

  def sample_fn(params, rng, images, latents, num_samples, mean):
    keys = jax.random.split(rng, num_samples)
    # The prior's encoder does not depend on the key, so vmap leaves it unbatched:
    # it runs once for all samples.
    return jax.vmap(lambda k: apply_sample(params, k, images, mean, latents))(keys)

  return base.build_model(config, transformed, sample_fn, weights="orthogonal", l2_penalty=l2_penalty,
                          input_channels=base.input_channels_of(IMAGE_CONV))


def l2_penalty(params, scale=1e-5) -> jax.Array:
  """The release's L2 regulariser: `scale * sum(p**2)` over every weight and bias.

  The release attaches `tf.keras.regularizers.l2(scale)` to every `w` and `b`;
  Keras' l2 is `scale * reduce_sum(square(p))`, with no 1/2 (unlike
  `tf.nn.l2_loss`).
  """
  return scale * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
