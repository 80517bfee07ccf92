"""Tests of hpunet_jax.metrics: hand-computed cases, properties, Monte Carlo."""
import itertools

import jax
import numpy as np
import pytest

from hpunet_jax.evaluation import exact, metrics


def _disc(cy, cx, r, size=16):
  y, x = np.mgrid[:size, :size]
  return ((y - cy) ** 2 + (x - cx) ** 2 <= r ** 2).astype(np.float32)


def _masks(*pixel_lists, size=4):
  """Masks `[len, size, size]` with the given flat pixel indices set."""
  out = np.zeros((len(pixel_lists), size * size), np.float32)
  for i, pixels in enumerate(pixel_lists):
    out[i, list(pixels)] = 1
  return out.reshape(-1, size, size)


def _brute_ged(samples, graders):
  """Loop form of PHiSeg's `generalised_energy_distance` (foreground only)."""
  def d(a, b):
    if a.sum() == 0 and b.sum() == 0:
      return 0.0
    return 1.0 - (a * b).sum() / np.maximum(a, b).sum()
  n, m = len(samples), len(graders)
  sy = sum(d(s, y) for s in samples for y in graders) / (n * m)
  ss = sum(d(s, t) for s in samples for t in samples) / n ** 2
  yy = sum(d(y, z) for y in graders for z in graders) / m ** 2
  return 2 * sy - ss - yy


def _random_masks(rng, n, size=8, p=0.3):
  masks = (rng.random((n, size, size)) < p).astype(np.float32)
  masks[0] = 0  # always include an empty mask
  return masks


# --- IoU ---------------------------------------------------------------------


def test_iou_hand_cases():
  a, b, empty = _masks([0, 1], [1, 2, 3], [])
  assert float(metrics.iou(a, b)) == pytest.approx(1 / 4)
  assert float(metrics.iou(a, a)) == 1.0
  assert float(metrics.iou(empty, empty)) == 1.0
  assert float(metrics.iou(a, empty)) == 0.0
  assert float(metrics.iou(empty, b)) == 0.0
  # Batched, bool inputs.
  np.testing.assert_allclose(metrics.iou(np.stack([a, empty]) > 0, np.stack([b, empty]) > 0),
                             [0.25, 1.0])


def test_pairwise_iou_matches_elementwise_and_batched():
  rng = np.random.default_rng(0)
  a, b = _random_masks(rng, 5), _random_masks(rng, 3)
  pair = np.asarray(jax.jit(metrics.pairwise_iou)(a, b))
  assert pair.shape == (5, 3)
  expected = np.array([[float(metrics.iou(x, y)) for y in b] for x in a])
  np.testing.assert_allclose(pair, expected, rtol=1e-6)
  assert pair[0, 0] == 1.0  # both empty
  batched = metrics.batched_pairwise_iou(np.stack([a, a[::-1]]), np.stack([b, b]))
  assert batched.shape == (2, 5, 3)
  np.testing.assert_allclose(batched[1], expected[::-1], rtol=1e-6)
  with pytest.raises(ValueError):
    metrics.batched_pairwise_iou(a, b)


# --- GED, diversity, reconstruction ------------------------------------------


def test_ged_hand_case():
  full, empty = _masks([0, 1, 2], [])
  # d(S,Y): {0, 1} -> 0.5; d(S,S'): {0,1,1,0} -> 0.5; d(Y,Y') = 0.
  ged = metrics.generalized_energy_distance(np.stack([full, empty]), full[None])
  assert float(ged) == pytest.approx(0.5)
  # Only empty masks everywhere: every distance is 0.
  assert float(metrics.generalized_energy_distance(empty[None], np.stack([empty, empty]))) == 0.0
  # All samples empty, all graders marked: 2 * 1 - 0 - 0.
  assert float(metrics.generalized_energy_distance(empty[None], full[None])) == 2.0


