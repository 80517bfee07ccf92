"""Convolutions computed in ways XLA:CPU runs faster (the same values).

`Conv` (`hpunet_jax.model.layers`) runs a 3x3 convolution through
`conv_gemm_weight_grad` at the heights listed in
`HPUNetConfig.gemm_weight_grad_sizes`: its weight gradient is one GEMM
instead of XLA's convolution. `CPU_GEMM_WEIGHT_GRAD_SIZES` is the default on
CPU (benchmarks/RESULTS.md).
"""
import jax
import jax.numpy as jnp

# Where the GEMM weight gradient shortens the whole training step on XLA:CPU
# (benchmarks/RESULTS.md: -6% to -16% at 64x64; slower at 128x128; no
# measurable gain at 32x32 or below, for more temporary memory).
CPU_GEMM_WEIGHT_GRAD_SIZES = (64,)

_CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def same_conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_CONV_DIMENSIONS)


def gemm_weight_grad(x, g, kernel):
  """`d loss / d w` of a stride-1 SAME conv as one matrix product: `[k, k, C, D]`.

  `dw[i, j] = sum_{b, h, w} x_pad[b, h + i, w + j] (x) g[b, h, w]`: the `k*k`
  copies of `g`, each shifted by `(i, j)` into the padded grid and stacked on
  the channel axis, make it one GEMM `[C, B*H'*W'] x [B*H'*W', k*k*D]`.
  """
  p = kernel // 2
  channels, out_channels = x.shape[-1], g.shape[-1]
  x_pad = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  shifted = jnp.concatenate(
      [jnp.pad(g, ((0, 0), (i, 2 * p - i), (j, 2 * p - j), (0, 0)))
       for i in range(kernel) for j in range(kernel)], axis=-1)
  dw = jnp.einsum("bhwc,bhwk->ck", x_pad, shifted, preferred_element_type=jnp.float32)
  dw = dw.reshape(channels, kernel, kernel, out_channels).transpose(1, 2, 0, 3)
  return dw.astype(x.dtype)


@jax.custom_vjp
def conv_gemm_weight_grad(x, w):
  """`same_conv` whose weight gradient is `gemm_weight_grad` (same values)."""
  return same_conv(x, w)


def _conv_gemm_forward(x, w):
  return same_conv(x, w), (x, w)


def _conv_gemm_backward(residuals, g):
  x, w = residuals
  # The input gradient of a stride-1 SAME conv with an odd kernel is the SAME
  # conv of `g` with the kernel flipped in space and its channel axes swapped.
  dx = same_conv(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))
  return dx, gemm_weight_grad(x, g, w.shape[0])


conv_gemm_weight_grad.defvjp(_conv_gemm_forward, _conv_gemm_backward)

