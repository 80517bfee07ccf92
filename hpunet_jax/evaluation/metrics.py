"""Segmentation metrics for sampled (ambiguous) segmentations.

Conventions (those of the LIDC literature, REFERENCE.md section 4):

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
exact scores, `match_statistics`, `aggregate`) run on the host in float64 and
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
_LOG_EPSILON = 1e-8
# A map whose spread is below this fraction of its magnitude is constant up to
# float32 rounding: its correlation is undefined (NaN), as in PHiSeg.
_NCC_RELATIVE_TOLERANCE = 1e-5


def _as_float_masks(masks) -> jax.Array:
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
  a, b = _as_float_masks(a), _as_float_masks(b)
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
  a, b = _as_float_masks(a), _as_float_masks(b)
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
  num_classes = probs.shape[-1]
  targets = jax.nn.one_hot(_as_float_masks(graders).astype(jnp.int32), num_classes)
  # CE is linear in its target, so E_s[CE(t, s)] only needs the sample mean of
  # log(s + eps): no [M, N, H, W] array.
  mean_log = jnp.log(probs + _LOG_EPSILON).mean(-4, keepdims=True)  # [..., 1, H, W, C]
  expected_ce = lambda t: -(t * mean_log).sum(-1)
  gamma = expected_ce(probs.mean(-4, keepdims=True))  # [..., 1, H, W]
  grader_ce = expected_ce(targets)  # [..., M, H, W]
  flat = lambda x: x.reshape(x.shape[:-2] + (-1,))
  per_grader = _normalised_cross_correlation(flat(gamma), flat(grader_ce))
  return per_grader.mean(-1)


# ----------------------------------------------------------------------------
# Hungarian-matched IoU (host).


def hungarian_matched_iou_from_iou(iou_sy) -> float:
  """HM-IoU from a `[N, M]` sample-grader IoU matrix; see `hungarian_matched_iou`."""
  iou_sy = np.asarray(iou_sy, np.float64)
  num_samples, num_graders = iou_sy.shape
  if num_samples == 0 or num_graders == 0:
    raise ValueError(f"hungarian_matched_iou needs samples and graders, got {num_samples} "
                     f"samples and {num_graders} graders")
  size = math.lcm(num_samples, num_graders)
  tiled = np.tile(iou_sy, (size // num_samples, size // num_graders))  # [L, L]
  rows, cols = scipy.optimize.linear_sum_assignment(1.0 - tiled)
  return float(tiled[rows, cols].mean())


def hungarian_matched_iou(samples, graders) -> float:
  """Hungarian-matched IoU (HM-IoU).

  As CCDM's code: samples and graders are both tiled to their least common
  multiple `L = lcm(N, M)` (for 16 samples and 4 graders: the graders 4x, as
  the HPU-Net paper); `scipy.optimize.linear_sum_assignment` pairs them at
  minimal total `1 - IoU`; the result is the mean IoU of the `L` matched pairs.

  Args:
    samples: binary masks `[N, H, W]`.
    graders: binary masks `[M, H, W]`.

  Returns:
    HM-IoU in [0, 1].
  """
  return hungarian_matched_iou_from_iou(pairwise_iou(samples, graders))


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


# ----------------------------------------------------------------------------
# Exact scores against a known distribution (host).
#
# When the true distribution of segmentations is known (synthetic data: K
# candidate masks with probabilities p), the grader expectations in the GED
# can be taken exactly instead of through a few graders.


def _check_probs(probs, num_candidates) -> np.ndarray:
  probs = np.asarray(probs, np.float64).reshape(-1)
  if probs.shape != (num_candidates,):
    raise ValueError(f"probs has shape {probs.shape}, expected ({num_candidates},)")
  if np.any(probs < 0) or abs(probs.sum() - 1.0) > 1e-4:
    raise ValueError(f"probs must be non-negative and sum to 1, got {probs} "
                     f"(sum {probs.sum()})")
  return probs


def _expected_candidate_distance(iou_cc, probs) -> float:
  """`E[d(Y, Y')] = sum_{k,l} p_k p_l d(C_k, C_l)` for independent Y, Y'."""
  return float(probs @ (1.0 - iou_cc) @ probs)


def exact_ged_from_iou(iou_sc, iou_ss, iou_cc, probs) -> float:
  """`exact_ged` from IoU matrices `[N, K]`, `[N, N]`, `[K, K]` and probs `[K]`."""
  iou_sc, iou_ss, iou_cc = (np.asarray(x, np.float64) for x in (iou_sc, iou_ss, iou_cc))
  probs = _check_probs(probs, iou_cc.shape[0])
  cross = float((1.0 - iou_sc).mean(0) @ probs)
  return 2.0 * cross - float((1.0 - iou_ss).mean()) - _expected_candidate_distance(iou_cc, probs)


