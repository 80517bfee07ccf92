"""Tests of the objective: top-k, reconstruction, GECO, the moving average, KL gradients."""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from hpunet_jax import objective
from hpunet_jax.model import HPUNetConfig, make_model


@pytest.mark.parametrize("use_noise", [False, True])
def test_top_k_keeps_exactly_k_and_never_a_masked_pixel(use_noise):
  rng = np.random.default_rng(0)
  xe = jnp.asarray(rng.random((3, 8, 8)), jnp.float32)
  mask = jnp.asarray(rng.random((3, 8, 8)) > 0.5, jnp.float32)
  k = 20
  kept = objective.top_k_mask(xe, k, mask=mask, rng=jax.random.key(1) if use_noise else None)
  assert float(kept.sum()) == k
  assert float((kept * (1 - mask)).sum()) == 0
  if not use_noise:  # deterministic: the k largest allowed losses
    allowed = np.where(np.asarray(mask) > 0, np.asarray(xe), -np.inf).ravel()
    expected = np.zeros_like(allowed)
    expected[np.argsort(-allowed)[:k]] = 1
    np.testing.assert_array_equal(np.asarray(kept).ravel(), expected)


def test_gumbel_top_k_prefers_high_loss_but_varies():
  xe = jnp.concatenate([jnp.full((1, 4, 8), 10.0), jnp.full((1, 4, 8), 0.1)], axis=1)
  picks = np.stack([np.asarray(objective.top_k_mask(xe, 8, rng=jax.random.key(i)))
                    for i in range(50)])
  assert picks[:, :, :4].sum() > 0.9 * picks.sum()   # mostly from the high-loss half
  assert len({p.tobytes() for p in picks}) > 1        # but not always the same pixels


def test_reconstruction_loss_sums_per_example_and_averages_over_batch():
  logits = jnp.zeros((2, 4, 4, 2))
  seg = jax.nn.one_hot(jnp.zeros((2, 4, 4), jnp.int32), 2)
  rec = objective.reconstruction_loss(logits, seg)
  np.testing.assert_allclose(rec.rec_sum, 16 * np.log(2), rtol=1e-6)
  np.testing.assert_allclose(rec.rec_mean, np.log(2), rtol=1e-6)
  top = objective.reconstruction_loss(logits, seg, top_k_percentage=0.25)
  assert float(top.mask.sum()) == 8
  np.testing.assert_allclose(top.rec_sum, 8 * np.log(2) / 2, rtol=1e-6)


def test_moving_average_value_and_gradient():
  state = objective.init_geco_state()

  def f(x, state):
    new_state, avg = objective.update_moving_average(state, x, 0.9)
    return avg, new_state

  (avg, state), grad = jax.value_and_grad(f, has_aux=True)(jnp.float32(4.0), state)
  assert float(avg) == 4.0 and float(grad) == 1.0  # set to the first value seen
  (avg, state), grad = jax.value_and_grad(f, has_aux=True)(jnp.float32(14.0), state)
  np.testing.assert_allclose(avg, 0.9 * 4 + 0.1 * 14, rtol=1e-6)
  np.testing.assert_allclose(state.moving_average, avg)
  assert float(grad) == 1.0  # the newest term's gradient, not 0.1


def _geco_loss_config(**kw):
  return ml_collections.ConfigDict(dict(type="geco", kappa=0.05, decay=0.99, rate=1e-2, beta=1.0,
                                        top_k_percentage=None, deterministic_top_k=True, **kw))


def test_gradient_reaching_w_is_minus_rate_times_constraint_times_dlambda():
  raw = objective.initial_lagrange_raw(1.0)
  np.testing.assert_allclose(objective.lagrange_multiplier(raw, 0.01), 1.0, rtol=1e-6)
  for constraint in (3.0, -2.0):
    grad = jax.grad(lambda w: objective.lagrange_multiplier(w, 0.01) * constraint)(raw)
    dlambda = jax.grad(lambda w: jnp.square(jax.nn.softplus(w)))(raw)
    np.testing.assert_allclose(grad, -0.01 * constraint * dlambda, rtol=1e-5)


