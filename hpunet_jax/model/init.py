"""The releases' initialisers, drawn on the host.

The HPU-Net: orthogonal weights (gain 1) and biases from a normal with std
0.001 truncated at two standard deviations, as DeepMind's release
(`hierarchical_probabilistic_unet/model.py`). The Prob. U-Net: He-normal
weights (`he_normal`), the same biases. `host_init` draws the same
distributions with numpy.
"""
import zlib

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

# The release's initialisers: orthogonal weights (gain 1), biases from a normal
# with std 0.001 truncated at two standard deviations. `make_model().init`
# draws the same distributions with numpy (see `host_init`).
W_INIT = hk.initializers.Orthogonal(scale=1.0)
B_INIT = hk.initializers.TruncatedNormal(stddev=0.001)


def he_normal(shape, dtype):
  """The Prob. U-Net release's `he_normal` on TF 1.10, its pinned version.

  `VarianceScaling(scale=2, mode='fan_in', distribution='normal')`, which TF
  1.10 draws from a normal with std `sqrt(2 / fan_in)` truncated at two
  standard deviations, without the later versions' correction of the std for
  the truncation. `fan_in` is every axis but the last (`[k, k, C_in, C_out]`).
  """
  fan_in = max(1, int(np.prod(shape[:-1])))
  return hk.initializers.TruncatedNormal(stddev=np.sqrt(2.0 / fan_in))(shape, dtype)


def _he_normal(rng, shape):
  """`he_normal` in numpy."""
  fan_in = max(1, int(np.prod(shape[:-1])))
  return np.sqrt(2.0 / fan_in) * scipy.stats.truncnorm.rvs(-2.0, 2.0, size=shape, random_state=rng)


def _orthogonal(rng, shape, scale=1.0):
  """Haiku's `Orthogonal(scale, axis=-1)` in numpy."""
  n_rows = shape[-1]
  n_cols = int(np.prod(shape)) // n_rows
  matrix_shape = (n_rows, n_cols) if n_rows > n_cols else (n_cols, n_rows)
  q, r = np.linalg.qr(rng.standard_normal(matrix_shape))
  q = q * np.sign(np.diag(r))
  if n_rows < n_cols:
    q = q.T
  return scale * np.moveaxis(q.reshape((n_rows,) + tuple(shape[:-1])), 0, -1)


def _key_seed(rng):
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return [int(x) for x in np.asarray(rng).ravel()]


def host_init(rng, abstract_params, *, weights="orthogonal"):
  """Draws every parameter with numpy, seeded by the key and the parameter's name.

  XLA compiles the random-number and QR code of an initialiser anew for each
  parameter shape: with the few hundred parameters of an HPU-Net a jitted
  Haiku `init` spends tens of seconds compiling. Numpy takes milliseconds,
  and the values are still a pure function of the key (the same on every
  host). `weights`: 'orthogonal' (the HPU-Net) or 'he_normal' (the Prob. U-Net).
  """
  draw_weight = {"orthogonal": _orthogonal, "he_normal": _he_normal}[weights]
  seed = _key_seed(rng)
  params = {}
  for module, values in abstract_params.items():
    params[module] = {}
    for name, abstract in values.items():
      gen = np.random.default_rng(seed + [zlib.crc32(f"{module}/{name}".encode())])
      if name == "w":
        value = draw_weight(gen, abstract.shape)
      elif name == "b":
        value = 0.001 * scipy.stats.truncnorm.rvs(-2.0, 2.0, size=abstract.shape, random_state=gen)
      else:
        raise ValueError(f"no initialiser for parameter {module}/{name}")
      params[module][name] = jnp.asarray(value, abstract.dtype)
  return params