def exact_ged(samples, candidates, probs) -> float:
  """GED of samples against the exact distribution of segmentations.

  `2 sum_k p_k mean_i d(S_i, C_k) - mean_{i,j} d(S_i, S_j)
   - sum_{k,l} p_k p_l d(C_k, C_l)`: the grader terms are expectations under
  the true distribution; the sample term stays the V-statistic of the
  samples (as in `generalized_energy_distance`).

  Args:
    samples: binary masks `[N, H, W]`.
    candidates: binary masks `[K, H, W]`, the support of the true distribution.
    probs: `[K]` their probabilities (summing to 1).

  Returns:
    The exact GED of the samples.
  """
  return exact_ged_from_iou(pairwise_iou(samples, candidates), pairwise_iou(samples, samples),
                            pairwise_iou(candidates, candidates), probs)


def exact_ged_floor_from_iou(iou_cc, probs, num_samples) -> float:
  """`exact_ged_floor` from the `[K, K]` candidate IoU matrix."""
  iou_cc = np.asarray(iou_cc, np.float64)
  probs = _check_probs(probs, iou_cc.shape[0])
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  return _expected_candidate_distance(iou_cc, probs) / num_samples


def exact_ged_floor(candidates, probs, num_samples) -> float:
  """Expected `exact_ged` of `num_samples` i.i.d. draws from the true distribution.

  Analytic: with `D = E[d(Y, Y')] = sum_{k,l} p_k p_l d(C_k, C_l)`, a sample
  drawn from the truth has `E[d(S_i, Y)] = D`, and the V-statistic sample term
  has expectation `(N - 1) / N * D` (its `N` diagonal pairs are 0). Hence
  `E[exact_ged] = 2D - (N - 1)/N D - D = D / N`: the score of a perfect
  sampler, which is not 0 because the V-statistic's sample term is biased.

  Args:
    candidates: binary masks `[K, H, W]`.
    probs: `[K]` probabilities.
    num_samples: N, the number of samples the scored model draws.

  Returns:
    `D / N`.
  """
  return exact_ged_floor_from_iou(pairwise_iou(candidates, candidates), probs, num_samples)


def exact_ged_single_guess_from_iou(iou_cc, probs) -> float:
  """`exact_ged_single_guess` from the `[K, K]` candidate IoU matrix."""
  iou_cc = np.asarray(iou_cc, np.float64)
  probs = _check_probs(probs, iou_cc.shape[0])
  best = int(np.argmax(probs))
  # The samples all equal C_best: their mutual distances are 0.
  return 2.0 * float((1.0 - iou_cc[best]) @ probs) - _expected_candidate_distance(iou_cc, probs)


def exact_ged_single_guess(candidates, probs) -> float:
  """Exact GED of always answering the most probable candidate.

  `2 sum_l p_l d(C_best, C_l) - sum_{k,l} p_k p_l d(C_k, C_l)`: the score of a
  deterministic model that is right as often as any single answer can be.
  Independent of the number of samples.

  Args:
    candidates: binary masks `[K, H, W]`.
    probs: `[K]` probabilities.

  Returns:
    The exact GED of the single best guess.
  """
  return exact_ged_single_guess_from_iou(pairwise_iou(candidates, candidates), probs)


def normalised_ged(ged, floor, single_guess):
  """`(ged - floor) / (single_guess - floor)`: 0 for a perfect sampler, 1 for
  the single best guess (scalars or numpy arrays)."""
  return (np.asarray(ged) - floor) / (np.asarray(single_guess) - floor)


def match_statistics_from_iou(iou_sc, probs, threshold=0.9) -> dict:
  """`match_statistics` from the `[N, K]` sample-candidate IoU matrix."""
  iou_sc = np.asarray(iou_sc, np.float64)
  num_samples, num_candidates = iou_sc.shape
  probs = _check_probs(probs, num_candidates)
  # Zero-probability candidates (e.g. padding) are outside the support: a
  # sample that looks like one is unmatched.
  iou_sc = np.where(probs[None, :] > 0, iou_sc, -1.0)
  best = np.argmax(iou_sc, axis=1)
  matched = iou_sc[np.arange(num_samples), best] >= threshold
  frequencies = np.bincount(best[matched], minlength=num_candidates) / max(num_samples, 1)
  match_rate = float(matched.mean()) if num_samples else float("nan")
  # Unmatched samples form one extra outcome of true probability 0.
  tvd = 0.5 * (float(np.abs(frequencies - probs).sum()) + (1.0 - match_rate))
  return dict(match_rate=match_rate, tvd=tvd, frequencies=frequencies)


