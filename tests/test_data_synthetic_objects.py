"""Tests of the `synthetic_objects` definition, generator and builder."""
import numpy as np
import pytest
from scipy import stats
import tensorflow_datasets as tfds

from hpunet_jax.data import synthetic
from hpunet_jax.model import HPUNetConfig

tfds.disable_progress_bar()


def test_default_definition_is_the_documented_one():
  d = synthetic.ObjectsDefinition()
  assert d == synthetic.ObjectsDefinition.for_image_size(32)
  assert (d.image_size, d.min_radius, d.max_radius, d.halo_width) == (32, 3, 4, 3)
  assert (d.present_offset, d.loose_offset) == (1, 2)
  np.testing.assert_allclose(d.state_probs, [[0.3, 0.7], [0.6, 0.4], [0.5, 0.5]])
  big = synthetic.ObjectsDefinition.for_image_size(64)
  assert (big.min_radius, big.max_radius, big.halo_width, big.present_offset,
          big.loose_offset) == (6, 8, 6, 2, 4)
  with pytest.raises(ValueError, match="image_size=16"):
    synthetic.ObjectsDefinition.for_image_size(16)


def test_candidates_are_the_product_of_the_objects_states():
  d = synthetic.ObjectsDefinition()
  np.testing.assert_allclose(d.candidate_probs.sum(), 1.0)
  np.testing.assert_allclose(d.state_probs.sum(-1), 1.0)
  example = synthetic.generate_objects_example(d, 0, "train", 3)
  states = example["object_states"].astype(bool)                       # [S, S, O, 2]
  assert example["candidate_states"].shape == (8, 3)
  # Every combination of the objects' states once, with the product probability.
  assert len({tuple(s) for s in example["candidate_states"]}) == 8
  for k, combination in enumerate(example["candidate_states"]):
    expected = np.zeros(states.shape[:2], bool)
    for o, s in enumerate(combination):
      expected |= states[:, :, o, s]
    np.testing.assert_array_equal(example["candidates"][..., k], expected)
    np.testing.assert_allclose(example["candidate_probs"][k],
                               np.prod([d.state_probs[o, s] for o, s in enumerate(combination)]),
                               rtol=1e-6)
  np.testing.assert_array_equal(example["masks"],
                                example["candidates"][..., example["grader_candidates"]])


@pytest.mark.parametrize("size", [32, 64])
def test_objects_sit_in_their_own_quadrants_and_latent_cells(size):
  d = synthetic.ObjectsDefinition.for_image_size(size)
  half = size // 2
  # The 2x2 latent of a 6-level (32x32) or 7-level (64x64) model: one cell per quadrant.
  levels = 6 if size == 32 else 7
  config = HPUNetConfig(channels_per_block=(4,) * levels, latent_dims=(1, 1))
  assert config.latent_shapes(size, size)[1][:2] == (2, 2)
  for index in range(40):
    example = synthetic.generate_objects_example(d, 0, "test", index)
    regions = example["object_regions"].astype(bool)
    states = example["object_states"].astype(bool)
    image = example["image"][..., 0] / 255
    for o, (kind, _) in enumerate(d.factors):
      top, left = (o // 2) * half, (o % 2) * half
      assert regions[top:top + half, left:left + half, o].all() and regions[..., o].sum() == half ** 2
      # Every state mask, and the object's halo, lie inside the region.
      assert not (states[:, :, o] & ~regions[..., o, None]).any()
      cy, cx = example["centres"][o]
      extent = example["radii"][o] + d.halo_width
      assert top + extent <= cy <= top + half - 1 - extent
      assert left + extent <= cx <= left + half - 1 - extent
      first, second = states[:, :, o, 0], states[:, :, o, 1]
      if kind == "presence":
        assert not first.any() and second.any()
      else:
        assert first.any() and (first <= second).all() and first.sum() < 0.7 * second.sum()
      # The core of each object is bright whatever its factor.
      assert image[cy - 1:cy + 2, cx - 1:cx + 2].mean() > 0.8
    assert image[half:, half:].mean() < 0.25   # The fourth quadrant is background.


def test_generation_is_deterministic_and_the_image_ignores_the_states():
  d = synthetic.ObjectsDefinition()
  a = synthetic.generate_objects_example(d, 0, "train", 7)
  b = synthetic.generate_objects_example(d, 0, "train", 7)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  for other in [(1, "train", 7), (0, "validation", 7), (0, "train", 8)]:
    assert not np.array_equal(a["image"], synthetic.generate_objects_example(d, *other)["image"])
  # The state probabilities are the same for every image, and the graders'
  # states are independent of what the image shows (here: each object's radius).
  examples = [synthetic.generate_objects_example(d, 1, "train", i) for i in range(600)]
  for e in examples:
    np.testing.assert_allclose(e["object_state_probs"], d.state_probs, rtol=1e-6)
  radii = np.stack([e["radii"] for e in examples])                       # [n, O]
  grader_states = np.stack([e["candidate_states"][e["grader_candidates"][0]] for e in examples])
  for o in range(d.num_objects):
    table = np.zeros((2, 2))
    for r, s in zip(radii[:, o], grader_states[:, o]):
      table[r - d.min_radius, s] += 1
    assert stats.chi2_contingency(table).pvalue > 1e-4, table


def test_graders_follow_the_product_distribution():
  d = synthetic.ObjectsDefinition()
  draws = np.concatenate([synthetic.generate_objects_example(d, 3, "train", i)["grader_candidates"]
                          for i in range(1500)])
  counts = np.bincount(draws, minlength=8)
  assert stats.chisquare(counts, d.candidate_probs * len(draws)).pvalue > 1e-4, counts


def test_builder_stores_the_generated_examples(tmp_path):
  config = synthetic.SyntheticObjectsConfig(name="tiny", num_train=6, num_validation=2,
                                            num_test=2)
  builder = synthetic.SyntheticObjects(config=config, data_dir=tmp_path,
                                       file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source(split="validation")
  definition = builder.builder_config.definition
  for index in range(2):
    expected = synthetic.generate_objects_example(definition, 0, "validation", index)
    stored = source[index]
    assert set(stored) == set(expected)
    for key in expected:
      np.testing.assert_array_equal(stored[key], expected[key])
