"""The compute options change the speed, not the objective.

* `execution.compute_dtype='bfloat16'` (parameters float32, convolutions bf16):
  the training loss of `train.make_loss_fn` agrees with float32 to a relative
  1e-2 (bf16 keeps 8 significant bits, a relative rounding of 2**-9 ~ 2e-3
  per operation; on this config the observed gap is ~1e-3), and the
  gradient points the same way (cosine > 0.99; observed 0.9999).
* `execution.remat=True` recomputes the residual blocks in the backward pass:
  the same float32 operations, so the same loss and gradients (to float32
  rounding: XLA may fuse the recomputed graph differently).

* `execution.gemm_weight_grad_sizes` computes some weight gradients as one GEMM
  instead of XLA's convolution: the same values to float32 rounding.

Top-k is off here: it selects pixels by their loss, a discontinuous choice
that a bf16 rounding may flip, which would test the selection, not precision.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import tiny_config
from hpunet_jax.model import cpu_conv
from hpunet_jax.training import state as train

BF16_LOSS_RTOL = 1e-2
BF16_GRAD_COSINE = 0.99


def _config(**execution):
  # Two levels: the GEMM path is tried at two sizes (16 and 8).
  config = tiny_config(channels_per_block=(6, 8), latent_dims=(2,))
  config.execution.update(execution)
  config.loss.top_k_percentage = None
  config.train.batch_size = 2
  return config


@pytest.fixture(scope="module")
def setup():
  config = _config()
  rng = np.random.default_rng(0)
  labels = rng.random((2, 16, 16)) > 0.7
  batch = {"image": jnp.asarray(rng.random((2, 16, 16, 1), np.float32)),
           "segmentation": jnp.asarray(np.eye(2, dtype=np.float32)[labels.astype(int)])}
  state = train.create_train_state(config, 0, batch)
  return state, batch


def _loss_and_grads(config, state, batch):
  loss_fn = train.make_loss_fn(config)
  args = (state.params, state.geco, batch, jax.random.key(3))
  # XLA's backend optimisations (LLVM) halve the compile time when off and
  # change no value this test compares.
  grad_fn = jax.jit(jax.value_and_grad(loss_fn, has_aux=True)).lower(*args).compile(
      {"xla_backend_optimization_level": 0})
  (loss, (_, metrics)), grads = grad_fn(*args)
  return float(loss), metrics, grads


def _flat(tree):
  return np.concatenate([np.ravel(np.asarray(x, np.float64)) for x in jax.tree.leaves(tree)])


@pytest.fixture(scope="module")
def float32_result(setup):
  return _loss_and_grads(_config(), *setup)


def test_bfloat16_loss_agrees_with_float32(setup, float32_result):
  loss32, metrics32, grads32 = float32_result
  loss16, metrics16, grads16 = _loss_and_grads(_config(compute_dtype="bfloat16"), *setup)
  assert np.isfinite(loss16)
  np.testing.assert_allclose(loss16, loss32, rtol=BF16_LOSS_RTOL)
  np.testing.assert_allclose(metrics16["rec_sum"], metrics32["rec_sum"], rtol=BF16_LOSS_RTOL)
  # Parameters and gradients stay float32.
  assert all(g.dtype == jnp.float32 for g in jax.tree.leaves(grads16))
  a, b = _flat(grads32["net"]), _flat(grads16["net"])
  cosine = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
  assert cosine > BF16_GRAD_COSINE, cosine


def test_remat_gives_the_same_loss_and_gradients(setup, float32_result):
  loss, metrics, grads = float32_result
  loss_remat, metrics_remat, grads_remat = _loss_and_grads(_config(remat=True), *setup)
  np.testing.assert_allclose(loss_remat, loss, rtol=1e-6)
  np.testing.assert_allclose(metrics_remat["kl_sum"], metrics["kl_sum"], rtol=1e-5, atol=1e-7)
  for path, g in jax.tree_util.tree_leaves_with_path(grads):
    g_remat = grads_remat
    for key in path:
      g_remat = g_remat[key.key]
    np.testing.assert_allclose(g_remat, g, rtol=1e-4, atol=1e-6,
                               err_msg=jax.tree_util.keystr(path))


@pytest.mark.parametrize("shape, kernel", [((2, 8, 8, 5, 4), 3), ((3, 7, 5, 2, 6), 3),
                                           ((1, 6, 9, 3, 2), 5), ((2, 4, 4, 4, 4), 1)])
def test_gemm_weight_gradient_equals_xlas(shape, kernel):
  """`execution.gemm_weight_grad_sizes` changes how a gradient is computed, not its value.

  Non-square maps and kernels other than 3 included: the flattened-grid
  shifts in `cpu_conv.gemm_weight_grad` depend on the padded width and the kernel.
  """
  batch, height, width, channels, out_channels = shape
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.standard_normal((batch, height, width, channels)), jnp.float32)
  w = jnp.asarray(rng.standard_normal((kernel, kernel, channels, out_channels)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((batch, height, width, out_channels)), jnp.float32)
  expected = jax.vjp(cpu_conv.same_conv, x, w)[1](g)
  actual = jax.vjp(cpu_conv.conv_gemm_weight_grad, x, w)[1](g)
  for a, e in zip(actual, expected):
    np.testing.assert_allclose(a, e, rtol=1e-5, atol=1e-4)


def test_gemm_weight_grad_sizes_give_the_same_gradients(setup, float32_result):
  loss, _, grads = float32_result
  loss_gemm, _, grads_gemm = _loss_and_grads(_config(gemm_weight_grad_sizes=(16, 8)), *setup)
  np.testing.assert_allclose(loss_gemm, loss, rtol=1e-6)
  np.testing.assert_allclose(_flat(grads_gemm), _flat(grads), rtol=1e-4, atol=1e-5)
