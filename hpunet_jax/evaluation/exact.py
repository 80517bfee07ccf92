"""Exact scores against a known distribution of segmentations (synthetic data), on the host.

Where the true distribution is known (K candidate masks with probabilities
p, or independent objects with state masks and probabilities), a model's
samples can be scored against the truth itself instead of a few graders:
the exact GED with its floor and single-guess references, match statistics,
and the per-object scores. Conventions as `hpunet_jax.evaluation.metrics`
(which gives the IoU); float64, numpy and scipy.
"""
import jax
import numpy as np
from scipy.stats import entropy

from hpunet_jax.evaluation.metrics import as_float_masks, pairwise_iou


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
  samples, regions = as_float_masks(samples), as_float_masks(regions)
  inside = samples[..., None, :, :, :] * regions[..., :, None, :, :]    # [..., O, N, H, W]
  states = as_float_masks(state_masks) * regions[..., :, None, :, :]   # [..., O, S, H, W]
  return pairwise_iou(inside, states)


def _entropy_of_counts(counts) -> float:
  """Entropy (nats) of the distribution of non-negative `counts`."""
  return float(entropy(np.asarray(counts, np.float64)))


def total_correlation(states, num_states) -> float:
  """Plug-in total correlation (multi-information) of jointly drawn states, in nats.

  `sum_o H(X_o) - H(X_1, ..., X_O)` of the empirical distribution: the KL
  divergence of the joint from the product of its marginals, 0 exactly when
  the empirical joint factorises; for two objects, their mutual information.
  The joint entropy is taken over the distinct rows only (`np.unique`), so the
  cost does not grow with the number of joint states `prod(num_states)`. With
  N draws the joint entropy is at most log N, so for many objects the
  estimate is dominated by its bias: read it against `factor_score_floors`.

  Args:
    states: int `[N, O]`, row i the states of the O objects in draw i.
    num_states: `[O]` (or an int for all) number of states of each object.

  Returns:
    The total correlation in nats (>= 0 up to rounding).
  """
  states = np.asarray(states, np.int64)
  num_objects = states.shape[1]
  num_states = np.broadcast_to(np.asarray(num_states, np.int64), (num_objects,))
  _, joint_counts = np.unique(states, axis=0, return_counts=True)
  marginals = sum(_entropy_of_counts(np.bincount(states[:, o], minlength=num_states[o]))
                  for o in range(num_objects))
  return max(0.0, marginals - _entropy_of_counts(joint_counts))


def pairwise_mutual_information(states, num_states) -> np.ndarray:
  """Plug-in mutual information (nats) of every pair of objects' states.

  Unlike `total_correlation`, each term needs only the `S x S` table of one
  pair, which N = 100 draws estimate well, so its mean over pairs measures
  dependence between objects even when O is large.

  Args:
    states: int `[..., N, O]`.
    num_states: S, the number of states of every object (pad with unused states).

  Returns:
    `[..., O, O]` with `I(X_a; X_b)` off the diagonal and 0 on it.
  """
  states = np.asarray(states, np.int64)
  num = states.shape[-2]
  one_hot = np.eye(num_states)[states]                                   # [..., N, O, S]
  joint = np.einsum("...nas,...nbt->...abst", one_hot, one_hot) / num    # [..., O, O, S, S]
  marginal = one_hot.mean(-3)                                            # [..., O, S]
  product = marginal[..., :, None, :, None] * marginal[..., None, :, None, :]
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(joint > 0, joint * np.log(joint / np.where(product > 0, product, 1.0)), 0.0)
  mi = np.maximum(terms.sum((-2, -1)), 0.0)
  return mi * (1.0 - np.eye(states.shape[-1]))


def mean_pairwise_mutual_information(states, num_states) -> float:
  """Mean of `pairwise_mutual_information` over the O(O-1)/2 pairs (0 for one object)."""
  states = np.asarray(states)
  num_objects = states.shape[-1]
  if num_objects < 2:
    return 0.0
  return float(pairwise_mutual_information(states, num_states).sum((-2, -1))
               / (num_objects * (num_objects - 1)))


