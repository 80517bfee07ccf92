"""Tests of hpunet_jax.evaluation with stub models of known behaviour."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax.evaluation import driver, exact, metrics, report

SIZE = 32
NUM_GRADERS = 4


def _disc(cy, cx, r):
  y, x = np.mgrid[:SIZE, :SIZE]
  return ((y - cy) ** 2 + (x - cx) ** 2 <= r ** 2).astype(np.float32)


CANDIDATES = np.stack([_disc(9, 9, 6), _disc(9, 23, 6), _disc(23, 16, 7)])
PROBS = np.array([0.5, 0.3, 0.2], np.float32)
PARAMS = {"candidates": CANDIDATES}


def _logits(masks):
  """Two-class logits whose argmax is `masks` (foreground prob ~0.993)."""
  masks = masks.astype(jnp.float32)
  return 5.0 * jnp.stack([1.0 - masks, masks], -1)


class StubModel:
  """Samples candidates from the true distribution, or always the likeliest.

  Its `params` are the candidate masks (`PARAMS`), so that XLA sees them as
  inputs rather than constants to fold. Reconstructs perfectly. Counts traces
  to check that evaluation caches its jitted functions.
  """

  def __init__(self, always_best=False):
    self.always_best = always_best
    self.traces = 0

  def sample(self, params, rng, images, *, num_samples=1, mean=False):
    del mean
    self.traces += 1
    shape = (num_samples, images.shape[0])
    if self.always_best:
      index = jnp.full(shape, int(np.argmax(PROBS)))
    else:
      index = jax.random.categorical(rng, jnp.log(jnp.asarray(PROBS)), shape=shape)
    return _logits(params["candidates"][index])  # [N, B, H, W, 2]

  def reconstruct(self, params, rng, images, segmentations, *, mean=False):
    del params, rng, images
    assert mean is True and segmentations.shape[-1] == 2
    return _logits(segmentations[..., 1])


def _batches(num_batches=2, batch_size=4, seed=0):
  rng = np.random.default_rng(seed)
  batches = []
  for _ in range(num_batches):
    index = rng.choice(len(PROBS), (batch_size, NUM_GRADERS), p=PROBS)
    masks = np.moveaxis(CANDIDATES[index], 1, -1)  # [b, H, W, M]
    batches.append(dict(
        image=np.zeros((batch_size, SIZE, SIZE, 1), np.float32),
        masks=masks.copy(),
        candidates=np.repeat(CANDIDATES[None], batch_size, 0),
        candidate_probs=np.repeat(PROBS[None], batch_size, 0)))
  batches[0]["masks"][0, ..., 1] = 0  # one image outside subset B
  return batches


def test_true_distribution_sampler_scores_the_floor():
  model = StubModel()
  batches = _batches()
  results = driver.evaluate(model, PARAMS, batches, rng=jax.random.PRNGKey(0),
                                num_bootstrap=200)
  assert results["num_images"] == 8 and results["num_images_subset_b"] == 7
  floor = float(PROBS @ (1 - metrics.pairwise_iou(CANDIDATES, CANDIDATES)) @ PROBS) / 100
  assert results["exact_ged_floor"] == pytest.approx(floor, rel=1e-5)
  assert results["exact_ged"] == pytest.approx(floor, abs=0.005)
  assert abs(results["exact_ged_normalised"]) < 0.03
  assert results["match_rate"] == 1.0
  assert results["tvd"] < 0.15
  assert results["iou_rec"] == 1.0  # perfect reconstruction
  assert -1.0 <= results["ncc"] <= 1.0
  for key in ("ged_16", "ged_50", "ged_100", "hm_iou_16", "diversity", "exact_ged"):
    low, high = results[f"{key}_ci"]
    assert low <= results[key] <= high and results[f"{key}_std"] >= 0, key
  assert "ged_16_subset_b" in results and "hm_iou_16_subset_b_ci" in results
  assert "iou_rec_subset_b" not in results

  table = report.format_table(results)
  for word in ("ged_100", "hm_iou_16", "subset B", "floor", "single guess", "±"):
    assert word in table

  # A second evaluation reuses the jitted function: no new trace.
  traces = model.traces
  again = driver.evaluate(model, PARAMS, batches, rng=jax.random.PRNGKey(0), num_bootstrap=200)
  assert model.traces == traces
  assert again["ged_16"] == results["ged_16"]  # same key, same scores


def test_single_guess_sampler_and_lidc_scores():
  batches = _batches()
  results = driver.evaluate(StubModel(always_best=True), PARAMS, batches,
                                rng=jax.random.PRNGKey(1), num_bootstrap=0)
  single = exact.exact_ged_single_guess(CANDIDATES, PROBS)
  assert results["exact_ged"] == pytest.approx(single, abs=1e-5)
  assert results["exact_ged_single_guess"] == pytest.approx(single, rel=1e-6)
  assert results["exact_ged_normalised"] == pytest.approx(1.0, abs=1e-4)
  assert results["match_rate"] == 1.0
  assert results["tvd"] == pytest.approx(1 - PROBS.max(), abs=1e-6)
  assert results["diversity"] == 0.0

  # LIDC scores against the graders, recomputed image by image.
  best = np.repeat(CANDIDATES[:1], 16, 0)
  geds, hms = [], []
  for batch in batches:
    for masks in np.moveaxis(batch["masks"], -1, 1):
      geds.append(float(metrics.generalized_energy_distance(best, masks)))
      hms.append(metrics.hungarian_matched_iou(best, masks))
  assert results["ged_16"] == pytest.approx(np.mean(geds), abs=1e-5)
  assert results["ged_100"] == pytest.approx(np.mean(geds), abs=1e-5)
  assert results["hm_iou_16"] == pytest.approx(np.mean(hms), abs=1e-5)
  assert results["ged_16_subset_b"] == pytest.approx(np.mean(geds[1:]), abs=1e-5)
  # Identical samples of the same confidence everywhere: the uncertainty map is
  # constant, S_NCC undefined for every image, left out and counted.
  assert results["ncc_num_nan"] == results["num_images"] and np.isnan(results["ncc"])
  assert f"ncc: undefined for {results['num_images']} images" in report.format_table(results)


def test_hm_iou_with_graders_that_do_not_divide_the_samples():
  batches = [{**b, "masks": b["masks"][..., :3]} for b in _batches(num_batches=1)]
  results = driver.evaluate(StubModel(always_best=True), PARAMS, batches,
                                rng=jax.random.PRNGKey(1), num_samples=16, num_bootstrap=0)
  best = np.repeat(CANDIDATES[:1], 16, 0)
  hms = [metrics.hungarian_matched_iou(best, masks)
         for masks in np.moveaxis(batches[0]["masks"], -1, 1)]
  assert results["hm_iou_16"] == pytest.approx(np.mean(hms), abs=1e-5)


def test_sizes_skipped_and_num_examples():
  batches = [{k: v for k, v in b.items() if not k.startswith("candidate")} for b in _batches()]
  results = driver.evaluate(StubModel(), PARAMS, batches, rng=jax.random.PRNGKey(2),
                                num_samples=20, num_examples=5, num_bootstrap=50)
  assert results["num_images"] == 5
  assert "ged_16" in results and "hm_iou_16" in results
  assert "ged_50" not in results and "ged_100" not in results
  assert "exact_ged" not in results and "match_rate" not in results
  assert "exact" not in report.format_table(results)