def test_ged_matches_brute_force_and_properties():
  rng = np.random.default_rng(1)
  samples, graders = _random_masks(rng, 6), _random_masks(rng, 4)
  ged = float(metrics.generalized_energy_distance(samples, graders))
  assert ged == pytest.approx(_brute_ged(samples, graders), abs=1e-6)
  # Order of samples and graders does not matter.
  permuted = metrics.generalized_energy_distance(samples[rng.permutation(6)],
                                                 graders[rng.permutation(4)])
  assert float(permuted) == pytest.approx(ged, abs=1e-6)
  # A set against itself: exactly 0 under the V-statistic.
  assert float(metrics.generalized_energy_distance(graders, graders)) == pytest.approx(0, abs=1e-7)
  # Leading batch axis.
  batched = metrics.generalized_energy_distance(np.stack([samples, samples]),
                                                np.stack([graders, samples[:4]]))
  assert float(batched[0]) == pytest.approx(ged, abs=1e-6)
  assert float(batched[1]) == pytest.approx(_brute_ged(samples, samples[:4]), abs=1e-6)


def test_sample_diversity_hand_case():
  a, b, empty = _masks([0, 1], [1, 2, 3], [])
  # d(a, b) = 3/4; over the 4 ordered pairs (diagonal included): 1.5 / 4.
  assert float(metrics.sample_diversity(np.stack([a, b]))) == pytest.approx(0.375)
  assert float(metrics.sample_diversity(np.stack([empty, empty]))) == 0.0
  assert float(metrics.sample_diversity(np.stack([a, empty]))) == pytest.approx(0.5)


def test_reconstruction_iou_hand_case():
  a, b, empty = _masks([0, 1], [1, 2, 3], [])
  rec = metrics.reconstruction_iou(np.stack([a, empty, empty]), np.stack([b, empty, a]))
  assert float(rec) == pytest.approx((0.25 + 1.0 + 0.0) / 3)


# --- HM-IoU ------------------------------------------------------------------


def _brute_hm_iou(samples, graders):
  iou = np.asarray(metrics.pairwise_iou(samples, np.tile(graders, (len(samples) // len(graders),
                                                                   1, 1))))
  n = len(samples)
  return max(iou[np.arange(n), list(p)].mean() for p in itertools.permutations(range(n)))


def test_hm_iou_hand_cases():
  a, b, empty = _masks([0, 1], [1, 2, 3], [])
  # Graders (a, b) tiled to (a, b, a, b); samples (a, a, b, empty): best is
  # a-a, a-a, b-b, empty-b -> (1 + 1 + 1 + 0) / 4.
  hm = metrics.hungarian_matched_iou(np.stack([a, a, b, empty]), np.stack([a, b]))
  assert hm == pytest.approx(0.75)
  assert metrics.hungarian_matched_iou(np.stack([empty, empty]), empty[None]) == 1.0
  assert metrics.hungarian_matched_iou(np.stack([empty, empty]), a[None]) == 0.0
  # 3 samples, 2 graders: both tiled to 6 = lcm(3, 2) (as CCDM). Samples (a, b, a) x 2 hold
  # four a and two b, graders (a, b) x 3 three of each: a-a x3, b-b x2 and one a-b (IoU 1/4).
  assert metrics.hungarian_matched_iou(np.stack([a, b, a]), np.stack([a, b])) == (
      pytest.approx((5 + 0.25) / 6))
  # With b replaced by empty: a-a x3, a-b once, empty-b x2 (IoU 0).
  assert metrics.hungarian_matched_iou(np.stack([a, empty, a]), np.stack([a, b])) == (
      pytest.approx((3 + 0.25) / 6))
  with pytest.raises(ValueError, match="needs samples and graders"):
    metrics.hungarian_matched_iou_from_iou(np.zeros((0, 2)))