def test_lambda_grows_while_violated_shrinks_when_met_and_stays_positive():
  opt = optax.adam(0.05)
  w = objective.initial_lagrange_raw(1.0)
  state = opt.init(w)
  grad_fn = jax.grad(lambda w, c: objective.lagrange_multiplier(w, 0.01) * c)
  history = []
  for step in range(400):
    constraint = 5.0 if step < 200 else -5.0
    updates, state = opt.update(grad_fn(w, constraint), state)
    w = optax.apply_updates(w, updates)
    history.append(float(objective.lagrange_multiplier(w, 0.01)))
  assert history[199] > 2.0           # grew while the constraint was violated
  assert history[-1] < history[199]   # fell once it held
  assert min(history) > 0


def test_geco_objective_uses_mask_sum_after_top_k():
  model = make_model(HPUNetConfig(latent_dims=(2,), channels_per_block=(4, 8),
                                  blocks_per_level=1, convs_per_block=1))
  images = jnp.zeros((2, 8, 8, 1))
  segs = jax.nn.one_hot(jnp.ones((2, 8, 8), jnp.int32), 2)
  params = model.init(jax.random.key(0), images, segs)
  outputs = model.forward(params, jax.random.key(1), images, segs)
  cfg = _geco_loss_config()
  cfg.top_k_percentage = 0.5
  loss, (geco, metrics) = objective.objective(
      outputs, segs, loss_config=cfg, geco_state=objective.init_geco_state(),
      lagrange_raw=objective.initial_lagrange_raw(1.0), rng=jax.random.key(2))
  np.testing.assert_allclose(metrics["num_valid_pixels"], 32.0)  # half of 64 per example
  np.testing.assert_allclose(metrics["rec_constraint"], metrics["rec_sum"] - 0.05 * 32, rtol=1e-5)
  np.testing.assert_allclose(loss, metrics["rec_constraint"] + metrics["kl_sum"], rtol=1e-5)
  assert bool(geco.initialized)
  q, p = outputs["posterior"][0], outputs["prior"][0]
  np.testing.assert_allclose(metrics["posterior_width_0"],
                             np.mean(np.exp(q.log_sigma - p.log_sigma)), rtol=1e-5)
  assert "posterior_width_1" not in metrics   # one scale


def test_posterior_width_is_the_mean_sigma_ratio():
  from hpunet_jax.model.layers import Gaussian
  log = lambda x: jnp.log(jnp.asarray(x, jnp.float32))
  prior = Gaussian(jnp.zeros((1, 1, 2, 1)), log([[[[1.0], [2.0]]]]))
  spikes = Gaussian(jnp.ones((1, 1, 2, 1)), log([[[[0.03], [0.06]]]]))
  np.testing.assert_allclose(objective.posterior_width(spikes, prior), 0.03, rtol=1e-5)
  np.testing.assert_allclose(objective.posterior_width(prior, prior), 1.0, rtol=1e-6)


@pytest.mark.slow
def test_kl_gradient_reaches_prior_and_posterior():
  model = make_model(HPUNetConfig(latent_dims=(2, 1), channels_per_block=(4, 6, 8),
                                  blocks_per_level=1, convs_per_block=1))
  rng = np.random.default_rng(0)
  images = jnp.asarray(rng.random((2, 8, 8, 1)), jnp.float32)
  segs = jax.nn.one_hot(jnp.asarray(rng.integers(0, 2, (2, 8, 8))), 2)
  params = model.init(jax.random.key(0), images, segs)
  grads = jax.grad(lambda p: sum(jnp.mean(k) for k in model.forward(
      p, jax.random.key(1), images, segs)["kl"]))(params)
  norms = {"prior": 0.0, "posterior": 0.0}
  for module, values in grads.items():
    for part in norms:
      if f"/{part}/" in module.replace("~/", ""):
        norms[part] += float(sum(jnp.sum(jnp.square(v)) for v in values.values()))
  assert norms["prior"] > 0 and norms["posterior"] > 0


