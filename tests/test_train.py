"""Tests of the train state, the step, and its data parallelism over devices and processes."""
import os
import socket

import jax
import numpy as np
import pytest

import hpunet_jax
import conftest

WORKER = os.path.join(os.path.dirname(__file__), "parallel_worker.py")


def tiny_config():
  config = conftest.tiny_config(channels_per_block=(8, 16, 16))
  config.optim.learning_rate = 1e-3
  return config


def _batch(seed=0, size=16, n=8):
  rng = np.random.default_rng(seed)
  images = rng.random((n, size, size, 1)).astype(np.float32)
  labels = np.zeros((n, size, size), np.int64)
  labels[:, 4:12, 4:12] = 1
  return dict(image=images, segmentation=np.eye(2, dtype=np.float32)[labels])


def test_train_state_contents():
  config = tiny_config()
  state = hpunet_jax.create_train_state(config, jax.random.key(0), _batch())
  assert int(state.step) == 0
  assert set(state.params) == {"net", "lagrange_raw"}
  np.testing.assert_allclose(jax.nn.softplus(state.params["lagrange_raw"]) ** 2, 1.0, rtol=1e-6)
  assert not bool(state.geco.initialized)
  config.loss.type = "elbo"
  assert set(hpunet_jax.create_train_state(config, 0, _batch()).params) == {"net"}


@pytest.mark.slow
def test_fifty_steps_reduce_reconstruction_loss():
  config = tiny_config()
  config.loss.top_k_percentage = None  # every pixel counts, so rec_sum tracks the whole image
  batch = _batch()
  state = hpunet_jax.create_train_state(config, jax.random.key(0), batch)
  step = hpunet_jax.make_train_step(config)
  history = []
  for _ in range(50):
    state, metrics = step(state, batch)
    history.append(jax.device_get(metrics))
  assert int(state.step) == 50
  first = np.mean([m["rec_sum"] for m in history[:5]])
  last = np.mean([m["rec_sum"] for m in history[-5:]])
  assert last < 0.7 * first, (first, last)
  for key in ("loss", "rec_sum", "rec_mean", "kl_sum", "kl_0", "kl_1", "posterior_width_0",
              "posterior_width_1", "lagmul",
              "rec_moving_average", "rec_constraint", "grad_norm", "learning_rate"):
    assert key in history[-1] and np.isfinite(history[-1][key]), key


@pytest.mark.slow
def test_same_seed_same_step_and_rng_folds_with_step():
  config = tiny_config()
  batch = _batch()
  step = hpunet_jax.make_train_step(config)
  losses = []
  for _ in range(2):
    state = hpunet_jax.create_train_state(config, jax.random.key(3), batch)
    state, m1 = step(state, batch)
    state, m2 = step(state, batch)
    losses.append((float(m1["loss"]), float(m2["loss"])))
  assert losses[0] == losses[1]


def _run_worker(tmp_path, name, **kwargs):
  """The worker's output path and its arguments to `python`."""
  out = str(tmp_path / f"{name}.npz")
  args = [WORKER, f"--out={out}"] + [f"--{k}={v}" for k, v in kwargs.items()]
  return out, args


def _free_port():
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _compare(reference, other):
  """Parameters and metrics after two steps, without and with on-device augmentation."""
  a, b = np.load(reference), np.load(other)
  assert sorted(a.files) == sorted(b.files)
  assert any(k.startswith("augmented/") for k in a.files)
  # The augmentation ran and brought pixels from outside the source into the crops.
  assert 0.5 < float(a["augmented/augment_valid_fraction"]) < 1.0
  for key in a.files:
    np.testing.assert_allclose(b[key], a[key], rtol=1e-5, atol=1e-6, err_msg=key)


@pytest.fixture(scope="module")
def single_device_params(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("single")
  out, args = _run_worker(tmp, "single", devices=1)
  conftest.run_python(*args, timeout=300)
  return out


@pytest.mark.slow
def test_eight_devices_equal_one_device(tmp_path, single_device_params):
  out, args = _run_worker(tmp_path, "eight", devices=8)
  conftest.run_python(*args, timeout=300)
  _compare(single_device_params, out)


@pytest.mark.slow
def test_two_processes_equal_one_process(tmp_path, single_device_params):
  port = _free_port()
  out = str(tmp_path / "multi.npz")
  procs = []
  for pid in range(2):
    _, args = _run_worker(tmp_path, "multi", devices=2, process_id=pid, num_processes=2,
                          port=port)
    args[1] = f"--out={out}"
    procs.append(conftest.Started(args))
  try:
    outputs = [p.rest(timeout=300) for p in procs]
  finally:
    for p in procs:
      p.kill()
  for p, text in zip(procs, outputs):
    assert p.proc.returncode == 0, text[-3000:]
  _compare(single_device_params, out)
