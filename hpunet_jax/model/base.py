"""What every model shares: the `Model` of pure functions and the wrapper that builds it.

A model module (`hpunet.py`, `prob_unet.py`) holds its config dataclass, its
Haiku modules and a `build(config)` that hands `build_model` the few things
that differ between models: the Haiku transform, the sampler, the
initialiser, the L2 rule and where the image enters. `build_model` gives
every model the same checked, jitted functions. No model module imports
another; `registry.py` maps `model.name` to them.
"""
import dataclasses
import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.model.cpu_conv import CPU_GEMM_WEIGHT_GRAD_SIZES
from hpunet_jax.model.init import host_init


class Model(NamedTuple):
  """The pure functions of a model; see `build_model` for their signatures."""
  config: Any
  init: Callable[..., Any]
  sample: Callable[..., jax.Array]
  reconstruct: Callable[..., jax.Array]
  forward: Callable[..., dict]
  check_inputs: Callable[..., None]
  # (params, weight) -> the model's release's L2 penalty: each release
  # regularises different parameters.
  l2_penalty: Callable[..., jax.Array]
  # params -> the image channels the network was built for (read off the
  # parameter that first sees the image).
  input_channels: Callable[[Any], int]


def normalise_mean(mean, num_scales):
  """`mean` as a tuple of one bool per scale (accepts a bool or a sequence)."""
  if isinstance(mean, (bool, np.bool_)):
    return (bool(mean),) * num_scales
  mean = tuple(bool(m) for m in mean)
  if len(mean) != num_scales:
    raise ValueError(f"mean has {len(mean)} entries but the model has {num_scales} latent "
                     f"scales (one bool per scale, coarsest first)")
  return mean


def with_execution_defaults(config):
  """`config` with `gemm_weight_grad_sizes=None` resolved for this backend (CPU: the GEMM sizes)."""
  if getattr(config, "gemm_weight_grad_sizes", ()) is not None:
    return config
  on_cpu = jax.default_backend() == "cpu"
  return dataclasses.replace(
      config, gemm_weight_grad_sizes=CPU_GEMM_WEIGHT_GRAD_SIZES if on_cpu else ())


def input_channels_of(param_path):
  """`params -> int`: the input channels of the convolution `param_path`, which sees the image."""
  def input_channels(params):
    try:
      return int(params[param_path]["w"].shape[2])
    except KeyError:
      raise ValueError(f"the parameters have no {param_path}/w: they are not of this "
                       "model") from None
  return input_channels