def joint_tvd(states, state_probs) -> float:
  """TVD between the empirical joint of `states` `[N, O]` and the product of `state_probs`.

  Sparse over the joint: with `f_u` the share of draws in joint state u and
  `p_u = prod_o q_{o, u_o}` its true probability, the TVD over all `prod S_o`
  joint states is `0.5 (sum_{u observed} |f_u - p_u| + 1 - sum_{u observed} p_u)`
  (the unobserved states have f = 0), so only the <= N distinct observed
  states are visited.
  """
  states = np.asarray(states, np.int64)
  state_probs = np.asarray(state_probs, np.float64)
  observed, counts = np.unique(states, axis=0, return_counts=True)        # [U, O], [U]
  frequencies = counts / states.shape[0]
  probs = np.prod(state_probs[np.arange(states.shape[1]), observed], axis=-1)
  return float(0.5 * (np.abs(frequencies - probs).sum() + 1.0 - probs.sum()))


# The least IoU with its assigned state at which a sample draws an object cleanly
# (`clean_rate`); the same threshold as `match_statistics`' default.
CLEAN_IOU = 0.9


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
  clean_rate = (iou_ons.max(-1) >= CLEAN_IOU).mean(-1)               # [O]
  frequencies = np.stack([np.bincount(states[:, o], minlength=num_states) / num_samples
                          for o in range(num_objects)])              # [O, S]
  object_tvd = 0.5 * np.abs(frequencies - state_probs).sum(-1)
  return dict(states=states, frequencies=frequencies, object_tvd=object_tvd,
              joint_tvd=joint_tvd(states, state_probs),
              mutual_information=total_correlation(states, num_states),
              pairwise_mutual_information=mean_pairwise_mutual_information(states, num_states),
              fidelity=fidelity, clean_rate=clean_rate)


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
        combinations) and the product of the true marginals (`joint_tvd`);
      `mutual_information`: `total_correlation` of the assigned states (nats;
        0 in the truth, but a finite-N plug-in estimate is biased upwards: see
        `factor_score_floors`);
      `pairwise_mutual_information`: `mean_pairwise_mutual_information` of the
        assigned states (nats; also 0 in the truth, biased upwards likewise);
      `fidelity`: `[O]` mean over samples of the IoU with the assigned state;
      `clean_rate`: `[O]` share of samples whose IoU with the assigned state
        is at least `CLEAN_IOU` (0.9): the object drawn as one of its states,
        not as something between two (a speck where it is absent, a disc
        between two radii).
  """
  return factor_scores_from_iou(object_state_iou(samples, regions, state_masks), state_probs)


def factor_score_floors(state_probs, num_samples, *, num_draws=2000, seed=0) -> dict:
  """Expected `factor_scores` of N exact draws from the truth (Monte Carlo).

  A perfect sampler still scores TVD > 0 and mutual information > 0 with a
  finite N (the empirical frequencies scatter around the truth); these are
  the floors to read the model's scores against. Fidelity is 1 for exact draws.
  All draws are made at once and scored vectorised, except the joint TVD and
  the total correlation (one `np.unique` per draw), so 16 objects cost about
  as much as 3.

  Args:
    state_probs: `[O, S]` true per-object state probabilities.
    num_samples: N.
    num_draws: sets of N draws averaged.
    seed: seed of the draws.

  Returns:
    dict with `object_tvd` `[O]`, `joint_tvd`, `mutual_information` and
    `pairwise_mutual_information` (means).
  """
  state_probs = np.asarray(state_probs, np.float64)
  state_probs = state_probs / state_probs.sum(-1, keepdims=True)   # float32 inputs round off.
  num_objects, num_states = state_probs.shape
  rng = np.random.default_rng(seed)
  # Inverse-CDF draws of every object's state: [D, N, O].
  cdf = np.cumsum(state_probs, -1)
  uniform = rng.random((num_draws, num_samples, num_objects))
  states = np.minimum((uniform[..., None] >= cdf).sum(-1), num_states - 1)
  one_hot = np.eye(num_states)[states]                               # [D, N, O, S]
  frequencies = one_hot.mean(1)                                      # [D, O, S]
  object_tvd = 0.5 * np.abs(frequencies - state_probs).sum(-1).mean(0)
  pairwise = np.mean([mean_pairwise_mutual_information(s, num_states) for s in states])
  joint = np.mean([joint_tvd(s, state_probs) for s in states])
  tc = np.mean([total_correlation(s, num_states) for s in states])
  return dict(object_tvd=object_tvd, joint_tvd=float(joint), mutual_information=float(tc),
              pairwise_mutual_information=float(pairwise))
