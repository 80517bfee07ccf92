"""Per-object exact scores on hand-made samples whose scores are known."""
import math

import numpy as np
import pytest

from hpunet_jax.evaluation import exact

# Two objects in an 8x8 image: object 0 in the left half (present / absent),
# object 1 in the right half (tight 2x2 / loose 4x4 square).
H = W = 8
REGIONS = np.zeros((2, H, W), bool)
REGIONS[0, :, :4] = True
REGIONS[1, :, 4:] = True
STATES = np.zeros((2, 2, H, W), bool)
STATES[0, 1, 2:5, 1:3] = True            # object 0: absent, present
STATES[1, 0, 3:5, 5:7] = True            # object 1: tight
STATES[1, 1, 2:6, 4:8] = True            # object 1: loose


def _sample(states):
  return STATES[0, states[0]] | STATES[1, states[1]]


def _samples(state_list):
  return np.stack([_sample(s) for s in state_list])


def test_exact_reproduction_of_the_truth_scores_zero():
  probs = np.array([[0.5, 0.5], [0.75, 0.25]])
  # 8 samples whose joint frequencies equal the product distribution exactly.
  states = [(a, b) for a in (0, 1) for b in (0, 0, 0, 1)]
  scores = exact.factor_scores(_samples(states), REGIONS, STATES, probs)
  np.testing.assert_array_equal(scores["states"], states)
  np.testing.assert_allclose(scores["frequencies"], probs)
  np.testing.assert_allclose(scores["object_tvd"], [0.0, 0.0], atol=1e-12)
  assert scores["joint_tvd"] == pytest.approx(0.0, abs=1e-12)
  assert scores["mutual_information"] == pytest.approx(0.0, abs=1e-12)
  np.testing.assert_allclose(scores["fidelity"], [1.0, 1.0])
  np.testing.assert_allclose(scores["clean_rate"], [1.0, 1.0])


def test_perfectly_correlated_fair_objects_have_mutual_information_log_2():
  probs = np.full((2, 2), 0.5)
  # Both marginals are exactly right (TVD 0 per object) but the states move together.
  samples = _samples([(0, 0), (1, 1)] * 5)
  scores = exact.factor_scores(samples, REGIONS, STATES, probs)
  np.testing.assert_allclose(scores["object_tvd"], [0.0, 0.0], atol=1e-12)
  assert scores["mutual_information"] == pytest.approx(math.log(2))
  # Joint: 1/2 on (0,0) and (1,1) against 1/4 on each of four: TVD 1/2.
  assert scores["joint_tvd"] == pytest.approx(0.5)


def test_object_tvd_and_fidelity_of_drifting_and_fragmentary_samples():
  probs = np.array([[0.3, 0.7], [0.6, 0.4]])
  # Object 0 never absent (true 0.3); object 1 tight with half of the tight
  # square missing: assigned tight (IoU 0.5 > 2/16) at fidelity 0.5.
  fragment = STATES[0, 1] | (STATES[1, 0] & (np.arange(W) < 6)[None, :])
  scores = exact.factor_scores(np.stack([fragment] * 4), REGIONS, STATES, probs)
  np.testing.assert_array_equal(scores["states"], [[1, 0]] * 4)
  np.testing.assert_allclose(scores["object_tvd"], [0.3, 0.4])
  np.testing.assert_allclose(scores["fidelity"], [1.0, 0.5])
  np.testing.assert_allclose(scores["clean_rate"], [1.0, 0.0])
  # Joint truth (0.18, 0.12, 0.42, 0.28) against all mass on (1, 0).
  assert scores["joint_tvd"] == pytest.approx(1.0 - 0.42)
  assert scores["mutual_information"] == pytest.approx(0.0, abs=1e-12)