def _half_masked_outputs():
  """A tiny model's outputs on 2 examples of 8x8, and a mask that keeps the left half."""
  model = make_model(HPUNetConfig(latent_dims=(2,), channels_per_block=(4, 8),
                                  blocks_per_level=1, convs_per_block=1))
  rng = np.random.default_rng(3)
  images = jnp.asarray(rng.random((2, 8, 8, 1)), jnp.float32)
  segs = jax.nn.one_hot(jnp.asarray(rng.random((2, 8, 8)) > 0.5, jnp.int32), 2)
  params = model.init(jax.random.key(0), images, segs)
  outputs = model.forward(params, jax.random.key(1), images, segs)
  mask = jnp.zeros((2, 8, 8)).at[:, :, :4].set(1.0)   # 32 valid pixels per example
  return outputs, segs, mask


@pytest.mark.parametrize("top_k_percentage", [None, 0.25, 0.75])
def test_half_masked_pixels_never_count(top_k_percentage):
  """The release's `loss(seg, img, mask)`: masked pixels are out of top-k, N and rec_mean."""
  outputs, segs, mask = _half_masked_outputs()
  cfg = _geco_loss_config()
  cfg.top_k_percentage = top_k_percentage
  cfg.deterministic_top_k = False
  _, (_, metrics) = objective.objective(
      outputs, segs, loss_config=cfg, geco_state=objective.init_geco_state(),
      lagrange_raw=objective.initial_lagrange_raw(1.0), rng=jax.random.key(2), mask=mask)
  xe = np.asarray(-jnp.sum(segs * jax.nn.log_softmax(outputs["logits"]), -1))
  rec = objective.reconstruction_loss(outputs["logits"], segs, top_k_percentage=top_k_percentage,
                                      rng=jax.random.key(2), mask=mask)
  kept = np.asarray(rec.mask)
  assert kept[:, :, 4:].sum() == 0                      # never a masked pixel
  # k = floor(p * B*H*W) counts all 128 pixels, as the release; 0.75 asks for
  # 96 > the 64 valid ones, and still only valid pixels count.
  expected_kept = 64 if top_k_percentage is None else min(int(top_k_percentage * 128), 64)
  assert kept.sum() == expected_kept
  np.testing.assert_allclose(metrics["num_valid_pixels"], expected_kept / 2)
  np.testing.assert_allclose(metrics["rec_sum"], (xe * kept).sum() / 2, rtol=1e-5)
  np.testing.assert_allclose(metrics["rec_mean"], (xe * kept).sum() / expected_kept, rtol=1e-5)
  np.testing.assert_allclose(metrics["rec_constraint"],
                             metrics["rec_sum"] - 0.05 * expected_kept / 2, rtol=1e-5)
  if top_k_percentage is None:   # without top-k: the valid half exactly
    np.testing.assert_array_equal(kept, np.asarray(mask))
    np.testing.assert_allclose(metrics["rec_mean"], xe[:, :, :4].mean(), rtol=1e-5)


def test_masked_pixels_get_no_gradient():
  outputs, segs, mask = _half_masked_outputs()
  cfg = _geco_loss_config()
  cfg.top_k_percentage = None

  def loss(logits):
    out = dict(outputs, logits=logits)
    return objective.objective(out, segs, loss_config=cfg, geco_state=objective.init_geco_state(),
                               lagrange_raw=objective.initial_lagrange_raw(1.0),
                               rng=jax.random.key(2), mask=mask)[0]

  grad = np.asarray(jax.grad(loss)(outputs["logits"]))
  assert np.all(grad[:, :, 4:] == 0) and np.any(grad[:, :, :4] != 0)
