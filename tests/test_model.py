"""Tests of the Haiku modules and the pure model API."""
import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax import model as model_lib
from hpunet_jax.model import HPUNetConfig, make_model

# The release's own test configuration.
TEST_CONFIG = HPUNetConfig(latent_dims=(3, 2, 1), channels_per_block=(5, 7, 9, 11, 13),
                           down_channels_per_block=(5, 7, 9, 11, 13), num_classes=2)


def _batch(batch_size=2, size=32, channels=1, num_classes=2, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.random((batch_size, size, size, channels), np.float32)
  labels = rng.integers(0, num_classes, (batch_size, size, size))
  return jnp.asarray(images), jnp.asarray(np.eye(num_classes, dtype=np.float32)[labels])


def _module_counts(params):
  counts = {"prior": 0, "posterior": 0, "f_comb": 0}
  for module, values in params.items():
    part = module.replace("~/", "").split("/")[1]
    counts[part] += sum(int(np.prod(v.shape)) for v in values.values())
  return counts


@pytest.fixture(scope="module")
def small():
  model = make_model(TEST_CONFIG)
  images, segs = _batch()
  params = model.init(jax.random.key(0), images, segs)
  return model, params, images, segs


def test_lidc_parameter_count_matches_the_release():
  """Counted with eval_shape, so the 21.9M-parameter model compiles nothing."""
  model = make_model(HPUNetConfig())
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 128, 128, 1)),
                          jnp.zeros((1, 128, 128, 2)))
  assert _module_counts(params) == {"prior": 10_692_800, "posterior": 10_693_064,
                                    "f_comb": 491_366}
  assert model_lib.count_params(params) == 21_877_230


def test_test_config_parameter_count(small):
  _, params, _, _ = small
  assert _module_counts(params) == {"prior": 60_574, "posterior": 60_674, "f_comb": 2_462}
  assert model_lib.count_params(params) == 123_710


def test_lidc_sample_shape():
  model = make_model(HPUNetConfig())
  images = jnp.zeros((2, 128, 128, 1))
  params = jax.eval_shape(model.init, jax.random.key(0), images, jnp.zeros((2, 128, 128, 2)))
  out = jax.eval_shape(lambda p, k: model.sample(p, k, images, num_samples=16), params,
                       jax.random.key(1))
  assert out.shape == (16, 2, 128, 128, 2)


def test_core_intermediate_shapes():
  """Shapes via eval_shape: traced, nothing compiled or run."""
  images, _ = _batch()

  def f(x):
    out = model_lib.HierarchicalCore(TEST_CONFIG, name="prior")(x)
    logits = model_lib.StitchingDecoder(TEST_CONFIG)(out.decoder_features, out.encoder_features)
    return out, logits

  transformed = hk.transform(f)
  params = jax.eval_shape(transformed.init, jax.random.key(0), images)
  out, logits = jax.eval_shape(transformed.apply, params, jax.random.key(1), images)
  assert [f.shape for f in out.encoder_features] == [
      (2, 32, 32, 5), (2, 16, 16, 7), (2, 8, 8, 9), (2, 4, 4, 11), (2, 2, 2, 13)]
  assert [d.mu.shape for d in out.distributions] == [(2, 2, 2, 3), (2, 4, 4, 2), (2, 8, 8, 1)]
  assert [d.log_sigma.shape for d in out.distributions] == [(2, 2, 2, 3), (2, 4, 4, 2),
                                                            (2, 8, 8, 1)]
  assert [z.shape for z in out.latents] == [(2, 2, 2, 3), (2, 4, 4, 2), (2, 8, 8, 1)]
  assert TEST_CONFIG.latent_shapes(32, 32) == [(2, 2, 3), (4, 4, 2), (8, 8, 1)]
  # After the last latent scale the decoder is at level -(3 + 1): 16x16, 7 channels.
  assert out.decoder_features.shape == (2, 16, 16, 7)
  assert logits.shape == (2, 32, 32, 2)


@pytest.mark.slow
@hk.testing.transform_and_run(seed=0)
def test_res_block_projects_only_when_needed():
  x = jnp.ones((1, 4, 4, 6))
  same = model_lib.ResBlock(6, 6, name="same")(x)
  other = model_lib.ResBlock(8, 3, name="other")(x)
  assert same.shape == (1, 4, 4, 6) and other.shape == (1, 4, 4, 8)


