"""The scorer families: selection by the data's keys, and a new family without a driver change."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax.evaluation import driver, scorers

SIZE = 16
NUM_GRADERS = 2


class MaskStub:
  """Samples the mask carried in the image's second channel; reconstructs perfectly."""

  def sample(self, params, rng, images, *, num_samples=1, mean=False):
    del params, rng, mean
    masks = jnp.broadcast_to(images[None, ..., 1], (num_samples,) + images.shape[:3])
    return 5.0 * jnp.stack([1.0 - masks, masks], -1)   # [N, B, H, W, 2]

  def reconstruct(self, params, rng, images, segmentations, *, mean=False):
    del params, rng, images, mean
    return 5.0 * segmentations


def _batch(num_images=3, seed=0):
  rng = np.random.default_rng(seed)
  masks = (rng.random((num_images, SIZE, SIZE)) > 0.5).astype(np.float32)
  return dict(image=np.stack([np.zeros_like(masks), masks], -1),
              masks=np.repeat(masks[..., None], NUM_GRADERS, -1),
              foreground_truth=np.full((num_images,), 0.25, np.float32))


# A toy family as a new score would be one: the share of foreground pixels in
# the samples (on the device) and its distance to a per-image truth the data
# carry (on the host), with the truth's distance to itself as its floor.
def _toy_on_device(model, params, draws, inputs):
  del model, params, inputs
  return dict(foreground=draws.samples.mean(axis=(1, 2, 3)))


def _toy_per_image(outputs, batch, *, start, num_samples, protocol):
  del start, num_samples, protocol
  truth = np.asarray(batch["foreground_truth"], np.float64)
  return dict(foreground_error=np.abs(outputs["foreground"] - truth),
              foreground_error_floor=np.zeros_like(truth))


TOY = scorers.Family(name="toy", needs=("foreground_truth",), on_device=_toy_on_device,
                     per_image=_toy_per_image,
                     keys=("foreground_error", "foreground_error_floor"),
                     floors={"foreground_error": "foreground_error_floor"})


def test_a_new_family_is_scored_through_the_registry(monkeypatch):
  monkeypatch.setattr(scorers, "FAMILIES", scorers.FAMILIES + (TOY,))
  batches = [_batch(seed=0), _batch(seed=1)]
  results = driver.evaluate(MaskStub(), {}, batches, rng=jax.random.key(0), num_samples=16,
                            num_bootstrap=0)
  foreground = np.concatenate([b["masks"][..., 0].mean(axis=(1, 2)) for b in batches])
  assert results["foreground_error"] == pytest.approx(np.mean(np.abs(foreground - 0.25)))
  assert results["foreground_error_floor"] == 0.0
  assert {"foreground_error_std", "foreground_error_ci"} <= set(results)
  # The other families are scored as before: every sample equals every grader.
  assert results["num_images"] == 6 and results["ged_16"] == pytest.approx(0.0, abs=1e-7)
  assert results["iou_rec"] == 1.0
  # Data without the toy's key: the toy family is not selected.
  plain = [{k: v for k, v in b.items() if k != "foreground_truth"} for b in batches]
  results = driver.evaluate(MaskStub(), {}, plain, rng=jax.random.key(0), num_samples=16,
                            num_bootstrap=0)
  assert not any(k.startswith("foreground") for k in results) and "ged_16" in results


def test_a_family_passed_to_the_driver_alone():
  scores = driver.per_image_scores(MaskStub(), {}, [_batch()], rng=jax.random.key(0),
                                   num_samples=4, families=(TOY,))
  assert set(scores) == {"foreground_error", "foreground_error_floor"}
  summary = driver.summarise(scores, num_bootstrap=0, families=(TOY,))
  assert set(summary) == {f"foreground_error{x}" for x in ("", "_std", "_ci", "_floor",
                                                           "_floor_std", "_floor_ci")}


CANDIDATE_KEYS = {"candidates", "candidate_probs"}
OBJECT_KEYS = {"object_regions", "object_states", "object_state_probs"}


@pytest.mark.parametrize("keys,names", [
    (set(), ()),
    ({"masks"}, ("lidc",)),
    ({"masks"} | CANDIDATE_KEYS, ("lidc", "candidates")),
    ({"masks", "candidates"}, ("lidc",)),   # no probabilities: no exact scores
    ({"masks"} | OBJECT_KEYS, ("lidc", "objects")),
    ({"masks"} | CANDIDATE_KEYS | OBJECT_KEYS, ("lidc", "candidates", "objects")),
])
def test_selection_follows_the_data_keys(keys, names):
  assert tuple(f.name for f in scorers.select({"image"} | keys)) == names


def test_the_driver_scores_the_families_of_the_first_batch():
  batch = _batch()
  candidates = dict(batch, candidates=batch["masks"][:, None, ..., 0],
                    candidate_probs=np.ones((3, 1), np.float32))
  scores = driver.per_image_scores(MaskStub(), {}, [candidates], rng=jax.random.key(0),
                                   num_samples=4)
  assert "exact_ged" in scores and "joint_tvd" not in scores
  np.testing.assert_allclose(scores["exact_ged"], 0.0, atol=1e-7)
  # A later batch without what the first batch's families need is an error.
  with pytest.raises(ValueError, match="candidate"):
    driver.per_image_scores(MaskStub(), {}, [candidates, batch], rng=jax.random.key(0),
                            num_samples=4)


@pytest.mark.parametrize("names,num_scales,key", [
    (("lidc",), 4, None),
    (("lidc", "candidates"), 1, None),          # one scale: nothing to tell apart
    (("lidc", "candidates"), 2, "scales"),
    (("lidc", "objects"), 1, "object_scales"),
    (("lidc", "candidates", "objects"), 4, "object_scales"),   # the most specific family
])
def test_the_scale_analysis_is_the_most_specific_familys(names, num_scales, key):
  families = [f for f in scorers.FAMILIES if f.name in names]
  analysis = scorers.scale_analysis(families, num_scales)
  assert (analysis.key if analysis else None) == key


def test_per_object_keys_are_aggregated_object_by_object():
  family = scorers.objects.FAMILY
  scores = {k: None for k in ("fidelity_1", "object_tvd_1", "fidelity_0", "frequency_0_1",
                              "frequency_0_0", "object_tvd_0", "fidelity", "joint_tvd",
                              "subset_b", "ged_16")}
  assert family.score_keys(scores) == ["joint_tvd", "fidelity", "object_tvd_0", "fidelity_0",
                                       "frequency_0_0", "frequency_0_1", "object_tvd_1",
                                       "fidelity_1"]


def test_every_declared_floor_and_nan_key_is_one_of_the_familys_keys():
  for family in scorers.FAMILIES:
    assert set(family.floors) | set(family.floors.values()) | set(family.nan_keys) <= set(
        family.keys), family.name
  with pytest.raises(ValueError, match="not in its keys"):
    scorers.Family(name="bad", needs=(), on_device=None, per_image=_toy_per_image, keys=("a",),
                   floors={"a": "a_floor"})
