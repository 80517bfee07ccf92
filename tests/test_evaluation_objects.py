"""Per-object evaluation (`synthetic_objects`-style data) with stub models of known behaviour."""
import math
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hpunet_jax.evaluation import driver, report, scales
from hpunet_jax.data import synthetic

DEFINITION = synthetic.ObjectsDefinition()
EXAMPLES = [synthetic.generate_objects_example(DEFINITION, 0, "test", i) for i in range(4)]


def _batch(examples):
  stack = lambda key: np.stack([e[key] for e in examples])
  # The stub's "image": the image, then each object's state masks as channels
  # [H, W, O * 2], from which it draws (the evaluation samples image by image).
  states = stack("object_states").astype(np.float32)                # [b, H, W, O, 2]
  return dict(
      image=np.concatenate([stack("image").astype(np.float32) / 255,
                            states.reshape(states.shape[:3] + (-1,))], -1),
      masks=stack("masks").astype(np.float32),
      candidates=np.moveaxis(stack("candidates"), -1, 1).astype(np.float32),
      candidate_probs=stack("candidate_probs"),
      object_regions=np.moveaxis(stack("object_regions"), -1, 1).astype(np.float32),
      object_states=np.moveaxis(stack("object_states"), (-2, -1), (1, 2)).astype(np.float32),
      object_state_probs=stack("object_state_probs"))


BATCH = _batch(EXAMPLES)
# One scale per object in this stub: scale o moves object o only.
STUB_CONFIG = types.SimpleNamespace(
    num_scales=3, latent_shapes=lambda h, w: [(1, 1, 1), (2, 2, 1), (4, 4, 1)])


class ObjectStub:
  """Draws each object's state from the truth, independently or all tied to object 0.

  With `mean` (one bool per scale), object o takes its most probable state
  when scale o is at its mean. It reads the state masks from the image channels.
  """

  config = STUB_CONFIG

  def __init__(self, tied=False):
    self.tied = tied

  def sample(self, params, rng, images, *, num_samples=1, mean=False):
    del params
    probs = jnp.asarray(DEFINITION.state_probs, jnp.float32)        # [O, 2]
    num_objects = probs.shape[0]
    states_masks = images[..., 1:].reshape(images.shape[:3] + (num_objects, 2))
    states_masks = jnp.moveaxis(states_masks, (3, 4), (1, 2))      # [b, O, 2, H, W]
    mean = (mean,) * num_objects if isinstance(mean, bool) else mean
    shape = (num_samples, states_masks.shape[0])
    uniform = jax.random.uniform(rng, shape + (num_objects,))
    if self.tied:
      uniform = jnp.repeat(uniform[..., :1], num_objects, -1)
    states = (uniform < probs[:, 1]).astype(jnp.int32)               # [N, b, O]
    states = jnp.where(jnp.asarray(mean), jnp.argmax(probs, -1), states)
    chosen = jnp.take_along_axis(states_masks[None], states[..., None, None, None], axis=3)
    masks = chosen[:, :, :, 0].max(axis=2)                           # [N, b, H, W]
    return 5.0 * jnp.stack([1.0 - masks, masks], -1)

  def reconstruct(self, params, rng, images, segmentations, *, mean=False):
    del params, rng, images, mean
    return 5.0 * jnp.stack([segmentations[..., 0], segmentations[..., 1]], -1)


PARAMS = {}


def test_a_sampler_of_the_truth_scores_its_floors():
  results = driver.evaluate(ObjectStub(), PARAMS, [BATCH], rng=jax.random.key(0),
                                num_bootstrap=100)
  assert results["fidelity"] == 1.0 and results["clean_rate"] == 1.0
  for o in range(3):
    assert results[f"fidelity_{o}"] == 1.0
    assert results[f"object_tvd_{o}"] < 0.12
    assert results[f"object_tvd_floor_{o}"] == pytest.approx(0.04, abs=0.01)
  assert results["joint_tvd"] == pytest.approx(results["joint_tvd_floor"], abs=0.05)
  assert results["mutual_information"] == pytest.approx(results["mutual_information_floor"],
                                                        abs=0.015)
  assert results["exact_ged_normalised"] == pytest.approx(0.0, abs=0.05)
  table = report.format_table(results)
  assert "joint TVD" in table and "object 2: TVD" in table


def test_tied_objects_show_mutual_information():
  results = driver.evaluate(ObjectStub(tied=True), PARAMS, [BATCH], rng=jax.random.key(0),
                                num_bootstrap=0)
  # States tied through one uniform: object 2 (p 0.5) is a function of object 0 (p 0.7).
  assert results["mutual_information"] > 0.4
  assert results["fidelity"] == 1.0


def test_object_factor_statistics_finds_the_scale_of_each_object():
  stats = scales.object_factor_statistics(ObjectStub(), PARAMS, [BATCH],
                                              rng=jax.random.key(1), num_samples=200)
  assert list(stats) == ["all scales free", "none free (all means)", "only 1x1 free",
                         "only 2x2 free", "only 4x4 free"]
  for o in range(3):
    assert stats["none free (all means)"][f"entropy_{o}"] == 0.0
    assert stats["all scales free"][f"entropy_{o}"] > 0.5
    for scale, name in enumerate(["only 1x1 free", "only 2x2 free", "only 4x4 free"]):
      if scale == o:
        assert stats[name][f"entropy_{o}"] > 0.5 and stats[name][f"moved_{o}"] > 0.2
        assert stats[name][f"tvd_{o}"] < 0.12
      else:
        assert stats[name][f"entropy_{o}"] == 0.0 and stats[name][f"moved_{o}"] == 0.0
  assert stats["all scales free"]["frequency_1"] == pytest.approx(0.4, abs=0.1)
  assert stats["all scales free"]["fidelity"] == 1.0
  table = scales.format_object_factor_table(stats, DEFINITION.state_probs)
  assert "only 2x2 free" in table and "moved" in table
  assert math.isfinite(stats["all scales free"]["mutual_information"])