def _ccdm_hm_iou(samples, graders):
  """CCDM's tiling: both sets to their least common multiple, then Hungarian matching."""
  size = np.lcm(len(samples), len(graders))
  samples = np.tile(samples, (size // len(samples), 1, 1))
  graders = np.tile(graders, (size // len(graders), 1, 1))
  iou = np.asarray(metrics.pairwise_iou(samples, graders), np.float64)
  return _brute_hm_iou(samples, graders) if size <= 6 else None, iou


def test_hm_iou_any_sample_count_matches_lcm_tiling():
  rng = np.random.default_rng(5)
  for n, m in ((3, 2), (2, 3), (5, 1), (3, 3)):
    samples, graders = _random_masks(rng, n, p=0.5), _random_masks(rng, m, p=0.5)
    brute, _ = _ccdm_hm_iou(samples, graders)
    assert metrics.hungarian_matched_iou(samples, graders) == pytest.approx(brute, abs=1e-6)


def test_hm_iou_properties_and_brute_force():
  rng = np.random.default_rng(2)
  for n, m in ((4, 2), (6, 3), (6, 2)):
    samples, graders = _random_masks(rng, n, p=0.5), _random_masks(rng, m, p=0.5)
    hm = metrics.hungarian_matched_iou(samples, graders)
    assert hm == pytest.approx(_brute_hm_iou(samples, graders), abs=1e-6)
    assert metrics.hungarian_matched_iou(samples[rng.permutation(n)],
                                         graders[rng.permutation(m)]) == pytest.approx(hm)
  assert metrics.hungarian_matched_iou(graders, graders) == pytest.approx(1.0)
  assert metrics.hungarian_matched_iou(np.tile(graders, (2, 1, 1)), graders) == pytest.approx(1.0)


# --- S_NCC -------------------------------------------------------------------


def _phiseg_variance_ncc_dist(sample_arr, gt_arr):
  """A numpy port of PHiSeg's `utils.variance_ncc_dist` (float64, loops as there).

  sample_arr: softmax outputs `[N, H, W, C]`; gt_arr: one-hot graders `[M, H, W, C]`.
  """

  def pixel_wise_xent(m_samp, m_gt, eps=1e-8):
    return -1.0 * np.sum(m_gt * np.log(m_samp + eps), axis=-1)

  def ncc(a, v):
    a, v = a.flatten(), v.flatten()
    a = (a - np.mean(a)) / (np.std(a) * len(a))
    v = (v - np.mean(v)) / np.std(v)
    return np.correlate(a, v)

  mean_seg = np.mean(sample_arr, axis=0)
  e_ss = np.mean([pixel_wise_xent(s, mean_seg) for s in sample_arr], axis=0)
  e_sy = [np.mean([pixel_wise_xent(s, y) for s in sample_arr], axis=0) for y in gt_arr]
  return float(np.mean([ncc(e_ss, e) for e in e_sy]))


def _softmax(logits):
  e = np.exp(logits - logits.max(-1, keepdims=True))
  return e / e.sum(-1, keepdims=True)


def test_ncc_matches_phiseg_on_random_inputs():
  rng = np.random.default_rng(3)
  for trial in range(5):
    logits = rng.normal(0, 3, (8, 16, 16, 2))
    probs = _softmax(logits)
    graders = rng.random((4, 16, 16)) < 0.4
    expected = _phiseg_variance_ncc_dist(probs, np.eye(2)[graders.astype(int)])
    value = float(metrics.ncc(probs, graders))
    assert value == pytest.approx(expected, abs=1e-6), trial
  batched = metrics.ncc(np.stack([probs, probs[::-1]]), np.stack([graders, graders]))
  np.testing.assert_allclose(batched, [value, value], atol=1e-6)  # sample order irrelevant


def test_ncc_is_nan_where_phiseg_divides_by_zero():
  a, empty = _masks([0, 1], [])
  binary = lambda masks: np.eye(2)[np.asarray(masks, int)]   # probabilities exactly 0 / 1
  # All samples certain and equal: the uncertainty map is constant.
  for samples, graders in (([a, a], [a, empty]), ([empty, empty], [empty])):
    with np.errstate(divide="ignore", invalid="ignore"):
      assert np.isnan(_phiseg_variance_ncc_dist(binary(samples), binary(graders)))
    assert np.isnan(float(metrics.ncc(binary(samples), np.stack(graders))))


def test_ncc_of_identical_confident_samples_is_not_rounding_noise():
  """16 identical samples with |logit| 10-20: the old 1 - p_fg form correlated rounding noise."""
  rng = np.random.default_rng(0)
  margin = rng.uniform(10, 20, (16, 16)) * rng.choice([-1, 1], (16, 16))
  logits = np.broadcast_to(np.stack([np.zeros_like(margin), margin], -1), (16, 16, 16, 2))
  probs = _softmax(logits)
  graders = np.stack([margin > 0, margin > 0, ~(margin > 0), margin > 3])
  expected = _phiseg_variance_ncc_dist(probs, np.eye(2)[graders.astype(int)])
  value = float(metrics.ncc(probs.astype(np.float32), graders))
  assert value == pytest.approx(expected, abs=1e-3)


# --- Aggregation ---------------------------------------------------------------


def test_aggregate_and_subset_b():
  values = np.array([0.1, 0.2, 0.3, 0.4])
  stats = metrics.aggregate(values)
  assert stats["n"] == 4 and stats["mean"] == pytest.approx(0.25)
  assert stats["std"] == pytest.approx(np.std(values))
  assert 0.1 <= stats["ci_low"] < 0.25 < stats["ci_high"] <= 0.4
  assert metrics.aggregate(values) == stats  # seeded
  sub = metrics.aggregate(values, subset=[True, False, False, True])
  assert sub["n"] == 2 and sub["mean"] == pytest.approx(0.25)
  const = metrics.aggregate(np.full(7, 0.5))
  assert const["ci_low"] == const["ci_high"] == 0.5
  none = metrics.aggregate(values, subset=np.zeros(4, bool))
  assert none["n"] == 0 and np.isnan(none["mean"])
  assert stats["num_nan"] == 0
  # NaN scores (undefined for that example) are dropped and counted.
  with_nan = metrics.aggregate(np.array([0.1, np.nan, 0.3, np.nan]))
  assert (with_nan["n"], with_nan["num_nan"]) == (2, 2)
  assert with_nan["mean"] == pytest.approx(0.2) and np.isfinite(with_nan["ci_low"])
  only_nan = metrics.aggregate(np.array([np.nan]))
  assert (only_nan["n"], only_nan["num_nan"]) == (0, 1) and np.isnan(only_nan["mean"])

  a, empty = _masks([0], [])
  graders = np.stack([np.stack([a, a]), np.stack([a, empty]), np.stack([empty, empty])])
  np.testing.assert_array_equal(metrics.subset_b(graders), [True, False, False])


# --- Exact scores ----------------------------------------------------------------


def _toy(size=16):
  candidates = np.stack([_disc(4, 4, 3, size), _disc(4, 11, 3, size), _disc(10, 8, 4, size),
                         np.zeros((size, size), np.float32)])
  return candidates, np.array([0.4, 0.3, 0.2, 0.1])


def test_exact_ged_equals_ged_with_graders_in_exact_proportion():
  candidates, _ = _toy()
  probs = np.array([0.5, 0.25, 0.25, 0.0])
  graders = candidates[[0, 0, 1, 2]]
  samples = np.concatenate([candidates[[0, 3]], _random_masks(np.random.default_rng(4), 3, 16)])
  assert exact.exact_ged(samples, candidates, probs) == pytest.approx(
      float(metrics.generalized_energy_distance(samples, graders)), abs=1e-6)


def test_exact_ged_against_monte_carlo():
  candidates, probs = _toy()
  rng = np.random.default_rng(5)
  samples = candidates[[0, 0, 1, 3]]
  samples[1, 5, 5] = 1 - samples[1, 5, 5]  # not exactly a candidate
  ged = exact.exact_ged(samples, candidates, probs)
  iou_sc = np.asarray(metrics.pairwise_iou(samples, candidates))
  iou_ss = np.asarray(metrics.pairwise_iou(samples, samples))
  iou_cc = np.asarray(metrics.pairwise_iou(candidates, candidates))
  # Graders drawn from the truth; V-statistic grader term biases E by -D/M.
  num_graders = 400
  draws = []
  for _ in range(50):
    idx = rng.choice(len(probs), num_graders, p=probs)
    draws.append(metrics.ged_from_iou(iou_sc[:, idx], iou_ss, iou_cc[np.ix_(idx, idx)]))
  bias = float(probs @ (1 - iou_cc) @ probs) / num_graders
  assert np.mean(draws) - bias == pytest.approx(ged, abs=3e-3)


def test_exact_ged_floor_against_monte_carlo():
  candidates, probs = _toy()
  iou_cc = np.asarray(metrics.pairwise_iou(candidates, candidates))
  rng = np.random.default_rng(6)
  for num_samples in (1, 4, 16):
    floor = exact.exact_ged_floor(candidates, probs, num_samples)
    assert floor == pytest.approx(float(probs @ (1 - iou_cc) @ probs) / num_samples)
    draws = []
    for _ in range(4000):
      idx = rng.choice(len(probs), num_samples, p=probs)
      draws.append(exact.exact_ged_from_iou(iou_cc[idx], iou_cc[np.ix_(idx, idx)], iou_cc,
                                              probs))
    stderr = np.std(draws) / np.sqrt(len(draws))
    assert abs(np.mean(draws) - floor) < 4 * stderr + 1e-9, num_samples


def test_single_guess_and_normalised():
  candidates, probs = _toy()
  single = exact.exact_ged_single_guess(candidates, probs)
  assert single == pytest.approx(exact.exact_ged(np.repeat(candidates[:1], 5, 0), candidates,
                                                   probs), abs=1e-6)
  floor = exact.exact_ged_floor(candidates, probs, 5)
  assert 0 < floor < single
  assert exact.normalised_ged(single, floor, single) == pytest.approx(1.0)
  assert exact.normalised_ged(floor, floor, single) == pytest.approx(0.0)
  with pytest.raises(ValueError, match="sum to 1"):
    exact.exact_ged_single_guess(candidates, probs * 2)


def test_match_statistics_hand_case():
  candidates, _ = _toy()
  probs = np.array([0.5, 0.5, 0.0, 0.0])
  junk = np.ones_like(candidates[0])
  samples = np.stack([candidates[0], candidates[0], candidates[1], junk])
  stats = exact.match_statistics(samples, candidates, probs)
  assert stats["match_rate"] == 0.75
  np.testing.assert_allclose(stats["frequencies"], [0.5, 0.25, 0, 0])
  # 0.5 * (|0.5-0.5| + |0.25-0.5| + unmatched 0.25).
  assert stats["tvd"] == pytest.approx(0.25)
  # A zero-probability candidate is outside the support: matching it is a miss.
  stats = exact.match_statistics(candidates[[2, 3]], candidates, probs)
  assert stats["match_rate"] == 0.0 and stats["tvd"] == pytest.approx(1.0)
  # Threshold: a disc one pixel off matches at 0.5, not at 0.99.
  shifted = np.roll(candidates[2], 1, axis=1)[None]
  iou = float(metrics.iou(shifted[0], candidates[2]))
  assert exact.match_statistics(shifted, candidates, _toy()[1], threshold=iou)["match_rate"] == 1
  assert exact.match_statistics(shifted, candidates, _toy()[1], threshold=0.99)[
      "match_rate"] == 0


def test_disc_toy_reference_numbers():
  """The scale of the exact scores on a 64x64 toy with 100 samples."""
  centres, radius = [(18, 18), (18, 46), (46, 32)], 14
  probs = np.array([0.5, 0.3, 0.2])
  candidates = np.stack([_disc(cy, cx, radius, 64) for cy, cx in centres])
  smaller = np.stack([_disc(cy, cx, radius - 1, 64) for cy, cx in centres])
  idx = np.repeat(np.arange(3), [50, 30, 20])
  floor = exact.exact_ged_floor(candidates, probs, 100)
  single = exact.exact_ged_single_guess(candidates, probs)
  one_pixel_small = exact.exact_ged(smaller[idx], candidates, probs)
  assert floor == pytest.approx(0.0061, abs=5e-4)
  assert single == pytest.approx(0.37, abs=0.01)
  assert one_pixel_small == pytest.approx(0.104, abs=0.01)
  # Exactly the true frequencies beat the floor (which is for i.i.d. draws).
  assert exact.exact_ged(candidates[idx], candidates, probs) == pytest.approx(0, abs=1e-6)


def test_ncc_with_saturated_probabilities_under_jit():
  """Probabilities of exactly 0 and 1 (confident samples) must not zero S_NCC."""
  fg = np.zeros((10, 16, 16), np.float32)
  fg[:5, 4:8, 4:8] = 1.0
  probs = np.stack([1 - fg, fg], -1)
  graders = np.zeros((2, 16, 16), bool)
  graders[:, 4:8, 4:9] = True
  value = float(metrics.ncc(probs, graders))
  assert 0.5 < value <= 1.0
  assert value == pytest.approx(_phiseg_variance_ncc_dist(probs, np.eye(2)[graders.astype(int)]),
                                abs=1e-6)