def test_assignment_looks_only_inside_each_region():
  probs = np.full((2, 2), 0.5)
  # A stray pixel in one region changes nothing in the other, but makes an
  # `absent` object 0 unmatched: IoU 0 with absent (one empty, one not) and
  # 0 with present (no overlap); the tie goes to the first state.
  sample = _sample((0, 1))
  scores = exact.factor_scores(sample[None], REGIONS, STATES, probs)
  np.testing.assert_allclose(scores["fidelity"], [1.0, 1.0])
  stray = sample.copy()
  stray[7, 0] = True                               # in object 0's region
  scores = exact.factor_scores(stray[None], REGIONS, STATES, probs)
  np.testing.assert_array_equal(scores["states"], [[0, 1]])
  np.testing.assert_allclose(scores["fidelity"], [0.0, 1.0])
  # Touching the present square instead: assigned present at IoU 6/7.
  near = sample | STATES[0, 1]
  near[5, 1] = True
  scores = exact.factor_scores(near[None], REGIONS, STATES, probs)
  np.testing.assert_array_equal(scores["states"], [[1, 1]])
  np.testing.assert_allclose(scores["fidelity"], [6 / 7, 1.0])
  np.testing.assert_allclose(scores["clean_rate"], [0.0, 1.0])   # 6/7 < 0.9


def test_clean_rate_counts_samples_drawn_as_one_of_the_states():
  probs = np.full((2, 2), 0.5)
  # Object 0 absent, then present, then a one-pixel speck of the present
  # square (assigned present at IoU 1/6: not clean), then present; object 1
  # tight, loose, tight, and loose with one pixel more (IoU 16/17 >= 0.9: clean).
  speck = _sample((0, 0))
  speck[2, 1] = True
  grown = _sample((1, 1))
  grown[0, 4] = True
  scores = exact.factor_scores(np.stack([_sample((0, 0)), _sample((1, 1)), speck, grown]),
                               REGIONS, STATES, probs)
  np.testing.assert_array_equal(scores["states"], [[0, 0], [1, 1], [1, 0], [1, 1]])
  np.testing.assert_allclose(scores["fidelity"], [(3 + 1 / 6) / 4, (3 + 16 / 17) / 4])
  np.testing.assert_allclose(scores["clean_rate"], [0.75, 1.0])


def test_total_correlation_of_three_objects():
  # Object 2 copies object 0, object 1 is independent of both: TC = log 2.
  states = np.array([[a, b, a] for a in (0, 1) for b in (0, 1)] * 3)
  assert exact.total_correlation(states, 2) == pytest.approx(math.log(2))
  independent = np.array([[a, b, c] for a in (0, 1) for b in (0, 1) for c in (0, 1)])
  assert exact.total_correlation(independent, 2) == pytest.approx(0.0, abs=1e-12)


def test_floors_are_the_scores_of_exact_draws():
  probs = np.array([[0.5, 0.5], [0.5, 0.5]])
  floors = exact.factor_score_floors(probs, 100, num_draws=400)
  # E|f - 1/2| for a binomial(100, 1/2) frequency is 0.0398 (exact sum).
  np.testing.assert_allclose(floors["object_tvd"], 0.0398, atol=0.006)
  # Plug-in MI bias ~ (k-1)(l-1) / (2N) = 0.005 nats for two binary objects.
  assert 0.003 < floors["mutual_information"] < 0.008
  assert 0.03 < floors["joint_tvd"] < 0.12
  many = exact.factor_score_floors(probs, 10000, num_draws=50)
  assert many["mutual_information"] < 1e-3 and many["joint_tvd"] < 0.02


def test_zero_probability_states_are_outside_the_support():
  probs = np.array([[0.0, 1.0], [1.0, 0.0]])
  scores = exact.factor_scores(_samples([(0, 1)]), REGIONS, STATES, probs)
  # Object 0 looks absent but absent has probability 0: assigned present at IoU 0.
  np.testing.assert_array_equal(scores["states"], [[1, 0]])
  np.testing.assert_allclose(scores["fidelity"], [0.0, 4 / 16])
  with pytest.raises(ValueError, match="state_probs has shape"):
    exact.factor_scores_from_iou(np.zeros((2, 3, 2)), np.full((3, 2), 0.5))
