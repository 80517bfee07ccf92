"""The HPU-Net's building blocks: Gaussians, the convolution, the residual block.

Layer for layer those of DeepMind's release (`unet_utils.res_block` and the
convolutions of `model.py`).
"""
from typing import NamedTuple

import haiku as hk
import jax
import jax.numpy as jnp

from hpunet_jax.model import cpu_conv
from hpunet_jax.model.config import ACTIVATIONS
from hpunet_jax.model.init import B_INIT, W_INIT

class Gaussian(NamedTuple):
  """A diagonal Gaussian per pixel: `mu`, `log_sigma` `[B, h, w, c]`."""
  mu: jax.Array
  log_sigma: jax.Array

  def sample(self, rng):
    return self.mu + jnp.exp(self.log_sigma) * jax.random.normal(rng, self.mu.shape, self.mu.dtype)


def kl_divergence(q: Gaussian, p: Gaussian) -> jax.Array:
  """Analytic KL(q || p), summed over pixels and channels: `[B]`."""
  var_ratio_term = (jnp.exp(2 * q.log_sigma) + jnp.square(q.mu - p.mu)) / (2 * jnp.exp(2 * p.log_sigma))
  kl = p.log_sigma - q.log_sigma + var_ratio_term - 0.5
  return jnp.sum(kl, axis=(1, 2, 3))


class Conv(hk.Module):
  """A stride-1 SAME convolution with bias, the parameters of `hk.Conv2D`.

  Parameters `w` `[k, k, C_in, C_out]` and `b` `[C_out]` (names, shapes and
  initialisers as `hk.Conv2D(channels, kernel, padding='SAME')`). The same
  function, computed in ways XLA:CPU runs faster (benchmarks/RESULTS.md):

  * a 1x1 kernel runs as a matrix product over the channel axis: XLA:CPU
    computes a product's weight gradient as one GEMM, but a 1x1
    convolution's as a convolution over the whole image with the batch as
    feature axis (after two transposes), 3-6x slower;
  * with `gemm_weight_grad=True` a 3x3 kernel's weight gradient is one GEMM
    too (`cpu_conv.gemm_weight_grad`, a custom VJP). That is faster than XLA:CPU's
    own at some sizes only (64x64 on the benchmark machine), hence the
    switch (`HPUNetConfig.gemm_weight_grad_sizes`).
  """

  def __init__(self, channels, kernel, name=None, *, gemm_weight_grad=False, w_init=W_INIT):
    super().__init__(name=name)
    self._channels = channels
    self._kernel = kernel
    self._gemm_weight_grad = gemm_weight_grad
    self._w_init = w_init

  def __call__(self, x):
    k = self._kernel
    w = hk.get_parameter("w", (k, k, x.shape[-1], self._channels), x.dtype, init=self._w_init)
    b = hk.get_parameter("b", (self._channels,), x.dtype, init=B_INIT)
    if k == 1:
      out = jnp.matmul(x, w[0, 0])
    elif self._gemm_weight_grad:
      out = cpu_conv.conv_gemm_weight_grad(x, w)
    else:
      out = cpu_conv.same_conv(x, w)
    return out + b


class ResBlock(hk.Module):
  """Pre-activated residual block (the release's `res_block`)."""

  def __init__(self, out_channels, down_channels, *, convs_per_block=3,
               activation=jax.nn.relu, gemm_weight_grad_sizes=(), name=None):
    super().__init__(name=name)
    self._out = out_channels
    self._down = down_channels
    self._convs = convs_per_block
    self._act = activation
    self._gemm_sizes = tuple(gemm_weight_grad_sizes or ())

  def __call__(self, x):
    residual = self._act(x)
    gemm = x.shape[1] in self._gemm_sizes
    for i in range(self._convs):
      residual = Conv(self._down, 3, f"conv_{i}", gemm_weight_grad=gemm)(residual)
      if i < self._convs - 1:
        residual = self._act(residual)
    skip = x if x.shape[-1] == self._out else Conv(self._out, 1, "skip")(x)
    if self._down != self._out:
      residual = Conv(self._out, 1, "project")(residual)
    return skip + residual


def res_stack(x, config, level, name):
  """`blocks_per_level` residual blocks with the sizes of `level`."""
  act = ACTIVATIONS[config.activation]
  for b in range(config.blocks_per_level):
    block = ResBlock(config.channels_per_block[level], config.down_channels_per_block[level],
                     convs_per_block=config.convs_per_block, activation=act,
                     gemm_weight_grad_sizes=config.gemm_weight_grad_sizes,
                     name=f"{name}_block_{b}")
    x = hk.remat(block)(x) if config.remat else block(x)
  return x


def in_compute_dtype(dtype, method, *args):
  """Runs `method` with parameters created in float32 and used in `dtype`."""
  if dtype == jnp.float32:
    return method(*args)

  def create_float32(next_creator, shape, _, init, context):
    del context
    return next_creator(shape, jnp.float32, init)

  def get_in_compute_dtype(next_getter, value, context):
    del context
    return next_getter(value.astype(dtype))

  with hk.custom_creator(create_float32), hk.custom_getter(get_in_compute_dtype):
    return method(*args)


def downsample(x):
  return hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")


def upsample(x):
  """2x nearest-neighbour upsampling `[B, h, w, c] -> [B, 2h, 2w, c]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)