def match_statistics(samples, candidates, probs, threshold=0.9) -> dict:
  """How often samples reproduce a candidate, and with which frequencies.

  Each sample is matched to the candidate of highest IoU (candidates of
  probability 0 excluded; ties go to the first) if that IoU is at least
  `threshold`, else left unmatched.

  Args:
    samples: binary masks `[N, H, W]`.
    candidates: binary masks `[K, H, W]`.
    probs: `[K]` probabilities.
    threshold: least IoU that counts as reproducing a candidate.

  Returns:
    dict with
      `match_rate`: share of samples matched;
      `frequencies`: `[K]` share of *all* N samples matched to each candidate
        (so they sum to `match_rate`, not to 1);
      `tvd`: total variation distance between the sampled and the true
        distribution over K + 1 outcomes, "unmatched" being an outcome of true
        probability 0: `0.5 (sum_k |freq_k - p_k| + (1 - match_rate))`. Unmatched
        samples thus count fully against: all unmatched gives 1, the same as
        all samples on a wrong candidate (the plain `0.5 sum_k |freq_k - p_k|`
        would give only 0.5 to a sampler that never matches anything).
  """
  return match_statistics_from_iou(pairwise_iou(samples, candidates), probs, threshold)


# ----------------------------------------------------------------------------
# Per-factor exact scores (host), for data that declares independent objects.
#
# Such data (e.g. `synthetic_objects`) give, per object o, a region R_o and
# state masks T_{o,s} (inside R_o) with probabilities q_{o,s}; the truth is the
# product of the objects' state distributions.


def object_state_iou(samples, regions, state_masks) -> jax.Array:
  """IoU of each sample with each object's states, inside that object's region.

  Args:
    samples: binary masks `[..., N, H, W]`.
    regions: binary masks `[..., O, H, W]`, one region per object.
    state_masks: binary masks `[..., O, S, H, W]`, object o's states (only
      their part inside R_o counts).

  Returns:
    `[..., O, N, S]` `IoU(sample & R_o, T_{o,s} & R_o)`, with `iou`'s
    empty-mask convention (an empty state and a sample with nothing in R_o
    have IoU 1).
  """
  samples, regions = _as_float_masks(samples), _as_float_masks(regions)
  inside = samples[..., None, :, :, :] * regions[..., :, None, :, :]    # [..., O, N, H, W]
  states = _as_float_masks(state_masks) * regions[..., :, None, :, :]   # [..., O, S, H, W]
  return pairwise_iou(inside, states)


def _entropy(probs) -> float:
  probs = np.asarray(probs, np.float64).reshape(-1)
  probs = probs[probs > 0]
  return float(-(probs * np.log(probs)).sum())


def total_correlation(states, num_states) -> float:
  """Plug-in total correlation (multi-information) of jointly drawn states, in nats.

  `sum_o H(X_o) - H(X_1, ..., X_O)` of the empirical distribution: the KL
  divergence of the joint from the product of its marginals, 0 exactly when
  the empirical joint factorises; for two objects, their mutual information.

  Args:
    states: int `[N, O]`, row i the states of the O objects in draw i.
    num_states: `[O]` (or an int for all) number of states of each object.

  Returns:
    The total correlation in nats (>= 0 up to rounding).
  """
  states = np.asarray(states, np.int64)
  num, num_objects = states.shape
  num_states = np.broadcast_to(np.asarray(num_states, np.int64), (num_objects,))
  joint_index = np.ravel_multi_index(tuple(states.T), tuple(num_states))
  joint = np.bincount(joint_index, minlength=int(np.prod(num_states))) / num
  marginals = sum(_entropy(np.bincount(states[:, o], minlength=num_states[o]) / num)
                  for o in range(num_objects))
  return max(0.0, marginals - _entropy(joint))