def test_res_block_parameters():
  def f(x):
    model_lib.ResBlock(8, 3, convs_per_block=3, name="a")(x)
    model_lib.ResBlock(6, 6, convs_per_block=2, name="b")(x)
  params = hk.transform(f).init(jax.random.key(0), jnp.ones((1, 4, 4, 6)))
  assert sorted(params) == ["a/conv_0", "a/conv_1", "a/conv_2", "a/project", "a/skip",
                            "b/conv_0", "b/conv_1"]
  assert params["a/conv_0"]["w"].shape == (3, 3, 6, 3)
  assert params["a/project"]["w"].shape == (1, 1, 3, 8)
  # The release's initialisers: orthogonal kernels, biases with std 0.001.
  w = np.asarray(params["a/skip"]["w"]).reshape(6, 8)
  np.testing.assert_allclose(w @ w.T, np.eye(6), atol=1e-5)
  assert np.abs(np.asarray(params["a/conv_0"]["b"])).max() < 0.003


@pytest.mark.slow
def test_sample_and_reconstruct_shapes(small):
  model, params, images, segs = small
  samples = model.sample(params, jax.random.key(1), images, num_samples=3)
  assert samples.shape == (3, 2, 32, 32, 2) and samples.dtype == jnp.float32
  recon = model.reconstruct(params, jax.random.key(1), images, segs)
  assert recon.shape == (2, 32, 32, 2)


@pytest.mark.slow
def test_sample_rng_behaviour(small):
  model, params, images, _ = small
  sample = jax.jit(model.sample, static_argnames=("num_samples", "mean"))
  a = sample(params, jax.random.key(1), images, num_samples=4)
  b = sample(params, jax.random.key(1), images, num_samples=4)
  c = sample(params, jax.random.key(2), images, num_samples=4)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  for i in range(1, 4):  # samples within one call differ
    assert not np.allclose(a[0], a[i])


@pytest.mark.slow
def test_per_scale_mean(small):
  model, params, images, _ = small
  all_mean = [model.sample(params, jax.random.key(k), images, num_samples=2, mean=True)
              for k in (1, 2)]
  np.testing.assert_allclose(all_mean[0], all_mean[1], atol=1e-6)
  np.testing.assert_allclose(all_mean[0][0], all_mean[0][1], atol=1e-6)
  for free in range(3):
    mean = tuple(i != free for i in range(3))
    s = model.sample(params, jax.random.key(3), images, num_samples=2, mean=mean)
    assert not np.allclose(s[0], s[1]), f"scale {free} free but samples equal"
  with pytest.raises(ValueError, match="one bool per scale"):
    model.sample(params, jax.random.key(3), images, mean=(True, False))


@pytest.mark.slow
def test_sample_with_given_latents(small):
  """As the release's `sample(img, mean, z_q)`: fixed scales take the latents handed in."""
  model, params, images, segs = small
  out = model.forward(params, jax.random.key(1), images, segs, mean=True)
  posterior_latents = out["posterior_latents"]
  # All scales given: the prior with the posterior's latents, i.e. the reconstruction.
  given = model.sample(params, jax.random.key(5), images, num_samples=2,
                       latents=posterior_latents)
  np.testing.assert_allclose(given[0], out["logits"], atol=1e-5)
  np.testing.assert_allclose(given[1], out["logits"], atol=1e-5)

  # The coarsest scale given, the others at their means: no randomness left,
  # and the given latent, not the prior's, decides the output.
  only_first = [posterior_latents[0], None, None]
  a = model.sample(params, jax.random.key(6), images, num_samples=2, mean=True,
                   latents=only_first)
  np.testing.assert_allclose(a[0], a[1], atol=1e-6)
  prior_mean = model.sample(params, jax.random.key(6), images, mean=True)
  assert not np.allclose(a[0], prior_mean[0])
  shifted = model.sample(params, jax.random.key(6), images, mean=True,
                         latents=[posterior_latents[0] + 3.0, None, None])
  assert not np.allclose(a[0], shifted[0])
  # The free scales still sample when `mean` says so.
  free = model.sample(params, jax.random.key(6), images, num_samples=2, latents=only_first)
  assert not np.allclose(free[0], free[1])

  with pytest.raises(ValueError, match="one per scale"):
    model.sample(params, jax.random.key(6), images, latents=posterior_latents[:2])
  with pytest.raises(ValueError, match=r"latents\[1\] must have shape \(2, 4, 4, 2\)"):
    model.sample(params, jax.random.key(6), images,
                 latents=[None, jnp.zeros((2, 2, 2, 2)), None])


def test_reconstruct_mean_is_deterministic(small):
  model, params, images, segs = small
  a = model.reconstruct(params, jax.random.key(1), images, segs, mean=True)
  b = model.reconstruct(params, jax.random.key(2), images, segs, mean=True)
  np.testing.assert_allclose(a, b, atol=1e-6)
  c = model.reconstruct(params, jax.random.key(1), images, segs)
  d = model.reconstruct(params, jax.random.key(2), images, segs)
  assert not np.allclose(c, d)


