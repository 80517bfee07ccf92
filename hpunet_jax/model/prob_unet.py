"""The Probabilistic U-Net (Kohl et al. 2018) as released, as Haiku modules.

Layer for layer the network of SimonKohl/probabilistic_unet
(`model/probabilistic_unet.py`, built as `training/train_prob_unet.py` builds
it), in NHWC instead of the release's NCHW:

* a U-Net: blocks of `convs_per_block` 3x3 convolutions with ReLU, 2x2
  average pooling before every block but the first; the decoder upsamples
  bilinearly (`align_corners=True`) to the skip's size, concatenates
  `[upsampled, skip]` and runs a block, ending at `channels[0]` features
  without a logits layer;
* a prior `p(z|x)` and a posterior `q(z|x,y)`: each its own encoder with the
  U-Net's channels, a global mean over the pixels and a 1x1 convolution to
  `[mu, log_sigma]` of the one global latent; the posterior sees
  `[image, segmentation - 0.5]`;
* f_comb: `z` tiled over the image and concatenated after the U-Net's last
  features, `num_1x1_convs` 1x1 convolutions with ReLU, a 1x1 convolution to
  the logits.

Sampling runs the U-Net and the prior once per image and f_comb once per
sample (the release's `sample()` re-evaluates only f_comb). He-normal
weights, truncated-normal biases (std 0.001). docs/model.md.

`build(config)` hands the modules to `base.build_model`, which gives them the
same pure functions as every model, with the one latent as a single "scale"
of shape `[B, 1, 1, d]`; `hpunet_jax.model.make_model` is the way in.
"""
import dataclasses
from typing import ClassVar, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.model import base
from hpunet_jax.model.config import (ACTIVATIONS, COMPUTE_DTYPES, check_common, from_dict,
                                     positive_int, positive_tuple)
from hpunet_jax.model.init import he_normal
from hpunet_jax.model.layers import Conv, Gaussian, downsample, in_compute_dtype, kl_divergence

# f_comb's last convolution: the one the release leaves unregularised.
LOGITS_MODULE = "logits"
# The first convolution of the prior's encoder sees the image alone.
IMAGE_CONV = "prob_unet/~/prior/~/encoder/down_block_0/conv_0"


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
  # The field whose length (the levels) sets `size_multiple`.
  LEVELS_FIELD: ClassVar[str] = "channels"

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
                       positive_tuple("channels", self.channels, owner="ProbUNetConfig"))
    positive_int(self, "latent_dim")
    positive_int(self, "convs_per_block")
    positive_int(self, "num_1x1_convs", allow_zero=True)
    check_common(self)

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
    return from_dict(cls, values, prefix, allowed)




def _interpolation_matrix(size_in, size_out):
  """`[size_out, size_in]` weights of 1-d linear resampling with `align_corners=True`.

  Output pixel `i` samples input position `i * (size_in - 1) / (size_out - 1)`,
  as TF1's `resize_bilinear(..., align_corners=True)`.
  """
  scale = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
  position = np.arange(size_out) * scale
  low = np.minimum(np.floor(position).astype(int), size_in - 1)
  high = np.minimum(low + 1, size_in - 1)
  frac = position - low
  matrix = np.zeros((size_out, size_in), np.float32)
  matrix[np.arange(size_out), low] += 1 - frac
  matrix[np.arange(size_out), high] += frac
  return matrix


def resize_bilinear_align_corners(x, height, width):
  """`[B, h, w, C] -> [B, height, width, C]`, TF1's bilinear resize with aligned corners."""
  rows = jnp.asarray(_interpolation_matrix(x.shape[1], height), x.dtype)
  cols = jnp.asarray(_interpolation_matrix(x.shape[2], width), x.dtype)
  x = jnp.einsum("oh,bhwc->bowc", rows, x)
  return jnp.einsum("pw,bowc->bopc", cols, x)


