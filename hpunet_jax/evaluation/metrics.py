"""Segmentation metrics for sampled (ambiguous) segmentations.

Conventions (those of the LIDC literature's code; docs/evaluation.md):

- Masks are binary: any value > 0.5 is foreground. IoU is taken on the
  foreground only; two empty masks have IoU 1 (distance 0), one empty and one
  non-empty IoU 0. The distance is `d = 1 - IoU`.
- Expectations over pairs drawn from one set (`E[d(S, S')]`, `E[d(Y, Y')]`)
  average over *all* ordered pairs, `i = j` included (a V-statistic, whose
  diagonal contributes zeros). This is what every LIDC paper's code computes;
  it makes the GED of a set against itself exactly 0, and biases
  `E[d(S, S')]` low by a factor `(N - 1) / N`.

Functions of masks that run in JAX (`iou`, `pairwise_iou`,
`generalized_energy_distance`, `sample_diversity`, `reconstruction_iou`,
`ncc`) are jittable, accept leading batch axes and return JAX arrays. Those
that need scipy or per-example control flow (`hungarian_matched_iou`, the
`aggregate`) run on the host in float64 and
return Python floats / numpy arrays. The `*_from_iou` forms take IoU matrices
that were already computed (the evaluation driver computes every matrix once
on the device and derives all scores from them).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import scipy.optimize

# PHiSeg's cross-entropy guard, `log(p + 1e-8)`; see `ncc`.
LOG_EPSILON = 1e-8
# A map whose spread is below this fraction of its magnitude is constant up to
# float32 rounding: its correlation is undefined (NaN), as in PHiSeg.
_NCC_RELATIVE_TOLERANCE = 1e-5


def as_float_masks(masks) -> jax.Array:
  return (jnp.asarray(masks) > 0.5).astype(jnp.float32)


# ----------------------------------------------------------------------------
# IoU.


@jax.jit
def iou(a, b) -> jax.Array:
  """Foreground IoU of corresponding masks.

  Args:
    a: binary masks `[..., H, W]`.
    b: binary masks `[..., H, W]` (broadcastable against `a`).

  Returns:
    `[...]` IoU; 1 where both masks are empty, 0 where exactly one is.
  """
  a, b = as_float_masks(a), as_float_masks(b)
  intersection = jnp.sum(a * b, axis=(-2, -1))
  union = jnp.sum(a, axis=(-2, -1)) + jnp.sum(b, axis=(-2, -1)) - intersection
  return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)


@jax.jit
def pairwise_iou(a, b) -> jax.Array:
  """IoU of every mask of `a` with every mask of `b`, in one vectorised pass.

  Intersections are one matrix product of the flattened masks; unions follow
  from the areas. Float32 counts are exact up to 2**24 pixels per mask.

  Args:
    a: binary masks `[..., N, H, W]` (e.g. `[N, H, W]` or `[B, N, H, W]`).
    b: binary masks `[..., M, H, W]`, same leading axes as `a`.

  Returns:
    `[..., N, M]` IoU matrix with the empty-mask convention of `iou`.
  """
  a, b = as_float_masks(a), as_float_masks(b)
  a = a.reshape(a.shape[:-2] + (-1,))
  b = b.reshape(b.shape[:-2] + (-1,))
  # HIGHEST keeps the products exact on accelerators whose default matmul
  # precision rounds inputs (TF32 / bf16 passes); 0/1 inputs and integer
  # counts below 2**24 are then exact.
  intersection = jnp.einsum("...np,...mp->...nm", a, b,
                            precision=jax.lax.Precision.HIGHEST)
  union = a.sum(-1)[..., :, None] + b.sum(-1)[..., None, :] - intersection
  return jnp.where(union > 0, intersection / jnp.maximum(union, 1.0), 1.0)


def batched_pairwise_iou(a, b) -> jax.Array:
  """`pairwise_iou` over a batch: `[B, N, H, W] x [B, M, H, W] -> [B, N, M]`."""
  if jnp.ndim(a) != 4 or jnp.ndim(b) != 4:
    raise ValueError(f"batched_pairwise_iou needs [B, N, H, W] and [B, M, H, W], "
                     f"got {jnp.shape(a)} and {jnp.shape(b)}")
  return pairwise_iou(a, b)


# ----------------------------------------------------------------------------
# Generalised energy distance, diversity, reconstruction.


def ged_from_iou(iou_sy, iou_ss, iou_yy):
  """D^2_GED from IoU matrices (numpy or JAX; leading batch axes allowed).

  Args:
    iou_sy: `[..., N, M]` IoU of samples with graders.
    iou_ss: `[..., N, N]` IoU among samples.
    iou_yy: `[..., M, M]` IoU among graders.

  Returns:
    `[...]` `2 E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]`, V-statistic means.
  """
  mean = lambda x: (1.0 - x).mean(axis=(-2, -1))
  return 2.0 * mean(iou_sy) - mean(iou_ss) - mean(iou_yy)


@jax.jit
def generalized_energy_distance(samples, graders) -> jax.Array:
  """Squared generalised energy distance D^2_GED with `d = 1 - IoU`.

  Args:
    samples: binary masks `[..., N, H, W]`.
    graders: binary masks `[..., M, H, W]`.

  Returns:
    `[...]` `2 E[d(S,Y)] - E[d(S,S')] - E[d(Y,Y')]`, all pairs averaged
    including `i = j` (V-statistic), so a set against itself scores 0.
  """
  return ged_from_iou(pairwise_iou(samples, graders), pairwise_iou(samples, samples),
                      pairwise_iou(graders, graders))


@jax.jit
def sample_diversity(samples) -> jax.Array:
  """Mean pairwise distance `E[d(S, S')]` among samples.

  V-statistic like the GED term it equals: all `N**2` ordered pairs, the `N`
  zero-distance pairs `i = j` included (multiply by `N / (N - 1)` for the
  unbiased mean over distinct pairs).

  Args:
    samples: binary masks `[..., N, H, W]`.

  Returns:
    `[...]` mean of `1 - IoU` over all pairs.
  """
  return (1.0 - pairwise_iou(samples, samples)).mean(axis=(-2, -1))


@jax.jit
def reconstruction_iou(reconstructions, graders) -> jax.Array:
  """Mean IoU of each reconstruction with the grader mask it was given.

  Args:
    reconstructions: binary masks `[..., M, H, W]`; entry `m` reconstructed
      from grader `m`.
    graders: binary masks `[..., M, H, W]`.

  Returns:
    `[...]` mean over the `M` pairs.
  """
  return iou(reconstructions, graders).mean(axis=-1)


# ----------------------------------------------------------------------------
# S_NCC (Baumgartner et al. 2019, PHiSeg).


def _normalised_cross_correlation(a, b):
  """NCC over the last axis; NaN where either input is constant (PHiSeg divides by 0 there)."""

  def centred(x):
    # Centred on the first element before the mean, so an exactly constant map
    # gives exact zeros rather than rounding noise.
    x = x - x[..., :1]
    return x - x.mean(-1, keepdims=True)

  def constant(x, centred_x):
    magnitude = jnp.abs(x).max(-1)
    return jnp.sqrt((centred_x * centred_x).mean(-1)) <= _NCC_RELATIVE_TOLERANCE * magnitude

  ca, cb = centred(a), centred(b)
  covariance = (ca * cb).mean(-1)
  scale = jnp.sqrt((ca * ca).mean(-1) * (cb * cb).mean(-1))
  undefined = constant(a, ca) | constant(b, cb)
  return jnp.where(undefined, jnp.nan, covariance / jnp.where(undefined, 1.0, scale))


@jax.jit
def ncc(sample_probs, graders) -> jax.Array:
  """S_NCC: correlation of the model's uncertainty map with its errors.

  PHiSeg's `variance_ncc_dist`: with `CE(t, s) = -sum_c t_c log(s_c + 1e-8)`
  over the classes (the softmax channels of a sample `s`, the one-hot grader
  `y`), per pixel
    `gamma = E_s[CE(s_bar, s)]` (s_bar: mean of the sample probabilities) and
    `e_y = E_s[CE(y, s)]` for each grader `y`;
  `S_NCC = mean_y NCC(gamma, e_y)` with `NCC(a, b) = mean((a - mean a)(b -
  mean b)) / (std a std b)` over the pixels. Where a map is constant (its std
  within float32 rounding of 0, e.g. all samples binary and identical) NCC is
  undefined and the result is NaN, as PHiSeg's division by zero gives;
  `aggregate` drops such images and counts them.

  Args:
    sample_probs: class probabilities `[..., N, H, W, C]` of N samples (the
      softmax of the logits; class 1 is foreground).
    graders: binary masks `[..., M, H, W]` (foreground = class 1).

  Returns:
    `[...]` S_NCC (NaN where undefined).
  """
  probs = jnp.asarray(sample_probs, jnp.float32)
  return ncc_from_means(probs.mean(-4), jnp.log(probs + LOG_EPSILON).mean(-4), graders)


def ncc_from_means(mean_probs, mean_log_probs, graders) -> jax.Array:
  """`ncc` from two sample means alone, so the samples can be drawn in chunks.

  CE is linear in its target, so S_NCC needs of the N samples only their mean
  class probabilities `s_bar` and their mean `log(s + 1e-8)`: no
  `[M, N, H, W]` array.

  Args:
    mean_probs: `[..., H, W, C]` the samples' mean class probabilities.
    mean_log_probs: `[..., H, W, C]` the samples' mean `log(s + 1e-8)`.
    graders: binary masks `[..., M, H, W]`.

  Returns:
    `[...]` S_NCC (NaN where undefined), as `ncc`.
  """
  mean_log = jnp.asarray(mean_log_probs, jnp.float32)[..., None, :, :, :]   # [..., 1, H, W, C]
  num_classes = mean_log.shape[-1]
  targets = jax.nn.one_hot(as_float_masks(graders).astype(jnp.int32), num_classes)
  expected_ce = lambda t: -(t * mean_log).sum(-1)
  gamma = expected_ce(jnp.asarray(mean_probs, jnp.float32)[..., None, :, :, :])  # [..., 1, H, W]
  grader_ce = expected_ce(targets)  # [..., M, H, W]
  flat = lambda x: x.reshape(x.shape[:-2] + (-1,))
  per_grader = _normalised_cross_correlation(flat(gamma), flat(grader_ce))
  return per_grader.mean(-1)


# ----------------------------------------------------------------------------
# Hungarian-matched IoU (host).


def hungarian_matched_iou_from_iou(iou_sy, *, tiling="lcm") -> float:
  """HM-IoU from a `[N, M]` sample-grader IoU matrix; see `hungarian_matched_iou`."""
  iou_sy = np.asarray(iou_sy, np.float64)
  num_samples, num_graders = iou_sy.shape
  if num_samples == 0 or num_graders == 0:
    raise ValueError(f"hungarian_matched_iou needs samples and graders, got {num_samples} "
                     f"samples and {num_graders} graders")
  if tiling == "graders":
    # CAR, MoSE and BerDiff repeat the graders to the sample count; where that is
    # possible it is the lcm tiling (lcm = N), which their code has no other form of.
    if num_samples % num_graders:
      raise ValueError(f"hungarian_matched_iou with tiling='graders' repeats the {num_graders} "
                       f"graders to the {num_samples} samples: need a multiple of {num_graders}")
  elif tiling != "lcm":
    raise ValueError(f"hungarian_matched_iou: tiling={tiling!r}, need 'lcm' or 'graders'")
  size = math.lcm(num_samples, num_graders)
  tiled = np.tile(iou_sy, (size // num_samples, size // num_graders))  # [L, L]
  rows, cols = scipy.optimize.linear_sum_assignment(1.0 - tiled)
  return float(tiled[rows, cols].mean())


def hungarian_matched_iou(samples, graders, *, tiling="lcm") -> float:
  """Hungarian-matched IoU (HM-IoU).

  As CCDM's code: samples and graders are both tiled to their least common
  multiple `L = lcm(N, M)` (for 16 samples and 4 graders: the graders 4x, as
  the HPU-Net paper); `scipy.optimize.linear_sum_assignment` pairs them at
  minimal total `1 - IoU`; the result is the mean IoU of the `L` matched pairs.
  The order of the copies does not change the optimum, so CAR's, MoSE's and
  BerDiff's repetition of the graders to N gives the same value;
  `tiling='graders'` is that form, which refuses N not a multiple of M as
  their code cannot take it (`hpunet_jax.evaluation.protocols`).

  Args:
    samples: binary masks `[N, H, W]`.
    graders: binary masks `[M, H, W]`.
    tiling: 'lcm' or 'graders'.

  Returns:
    HM-IoU in [0, 1].
  """
  return hungarian_matched_iou_from_iou(pairwise_iou(samples, graders), tiling=tiling)


# ----------------------------------------------------------------------------
# Aggregation over a split (host).


def subset_b(graders_batch) -> np.ndarray:
  """Marks the examples of LIDC's subset B: every grader marked something.

  Args:
    graders_batch: binary masks `[n, M, H, W]`.

  Returns:
    bool `[n]`.
  """
  graders_batch = np.asarray(graders_batch) > 0.5
  return graders_batch.any(axis=(-2, -1)).all(axis=-1)


def aggregate(values, *, subset=None, num_bootstrap=1000, seed=0) -> dict:
  """Mean, spread and percentile-bootstrap 95% interval of per-example scores.

  NaN scores (undefined for that example, e.g. S_NCC of constant maps) are
  dropped and counted, as the SSN code's `nanmean` does.

  Args:
    values: `[n]` one score per example.
    subset: optional bool `[n]`; only those examples are aggregated.
    num_bootstrap: bootstrap resamples of the examples (0 disables the CI).
    seed: seed of the resampling, so reports are reproducible.

  Returns:
    dict with `mean`, `std` (population std over examples, as PHiSeg's
    evaluation reports it), `ci_low`, `ci_high` (2.5th and 97.5th percentiles
    of the resampled means), `n` (examples aggregated) and `num_nan` (NaN
    scores dropped). NaNs where no example is left.
  """
  values = np.asarray(values, np.float64).reshape(-1)
  if subset is not None:
    subset = np.asarray(subset, bool).reshape(-1)
    if subset.shape != values.shape:
      raise ValueError(f"subset has shape {subset.shape}, values {values.shape}")
    values = values[subset]
  num_nan = int(np.isnan(values).sum())
  values = values[~np.isnan(values)]
  n = values.size
  if n == 0:
    return dict(mean=float("nan"), std=float("nan"), ci_low=float("nan"),
                ci_high=float("nan"), n=0, num_nan=num_nan)
  ci_low = ci_high = float("nan")
  if num_bootstrap > 0:
    rng = np.random.default_rng(seed)
    means = np.empty(num_bootstrap)
    # Chunks bound the index array to ~1M entries whatever n is.
    chunk = max(1, 1_000_000 // n)
    for start in range(0, num_bootstrap, chunk):
      stop = min(start + chunk, num_bootstrap)
      means[start:stop] = values[rng.integers(0, n, (stop - start, n))].mean(-1)
    ci_low, ci_high = (float(x) for x in np.percentile(means, [2.5, 97.5]))
  return dict(mean=float(values.mean()), std=float(values.std()), ci_low=ci_low,
              ci_high=ci_high, n=int(n), num_nan=num_nan)