def factor_scores_from_iou(iou_ons, state_probs) -> dict:
  """`factor_scores` from the `[O, N, S]` matrix of `object_state_iou`."""
  iou_ons = np.asarray(iou_ons, np.float64)
  state_probs = np.asarray(state_probs, np.float64)
  num_objects, num_samples, num_states = iou_ons.shape
  if state_probs.shape != (num_objects, num_states):
    raise ValueError(f"state_probs has shape {state_probs.shape}, expected "
                     f"({num_objects}, {num_states})")
  for probs in state_probs:
    _check_probs(probs, num_states)
  # States of probability 0 (padding) are outside the support.
  iou_ons = np.where(state_probs[:, None, :] > 0, iou_ons, -1.0)
  states = np.argmax(iou_ons, axis=-1).T                             # [N, O]
  fidelity = iou_ons.max(-1).mean(-1)                                # [O]
  frequencies = np.stack([np.bincount(states[:, o], minlength=num_states) / num_samples
                          for o in range(num_objects)])              # [O, S]
  object_tvd = 0.5 * np.abs(frequencies - state_probs).sum(-1)
  grid = (num_states,) * num_objects
  joint = np.bincount(np.ravel_multi_index(tuple(states.T), grid),
                      minlength=num_states ** num_objects) / num_samples
  true_joint = np.ones(grid)
  for o in range(num_objects):
    true_joint = true_joint * state_probs[o].reshape((1,) * o + (-1,) + (1,) * (num_objects - o - 1))
  return dict(states=states, frequencies=frequencies, object_tvd=object_tvd,
              joint_tvd=float(0.5 * np.abs(joint - true_joint.reshape(-1)).sum()),
              mutual_information=total_correlation(states, num_states),
              fidelity=fidelity)


def factor_scores(samples, regions, state_masks, state_probs) -> dict:
  """Per-object exact scores of samples against independent per-object factors.

  **Assignment rule.** Each sample gets, for each object o, the state s whose
  mask has the highest IoU with the sample *inside o's region* R_o:
  `argmax_s IoU(sample & R_o, T_{o,s} & R_o)` (ties to the first state;
  states of probability 0 excluded; an empty state matches a sample with
  nothing in R_o at IoU 1, anything else in R_o at IoU 0). No threshold: every
  sample gets a state, and how well it matches is the fidelity.

  Args:
    samples: binary masks `[N, H, W]`.
    regions: binary masks `[O, H, W]`.
    state_masks: binary masks `[O, S, H, W]`.
    state_probs: `[O, S]` the true probabilities of each object's states.

  Returns:
    dict with
      `states`: int `[N, O]` each sample's assigned state of each object;
      `frequencies`: `[O, S]` share of samples assigned each state;
      `object_tvd`: `[O]` `0.5 sum_s |freq_{o,s} - q_{o,s}|`;
      `joint_tvd`: TVD between the samples' joint states (over all `S**O`
        combinations) and the product of the true marginals;
      `mutual_information`: `total_correlation` of the assigned states (nats;
        0 in the truth, but a finite-N plug-in estimate is biased upwards: see
        `factor_score_floors`);
      `fidelity`: `[O]` mean over samples of the IoU with the assigned state.
  """
  return factor_scores_from_iou(object_state_iou(samples, regions, state_masks), state_probs)


def factor_score_floors(state_probs, num_samples, *, num_draws=2000, seed=0) -> dict:
  """Expected `factor_scores` of N exact draws from the truth (Monte Carlo).

  A perfect sampler still scores TVD > 0 and mutual information > 0 with a
  finite N (the empirical frequencies scatter around the truth); these are
  the floors to read the model's scores against. Fidelity is 1 for exact draws.

  Args:
    state_probs: `[O, S]` true per-object state probabilities.
    num_samples: N.
    num_draws: sets of N draws averaged.
    seed: seed of the draws.

  Returns:
    dict with `object_tvd` `[O]`, `joint_tvd` and `mutual_information` (means).
  """
  state_probs = np.asarray(state_probs, np.float64)
  state_probs = state_probs / state_probs.sum(-1, keepdims=True)   # float32 inputs round off.
  num_objects, num_states = state_probs.shape
  rng = np.random.default_rng(seed)
  object_tvd, joint_tvd, mi = np.zeros(num_objects), 0.0, 0.0
  eye = np.eye(num_states)
  for _ in range(num_draws):
    states = np.stack([rng.choice(num_states, size=num_samples, p=p) for p in state_probs], -1)
    iou = np.moveaxis(eye[states], 1, 0)                             # [O, N, S] one-hot
    scores = factor_scores_from_iou(iou, state_probs)
    object_tvd += scores["object_tvd"]
    joint_tvd += scores["joint_tvd"]
    mi += scores["mutual_information"]
  return dict(object_tvd=object_tvd / num_draws, joint_tvd=joint_tvd / num_draws,
              mutual_information=mi / num_draws)