class _Block(hk.Module):
  """`convs_per_block` 3x3 convolutions, each followed by the activation."""

  def __init__(self, channels, config, name):
    super().__init__(name=name)
    self._channels = channels
    self._config = config

  def __call__(self, x):
    cfg = self._config
    gemm = x.shape[1] in (cfg.gemm_weight_grad_sizes or ())
    for j in range(cfg.convs_per_block):
      x = Conv(self._channels, 3, f"conv_{j}", gemm_weight_grad=gemm, w_init=he_normal)(x)
      x = ACTIVATIONS[cfg.activation](x)
    return x


def _block(x, channels, config, name):
  block = _Block(channels, config, name)
  return hk.remat(block)(x) if config.remat else block(x)


class Encoder(hk.Module):
  """The release's `VGG_Encoder`: one block per level, pooling before all but the first."""

  def __init__(self, config: ProbUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, x):
    """`[B, H, W, C]` -> the features of every level, finest first."""
    features = []
    for i, channels in enumerate(self._config.channels):
      if i > 0:
        x = downsample(x)
      x = _block(x, channels, self._config, f"down_block_{i}")
      features.append(x)
    return features


class UNet(hk.Module):
  """The release's `UNet`: encoder, then decoder blocks back to `channels[0]` features."""

  def __init__(self, config: ProbUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config
    self.encoder = Encoder(config, name="encoder")

  def __call__(self, images):
    """`[B, H, W, C]` -> `[B, H, W, channels[0]]`."""
    encoder_features = self.encoder(images)
    x = encoder_features[-1]
    for i in range(self._config.num_levels - 2, -1, -1):
      skip = encoder_features[i]
      x = resize_bilinear_align_corners(x, skip.shape[1], skip.shape[2])
      x = jnp.concatenate([x, skip], axis=-1)
      x = _block(x, self._config.channels[i], self._config, f"up_block_{i}")
    return x


class AxisAlignedConvGaussian(hk.Module):
  """The release's prior/posterior: an encoder, a global mean, a 1x1 conv to `[mu, log_sigma]`."""

  def __init__(self, config: ProbUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config
    self.encoder = Encoder(config, name="encoder")

  def __call__(self, inputs) -> Gaussian:
    """`[B, H, W, C]` -> a `Gaussian` with `mu`, `log_sigma` `[B, 1, 1, latent_dim]`."""
    encoding = self.encoder(inputs)[-1]
    encoding = jnp.mean(encoding, axis=(1, 2), keepdims=True)
    dim = self._config.latent_dim
    mu_log_sigma = Conv(2 * dim, 1, "mu_log_sigma", w_init=he_normal)(encoding)
    mu_log_sigma = mu_log_sigma.astype(jnp.float32)
    return Gaussian(mu_log_sigma[..., :dim], mu_log_sigma[..., dim:])


class Conv1x1Decoder(hk.Module):
  """The release's f_comb: `[features, tiled z]`, 1x1 convs with ReLU, 1x1 logits."""

  def __init__(self, config: ProbUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, features, z):
    """`features` `[B, H, W, C]`, `z` `[B, 1, 1, latent_dim]` -> logits `[B, H, W, K]`."""
    cfg = self._config
    z = jnp.broadcast_to(z.astype(features.dtype), features.shape[:3] + (z.shape[-1],))
    x = jnp.concatenate([features, z], axis=-1)
    for j in range(cfg.num_1x1_convs):
      x = ACTIVATIONS[cfg.activation](Conv(cfg.channels[0], 1, f"conv_{j}", w_init=he_normal)(x))
    return Conv(cfg.num_classes, 1, LOGITS_MODULE, w_init=he_normal)(x).astype(jnp.float32)


class ProbUNet(hk.Module):
  """The combined model: U-Net, prior, posterior and f_comb."""

  def __init__(self, config: ProbUNetConfig, name="prob_unet"):
    super().__init__(name=name)
    self._config = config
    self.unet = UNet(config, name="unet")
    self.prior = AxisAlignedConvGaussian(config, name="prior")
    self.posterior = AxisAlignedConvGaussian(config, name="posterior")
    self.f_comb = Conv1x1Decoder(config, name="f_comb")

  def _run(self, method, *args):
    return in_compute_dtype(COMPUTE_DTYPES[self._config.compute_dtype], method, *args)

  def _dtype(self, x):
    return x.astype(COMPUTE_DTYPES[self._config.compute_dtype])

  def encode(self, images):
    """What sampling runs once per image: the U-Net's features and the prior."""
    return self._run(lambda x: (self.unet(x), self.prior(x)), self._dtype(images))

  def combine(self, features, z):
    """f_comb: what sampling runs once per sample."""
    return self._run(self.f_comb, features, z)

  def forward(self, images, segmentations, mean):
    return self._run(self._forward, images, segmentations, mean)

  def _forward(self, images, segmentations, mean):
    """The posterior's latent (sampled, or its mean) through f_comb.

    Returns:
      A dict with `logits` `[B, H, W, K]`, `prior` and `posterior` (lists of
      one Gaussian), `posterior_latents` (`[z]`, `[B, 1, 1, d]`) and `kl`
      (`[KL(q || p)]`, `[B]`, analytic, summed over the latent).
    """
    images = self._dtype(images)
    posterior = self.posterior(
        jnp.concatenate([images, self._dtype(segmentations) - 0.5], axis=-1))
    prior = self.prior(images)
    z = posterior.mu if mean[0] else posterior.sample(hk.next_rng_key())
    logits = self.f_comb(self.unet(images), z)
    return dict(logits=logits, prior=[prior], posterior=[posterior], posterior_latents=[z],
                kl=[kl_divergence(posterior, prior)])


def l2_penalty(params, weight=1e-5) -> jax.Array:
  """The release's L2 regulariser: `weight * sum(w**2) / 2` over the weights.

  `train_prob_unet.py` builds the net with `regularizers={'w':
  l2_regularizer(1.0)}` (weights only: no bias is regularised) and adds
  `1e-5 * sum(REGULARIZATION_LOSSES)`; `l2_regularizer` is `tf.nn.l2_loss`,
  which halves. f_comb's logits convolution is built with
  `regularizers=None`, so its weight does not count either.
  """
  total = jnp.zeros((), jnp.float32)
  for module, values in params.items():
    if module.endswith("/" + LOGITS_MODULE):
      continue
    if "w" in values:
      total = total + jnp.sum(jnp.square(values["w"]))
  return weight * total / 2


def build(config: ProbUNetConfig) -> base.Model:
  """The `Model` of a Prob. U-Net (see `base.build_model`); use `hpunet_jax.model.make_model`.

  `sample` runs the U-Net and the prior once and f_comb once per sample.
  """
  def _fns():
    net = ProbUNet(config)

    def init(images, segmentations):
      return net.forward(images, segmentations, (False,))

    return init, (net.encode, net.combine, net.forward)

  transformed = hk.multi_transform(_fns)
  apply_encode, apply_combine, _ = transformed.apply

  def sample_fn(params, rng, images, latents, num_samples, mean):
    # The U-Net and the prior run once; only f_comb is mapped over the samples.
    features, prior = apply_encode(params, None, images)
    latent = None if latents is None else latents[0]
    if latent is not None:
      zs = jnp.broadcast_to(latent, (num_samples,) + latent.shape)
    elif mean[0]:
      zs = jnp.broadcast_to(prior.mu, (num_samples,) + prior.mu.shape)
    else:
      zs = jax.vmap(prior.sample)(jax.random.split(rng, num_samples))
    return jax.vmap(lambda z: apply_combine(params, None, features, z))(zs)

  return base.build_model(config, transformed, sample_fn, weights="he_normal", l2_penalty=l2_penalty,
                          input_channels=base.input_channels_of(IMAGE_CONV))
