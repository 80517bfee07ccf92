"""The HPU-Net objective: masked cross-entropy with top-k, per-scale KL, ELBO and GECO.

As in DeepMind's release (`geco_utils.py` and `HierarchicalProbUNet.loss`):

* reconstruction: softmax cross-entropy summed over the pixels a mask keeps
  (optionally only the top-k hardest pixels of the whole batch), averaged over
  the batch (`rec_sum`); summing rather than averaging per pixel is what keeps
  the latents in use;
* ELBO: `rec_sum + beta * kl_sum`;
* GECO (Rezende & Viola 2018): `lambda * (ma(rec_sum) - kappa * N) + kl_sum`,
  where `ma` is a moving average whose value is the average and whose gradient
  is the newest term's, and `lambda = softplus(w)**2` is *maximised* by the
  same optimiser because the gradient reaching `w` is scaled by `-rate`.

Everything here is written on the *global* batch: under `jit` with a sharded
batch XLA computes the same values whatever the number of devices, and the
Gumbel noise for top-k is drawn with the global shape from a key that does not
depend on the device layout (JAX's partitionable threefry), so the selected
pixels are the same on 1 device and on 8.
"""
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def scale_gradient(x, scale):
  """Identity in the forward pass; multiplies the gradient by `scale`."""
  return x * scale + jax.lax.stop_gradient(x * (1.0 - scale))


def moving_average_value_grad(new_average, newest):
  """The average's value with the newest term's gradient (the release's trick)."""
  return jax.lax.stop_gradient(new_average - newest) + newest


def softplus_inverse(y):
  return float(np.log(np.expm1(y)))


def lagrange_multiplier(raw, rate):
  """`lambda = softplus(raw)**2`; the gradient reaching `raw` is scaled by `-rate`."""
  return jnp.square(jax.nn.softplus(scale_gradient(raw, -rate)))


def initial_lagrange_raw(initial_value=1.0):
  """The `raw` for which `lagrange_multiplier(raw) == initial_value`."""
  return jnp.asarray(softplus_inverse(np.sqrt(initial_value)), jnp.float32)


def top_k_mask(xe, k, *, mask=None, rng=None):
  """Keeps the `k` pixels with the highest cross-entropy over the whole batch.

  Score = `log(xe / sum(xe)) + gumbel + log(mask)` with `xe` under
  stop-gradient; without `rng` no noise is added (deterministic top-k).

  Args:
    xe: per-pixel cross-entropy `[B, H, W]`.
    k: number of pixels to keep (static int).
    mask: optional `[B, H, W]` 0/1 mask of pixels that may be picked.
    rng: key for Gumbel noise, or None.

  Returns:
    float32 `[B, H, W]` with exactly `k` ones (never on a masked-out pixel
    as long as `k` does not exceed the number of allowed pixels).
  """
  xe = jax.lax.stop_gradient(xe)
  if mask is None:
    mask = jnp.ones_like(xe)
  # Small floor: pixels with zero loss still get a finite score, so ties stay
  # ordered by the noise instead of becoming -inf.
  scores = jnp.log(xe / jnp.sum(xe) + 1e-30)
  if rng is not None:
    scores = scores + jax.random.gumbel(rng, xe.shape, xe.dtype)
  scores = jnp.where(mask > 0, scores, -jnp.inf)
  flat = scores.reshape(-1)
  _, indices = jax.lax.top_k(flat, k)
  return jnp.zeros_like(flat).at[indices].set(1.0).reshape(xe.shape)


class ReconstructionLoss(NamedTuple):
  rec_sum: jax.Array      # mean over the batch of each example's masked sum
  rec_mean: jax.Array     # masked sum / mask sum
  mask: jax.Array         # [B, H, W] the pixels that counted


def reconstruction_loss(logits, segmentations, *, top_k_percentage=None, rng=None,
                        mask=None) -> ReconstructionLoss:
  """Masked softmax cross-entropy.

  Args:
    logits: `[B, H, W, K]`.
    segmentations: one-hot `[B, H, W, K]`.
    top_k_percentage: keep only `floor(p * B * H * W)` pixels; None keeps all.
      As in the release, `k` counts all pixels of the batch, masked or not.
    rng: Gumbel-noise key for top-k; None makes top-k deterministic.
    mask: optional `[B, H, W]` 0/1 pixels that count at all (augmentation's
      validity mask: pixels brought in from outside the source image are 0).
      Top-k never picks a masked pixel; `rec_mean` divides by the kept pixels.
  """
  xe = -jnp.sum(segmentations * jax.nn.log_softmax(logits.astype(jnp.float32)), axis=-1)
  if mask is None:
    mask = jnp.ones_like(xe)
  if top_k_percentage is not None:
    k = int(np.floor(top_k_percentage * np.prod(xe.shape)))
    if k < 1:
      raise ValueError(f"loss.top_k_percentage={top_k_percentage} keeps no pixel of a "
                       f"{xe.shape} batch")
    # As the release: the top-k mask is ANDed with the validity mask, so a
    # masked pixel never counts even when k exceeds the valid pixels.
    mask = mask * top_k_mask(xe, k, mask=mask, rng=rng)
  masked = xe * mask
  rec_sum = jnp.sum(masked) / xe.shape[0]
  rec_mean = jnp.sum(masked) / jnp.maximum(jnp.sum(mask), 1.0)
  return ReconstructionLoss(rec_sum, rec_mean, mask)


