"""The Hierarchical Probabilistic U-Net (Kohl et al. 2019) as Haiku modules.

Layer for layer the network of DeepMind's TF1/Sonnet release
(`hierarchical_probabilistic_unet`): a pre-activated residual block, the
hierarchical core used both as prior `p(z|x)` and as posterior `q(z|x,y)`, and
the stitching decoder `f_comb` that turns the prior's features into logits.

`make_model(config)` wraps the modules in pure functions (`init`, `sample`,
`reconstruct`, `forward`) that take parameters explicitly; nothing here keeps
state.

The posterior's residual blocks after its last latent scale feed nothing any
loss uses, but the release builds them, so this package builds them too: the
parameter count is the release's (21,877,230 at the LIDC defaults). Under `jit`
XLA removes their forward computation because nothing reads it.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.model.config import COMPUTE_DTYPES, HPUNetConfig, ProbUNetConfig
from hpunet_jax.model.cpu_conv import CPU_GEMM_WEIGHT_GRAD_SIZES
from hpunet_jax.model.init import host_init
from hpunet_jax.model.layers import (Conv, Gaussian, downsample, in_compute_dtype, kl_divergence,
                                     res_stack, upsample)


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


def normalise_mean(mean, num_scales):
  """`mean` as a tuple of one bool per scale (accepts a bool or a sequence)."""
  if isinstance(mean, (bool, np.bool_)):
    return (bool(mean),) * num_scales
  mean = tuple(bool(m) for m in mean)
  if len(mean) != num_scales:
    raise ValueError(f"mean has {len(mean)} entries but the model has {num_scales} latent "
                     f"scales (one bool per scale, coarsest first)")
  return mean


class Model(NamedTuple):
  """Pure functions of a model (the HPU-Net or the Prob. U-Net); see `make_model`."""
  config: Any                  # HPUNetConfig or ProbUNetConfig
  init: Callable[..., Any]
  sample: Callable[..., jax.Array]
  reconstruct: Callable[..., jax.Array]
  forward: Callable[..., dict]
  check_inputs: Callable[..., None]
  # (params, weight) -> the release's L2 penalty of this model: each release
  # regularises different parameters (`l2_penalty`, `prob_unet.l2_penalty`).
  l2_penalty: Callable[..., jax.Array]


def make_model(config: HPUNetConfig | None = None) -> Model:
  """Builds the pure functions of an HPU-Net (one `Model` per distinct config).

  A `ProbUNetConfig` builds the Prob. U-Net instead (`prob_unet.make_prob_unet`),
  behind the same functions.

  Returns a `Model` with:
    init(rng, images, segmentations) -> params
    sample(params, rng, images, *, num_samples=1, mean=False, latents=None)
        -> logits `[num_samples, B, H, W, num_classes]` from the prior. `mean`
        is a bool or one bool per scale (coarsest first); scales at their mean
        do not vary. `latents`, as the release's `sample(img, mean, z_q)`,
        fixes scales to given values: one entry per scale, an array
        `[B, h_i, w_i, latent_dims[i]]` (shapes: `config.latent_shapes(H, W)`;
        e.g. `forward(...)['posterior_latents'][i]`, or an interpolation) for
        the scales the caller fixes, shared by all samples, and None for the
        others, which follow `mean`. Vectorised over samples with `vmap` over
        split keys; jit it with `num_samples` and `mean` static.
    reconstruct(params, rng, images, segmentations, *, mean=False)
        -> logits `[B, H, W, num_classes]`: the posterior's latents (sampled,
        or its means) fed to the prior, then f_comb.
    forward(params, rng, images, segmentations, *, mean=False) -> dict with
        `logits`, per-scale `prior`/`posterior` Gaussians and per-scale `kl`.
  `images` are float32 `[B, H, W, C]`, `segmentations` one-hot float32
  `[B, H, W, num_classes]`; H and W must be multiples of
  `config.size_multiple`. `l2_penalty(params, weight)` is the release's
  regulariser (see `l2_penalty`).
  """
  if isinstance(config, ProbUNetConfig):
    from hpunet_jax.model import prob_unet  # pylint: disable=g-import-not-at-top
    return prob_unet.make_prob_unet(config)
  config = config or HPUNetConfig()
  if config.gemm_weight_grad_sizes is None:
    on_cpu = jax.default_backend() == "cpu"
    config = dataclasses.replace(
        config, gemm_weight_grad_sizes=CPU_GEMM_WEIGHT_GRAD_SIZES if on_cpu else ())
  return _make_model(config)


@functools.lru_cache(maxsize=32)
def _make_model(config: HPUNetConfig) -> Model:
  # Cached so that every caller with the same config shares the jitted
  # functions and their compilations.

  def _fns():
    net = HPUNet(config)

    def init(images, segmentations):
      # Touches every module: posterior, prior (with posterior latents) and f_comb.
      return net.forward(images, segmentations, (False,) * config.num_scales)

    return init, (net.sample, net.forward)

  transformed = hk.multi_transform(_fns)
  apply_sample, apply_forward = transformed.apply

  def check_inputs(images, segmentations=None):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {shape}")
    _, height, width, _ = shape
    m = config.size_multiple
    for name, size in (("height", height), ("width", width)):
      if size % m or size == 0:
        raise ValueError(
            f"image {name} {size} is not a multiple of 2**(len(channels_per_block) - 1) = {m} "
            f"({config.num_levels} levels); sizes that work: {m}, {2 * m}, {3 * m}, {4 * m}, ...")
    if segmentations is not None:
      seg_shape = getattr(segmentations, "shape", None)
      expected = tuple(shape[:3]) + (config.num_classes,)
      if seg_shape is None or tuple(seg_shape) != expected:
        raise ValueError(f"segmentations must be one-hot [B, H, W, num_classes] = {expected}, "
                         f"got {seg_shape}")

  # Jitted once here: Haiku executed op by op is slow, and every function is pure.
  @functools.partial(jax.jit, static_argnames=("num_samples", "mean"))
  def jit_sample(params, rng, images, latents, num_samples, mean):
    keys = jax.random.split(rng, num_samples)
    # The prior's encoder does not depend on the key, so vmap leaves it unbatched:
    # it runs once for all samples.
    return jax.vmap(lambda k: apply_sample(params, k, images, mean, latents))(keys)

  jit_forward = jax.jit(apply_forward, static_argnums=4)

  def init(rng, images, segmentations):
    check_inputs(images, segmentations)
    if any(isinstance(x, jax.core.Tracer) for x in (rng, images, segmentations)):
      # Traced (inside jit or eval_shape): Haiku's own initialisers, in the graph.
      return transformed.init(rng, images, segmentations)
    abstract = jax.eval_shape(transformed.init, rng, images, segmentations)
    return host_init(rng, abstract)

  def check_latents(images, latents):
    if latents is None:
      return None
    latents = list(latents)
    if len(latents) != config.num_scales:
      raise ValueError(f"latents has {len(latents)} entries but the model has "
                       f"{config.num_scales} latent scales (one per scale, coarsest first; "
                       "None for a scale left free)")
    batch, height, width, _ = images.shape
    for i, (z, shape) in enumerate(zip(latents, config.latent_shapes(height, width))):
      if z is not None and tuple(getattr(z, "shape", ())) != (batch,) + tuple(shape):
        raise ValueError(f"latents[{i}] must have shape {(batch,) + tuple(shape)} "
                         f"[B, h, w, latent_dims[{i}]], got {getattr(z, 'shape', None)}")
    return [None if z is None else jnp.asarray(z, jnp.float32) for z in latents]

  def sample(params, rng, images, *, num_samples=1, mean=False, latents=None):
    check_inputs(images)
    return jit_sample(params, rng, images, check_latents(images, latents), int(num_samples),
                      normalise_mean(mean, config.num_scales))

  def forward(params, rng, images, segmentations, *, mean=False):
    check_inputs(images, segmentations)
    return jit_forward(params, rng, images, segmentations,
                       normalise_mean(mean, config.num_scales))

  def reconstruct(params, rng, images, segmentations, *, mean=False):
    return forward(params, rng, images, segmentations, mean=mean)["logits"]

  return Model(config, init, sample, reconstruct, forward, check_inputs, l2_penalty)


def l2_penalty(params, scale=1e-5) -> jax.Array:
  """The release's L2 regulariser: `scale * sum(p**2)` over every weight and bias.

  The release attaches `tf.keras.regularizers.l2(scale)` to every `w` and `b`;
  Keras' l2 is `scale * reduce_sum(square(p))`, with no 1/2 (unlike
  `tf.nn.l2_loss`).
  """
  return scale * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