def build_model(config, transformed, sample_fn, *, weights, l2_penalty, input_channels) -> Model:
  """The `Model` of one config, from the pieces that differ between models.

  Args:
    config: the model's frozen config; it has `num_classes`, `num_scales`,
      `num_levels`, `size_multiple`, `latent_shapes(H, W)` and `LEVELS_FIELD`
      (the field whose length sets `size_multiple`, for the error message).
    transformed: a Haiku multi-transform whose `init(images, segmentations)`
      touches every module and whose `apply[-1]` is
      `forward(images, segmentations, mean)`.
    sample_fn: `(params, rng, images, latents, num_samples, mean) -> logits
      [num_samples, B, H, W, K]`, traced inside jit (`latents`: None or one
      entry per scale, each an array or None).
    weights: `host_init`'s weight initialiser ('orthogonal', 'he_normal').
    l2_penalty: `(params, weight) -> scalar`.
    input_channels: `params -> int`.

  Returns a `Model` with:
    init(rng, images, segmentations) -> params
    sample(params, rng, images, *, num_samples=1, mean=False, latents=None)
        -> logits `[num_samples, B, H, W, num_classes]` from the prior. `mean`
        is a bool or one bool per scale (coarsest first); scales at their mean
        do not vary. `latents` fixes scales to given values: one entry per
        scale, an array `[B, h_i, w_i, latent_dims[i]]` (shapes:
        `config.latent_shapes(H, W)`) shared by all samples, or None for a
        scale that follows `mean`. Jitted with `num_samples` and `mean` static.
    reconstruct(params, rng, images, segmentations, *, mean=False)
        -> logits `[B, H, W, num_classes]` from the posterior's latents.
    forward(params, rng, images, segmentations, *, mean=False) -> dict with
        `logits`, per-scale `prior`/`posterior` Gaussians, the
        `posterior_latents` and per-scale `kl` (`[B]` each).
    check_inputs(images, segmentations=None): raises a ValueError naming
        what does not fit.
  `images` are float32 `[B, H, W, C]`, `segmentations` one-hot float32
  `[B, H, W, num_classes]`; H and W must be multiples of `config.size_multiple`.
  """
  apply_forward = transformed.apply[-1]

  def check_inputs(images, segmentations=None):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {shape}")
    m = config.size_multiple
    for name, size in (("height", shape[1]), ("width", shape[2])):
      if size % m or size == 0:
        raise ValueError(
            f"image {name} {size} is not a multiple of 2**(len({config.LEVELS_FIELD}) - 1) = {m} "
            f"({config.num_levels} levels); sizes that work: {m}, {2 * m}, {3 * m}, {4 * m}, ...")
    if segmentations is not None:
      seg_shape = getattr(segmentations, "shape", None)
      expected = tuple(shape[:3]) + (config.num_classes,)
      if seg_shape is None or tuple(seg_shape) != expected:
        raise ValueError(f"segmentations must be one-hot [B, H, W, num_classes] = {expected}, "
                         f"got {seg_shape}")

  def check_latents(images, latents):
    if latents is None:
      return None
    latents = list(latents)
    if len(latents) != config.num_scales:
      raise ValueError(f"latents has {len(latents)} entries but the model has "
                       f"{config.num_scales} latent scale(s) (one per scale, coarsest first; "
                       "None for a scale left free)")
    batch, height, width, _ = images.shape
    for i, (z, shape) in enumerate(zip(latents, config.latent_shapes(height, width))):
      if z is not None and tuple(getattr(z, "shape", ())) != (batch,) + tuple(shape):
        raise ValueError(f"latents[{i}] must have shape {(batch,) + tuple(shape)} "
                         f"[B, h, w, latent channels], got {getattr(z, 'shape', None)}")
    if all(z is None for z in latents):
      return None
    return [None if z is None else jnp.asarray(z, jnp.float32) for z in latents]

  # Jitted once here: Haiku executed op by op is slow, and every function is pure.
  jit_sample = jax.jit(sample_fn, static_argnames=("num_samples", "mean"))
  jit_forward = jax.jit(apply_forward, static_argnums=4)

  def init(rng, images, segmentations):
    check_inputs(images, segmentations)
    if any(isinstance(x, jax.core.Tracer) for x in (rng, images, segmentations)):
      # Traced (inside jit or eval_shape): Haiku's own initialisers, in the graph.
      return transformed.init(rng, images, segmentations)
    abstract = jax.eval_shape(transformed.init, rng, images, segmentations)
    return host_init(rng, abstract, weights=weights)

  def sample(params, rng, images, *, num_samples=1, mean=False, latents=None):
    check_inputs(images)
    return jit_sample(params, rng, images, check_latents(images, latents),
                      num_samples=int(num_samples),
                      mean=normalise_mean(mean, config.num_scales))

  def forward(params, rng, images, segmentations, *, mean=False):
    check_inputs(images, segmentations)
    return jit_forward(params, rng, images, segmentations,
                       normalise_mean(mean, config.num_scales))

  def reconstruct(params, rng, images, segmentations, *, mean=False):
    return forward(params, rng, images, segmentations, mean=mean)["logits"]

  return Model(config, init, sample, reconstruct, forward, check_inputs, l2_penalty,
               input_channels)


def cached(build):
  """`build(config)` memoised per config, so that callers share jitted functions and compilations."""
  return functools.lru_cache(maxsize=32)(build)