class GecoState(NamedTuple):
  """GECO's non-trainable state: the moving average of `rec_sum`."""
  moving_average: jax.Array   # float32 scalar
  initialized: jax.Array      # bool scalar: the average has seen a value


def init_geco_state() -> GecoState:
  return GecoState(jnp.zeros((), jnp.float32), jnp.zeros((), jnp.bool_))


def update_moving_average(state: GecoState, value, decay):
  """New state and the average (value of the average, gradient of `value`)."""
  previous = jax.lax.stop_gradient(state.moving_average)
  stopped = jax.lax.stop_gradient(value)
  average = jnp.where(state.initialized, decay * previous + (1 - decay) * stopped, stopped)
  return GecoState(average, jnp.ones((), jnp.bool_)), moving_average_value_grad(average, value)


def posterior_width(posterior, prior):
  """Mean over the batch and the latent map of `sigma_posterior / sigma_prior`.

  Far below 1 (say 0.03), the posterior codes each label in a spike that
  covers a sliver of the prior: the decoder is trained on those slivers only,
  and prior samples between them decode to masks between two labels.
  """
  ratio = jnp.exp(posterior.log_sigma.astype(jnp.float32) - prior.log_sigma.astype(jnp.float32))
  return jnp.mean(jax.lax.stop_gradient(ratio))


def objective(outputs, segmentations, *, loss_config, geco_state, lagrange_raw, rng,
              mask=None):
  """The training loss and its metrics.

  Args:
    outputs: `forward`'s dict (`logits`, per-scale `kl` `[B]`, and the
      per-scale `posterior` and `prior` Gaussians, which give the
      `posterior_width_<i>` metrics; without them there are none).
    segmentations: one-hot `[B, H, W, K]`.
    loss_config: the `loss` config group (`type`, `beta`, `kappa`, `decay`,
      `rate`, `top_k_percentage`, `deterministic_top_k`).
    geco_state: `GecoState`.
    lagrange_raw: the trainable scalar `w` of GECO's multiplier (ignored for
      the ELBO).
    rng: key for top-k's Gumbel noise.
    mask: optional `[B, H, W]` validity mask (the release's `loss(seg, img,
      mask)`): masked pixels are never in top-k, and GECO's `N` (so
      `kappa * N`) counts only valid pixels.

  Returns:
    `(loss, (new_geco_state, metrics))`, without the L2 penalty.
  """
  rec = reconstruction_loss(
      outputs["logits"], segmentations, top_k_percentage=loss_config.top_k_percentage,
      rng=None if loss_config.deterministic_top_k else rng, mask=mask)
  kl_per_scale = [jnp.mean(kl) for kl in outputs["kl"]]
  kl_sum = sum(kl_per_scale)
  metrics = dict(rec_sum=rec.rec_sum, rec_mean=rec.rec_mean, kl_sum=kl_sum)
  for i, kl in enumerate(kl_per_scale):
    metrics[f"kl_{i}"] = kl
  for i, (q, p) in enumerate(zip(outputs.get("posterior", ()), outputs.get("prior", ()))):
    metrics[f"posterior_width_{i}"] = posterior_width(q, p)
  if loss_config.type == "elbo":
    loss = rec.rec_sum + loss_config.beta * kl_sum
    new_geco_state = geco_state
  elif loss_config.type == "geco":
    new_geco_state, average = update_moving_average(geco_state, rec.rec_sum, loss_config.decay)
    num_valid_pixels = jnp.mean(jnp.sum(rec.mask, axis=(1, 2)))
    constraint = average - loss_config.kappa * num_valid_pixels
    lagmul = lagrange_multiplier(lagrange_raw, loss_config.rate)
    loss = lagmul * constraint + kl_sum
    metrics.update(lagmul=lagmul, rec_moving_average=average, rec_constraint=constraint,
                   num_valid_pixels=num_valid_pixels)
  else:
    raise ValueError(f"loss.type must be 'geco' or 'elbo', got {loss_config.type!r}")
  return loss, (new_geco_state, metrics)