def test_forward_gives_kl_per_scale(small):
  model, params, images, segs = small
  out = model.forward(params, jax.random.key(1), images, segs)
  assert len(out["kl"]) == 3 and all(k.shape == (2,) for k in out["kl"])
  assert all(float(k.min()) >= 0 for k in out["kl"])
  assert [p.mu.shape for p in out["prior"]] == [q.mu.shape for q in out["posterior"]]


@pytest.mark.slow
def test_kl_is_zero_for_equal_gaussians_and_matches_monte_carlo():
  rng = np.random.default_rng(0)
  shape = (2, 3, 3, 2)
  q = model_lib.Gaussian(jnp.asarray(rng.normal(size=shape), jnp.float32),
                         jnp.asarray(rng.normal(scale=0.3, size=shape), jnp.float32))
  p = model_lib.Gaussian(jnp.asarray(rng.normal(size=shape), jnp.float32),
                         jnp.asarray(rng.normal(scale=0.3, size=shape), jnp.float32))
  np.testing.assert_allclose(model_lib.kl_divergence(q, q), 0.0, atol=1e-5)
  kl = np.asarray(model_lib.kl_divergence(q, p))
  assert (kl > 0).all()
  z = q.mu + jnp.exp(q.log_sigma) * jax.random.normal(jax.random.key(0), (100_000,) + shape)

  def log_prob(g, z):
    return -0.5 * jnp.square((z - g.mu) / jnp.exp(g.log_sigma)) - g.log_sigma - 0.5 * np.log(
        2 * np.pi)

  mc = np.asarray(jnp.mean(jnp.sum(log_prob(q, z) - log_prob(p, z), axis=(2, 3, 4)), axis=0))
  np.testing.assert_allclose(kl, mc, rtol=0.05)


def test_bad_image_size_is_rejected_before_tracing(small):
  model, params, _, _ = small
  with pytest.raises(ValueError, match=r"height 30 .* multiple of .* 16.*16, 32, 48"):
    model.sample(params, jax.random.key(0), jnp.zeros((1, 30, 32, 1)))
  with pytest.raises(ValueError, match="one-hot"):
    model.reconstruct(params, jax.random.key(0), jnp.zeros((1, 32, 32, 1)),
                      jnp.zeros((1, 32, 32, 3)))


@pytest.mark.parametrize("kwargs,field", [
    (dict(latent_dims=()), "latent_dims"),
    (dict(latent_dims=(1,) * 8), "latent_dims"),
    (dict(channels_per_block=(4, 0, 4)), "channels_per_block"),
    (dict(down_channels_per_block=(2, 2)), "down_channels_per_block"),
    (dict(num_classes=0), "num_classes"),
    (dict(convs_per_block=-1), "convs_per_block"),
    (dict(blocks_per_level=0), "blocks_per_level"),
    (dict(latent_dims=(1, -2)), "latent_dims"),
    (dict(activation="tanhh"), "activation"),
])
def test_config_validation_names_the_field(kwargs, field):
  with pytest.raises(ValueError, match=field):
    HPUNetConfig(**kwargs)


def test_config_defaults():
  cfg = HPUNetConfig()
  assert cfg.down_channels_per_block == (12, 24, 48, 96, 96, 96, 96, 96)
  assert HPUNetConfig(channels_per_block=(8, 6), latent_dims=(1,)).down_channels_per_block == (4, 3)
  assert cfg.size_multiple == 128
  with pytest.raises(ValueError, match="model.bogus"):
    HPUNetConfig.from_dict({"bogus": 1})


def test_l2_penalty_is_keras_l2_over_weights_and_biases():
  """`tf.keras.regularizers.l2(1e-5)` on every w and b: 1e-5 * sum(p**2), no 1/2."""
  params = {"a": {"w": jnp.ones((2, 2)), "b": jnp.full((3,), 2.0)}}
  np.testing.assert_allclose(model_lib.l2_penalty(params, 1e-5), 1e-5 * (4 + 12), rtol=1e-6)


@pytest.mark.slow
def test_bfloat16_compute_agrees_with_float32(small):
  model, params, images, segs = small
  bf16 = make_model(HPUNetConfig(**{**TEST_CONFIG.__dict__, "compute_dtype": "bfloat16"}))
  a = model.forward(params, jax.random.key(1), images, segs, mean=True)
  b = bf16.forward(params, jax.random.key(1), images, segs, mean=True)
  assert b["logits"].dtype == jnp.float32
  np.testing.assert_allclose(a["logits"], b["logits"], atol=0.05, rtol=0.05)
