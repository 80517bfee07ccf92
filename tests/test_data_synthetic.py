"""Tests of the `synthetic_multiscale` definition, generator and builder."""
import hashlib
import logging

import numpy as np
import pytest
from scipy import stats
import tensorflow_datasets as tfds

from hpunet_jax.data import synthetic

tfds.disable_progress_bar()


def test_default_definition_is_the_documented_one():
  d = synthetic.MultiscaleDefinition()
  assert d == synthetic.MultiscaleDefinition.for_image_size(64)
  assert (d.image_size, d.min_radius, d.max_radius, d.halo_width) == (64, 6, 10, 7)
  assert d.candidate_offsets == (0, 3, 6)
  np.testing.assert_allclose(d.candidate_probs, [0.3, 0.35, 0.21, 0.14])
  small = synthetic.MultiscaleDefinition.for_image_size(32)
  assert (small.min_radius, small.max_radius, small.candidate_offsets, small.halo_width) == (
      3, 5, (0, 2, 4), 5)
  with pytest.raises(ValueError, match="image_size=16"):
    synthetic.MultiscaleDefinition.for_image_size(16)


def _iou(a, b):
  return np.logical_and(a, b).sum() / np.logical_or(a, b).sum()


@pytest.mark.parametrize("size", [32, 64])
def test_candidates_are_distinct_discs(size):
  definition = synthetic.MultiscaleDefinition.for_image_size(size)
  radii = set()
  for index in range(60):
    example = synthetic.generate_example(definition, 0, "train", index)
    candidates = example["candidates"].astype(bool)
    radii.add(int(example["radius"]))
    assert not candidates[..., 0].any()
    for i in range(1, 4):
      for j in range(i + 1, 4):
        assert _iou(candidates[..., i], candidates[..., j]) < 0.8
    # Graders' masks are the candidates they drew.
    np.testing.assert_array_equal(example["masks"],
                                  example["candidates"][..., example["grader_candidates"]])
    # The object, halo included, is inside the image.
    cy, cx, r = int(example["centre_y"]), int(example["centre_x"]), int(example["radius"])
    extent = r + definition.halo_width
    assert extent <= cy <= size - 1 - extent and extent <= cx <= size - 1 - extent
    # The image is bright where the tight disc is, dark far away.
    image = example["image"][..., 0] / 255
    assert image[candidates[..., 1]].mean() > 0.8
    assert image[0:3, 0:3].mean() < 0.25
  assert radii == set(range(definition.min_radius, definition.max_radius + 1))


def test_generation_is_deterministic_by_seed_split_and_index():
  d = synthetic.MultiscaleDefinition.for_image_size(32)
  a = synthetic.generate_example(d, 0, "train", 7)
  b = synthetic.generate_example(d, 0, "train", 7)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  for other in [(1, "train", 7), (0, "validation", 7), (0, "train", 8)]:
    c = synthetic.generate_example(d, *other)
    assert not np.array_equal(a["image"], c["image"])


def test_graders_follow_the_candidate_probabilities():
  d = synthetic.MultiscaleDefinition.for_image_size(32)
  draws = np.concatenate([synthetic.generate_example(d, 3, "train", i)["grader_candidates"]
                          for i in range(2000)])
  counts = np.bincount(draws, minlength=4)
  expected = d.candidate_probs * len(draws)
  # 8000 draws: a correct sampler fails this 1 time in 10^4.
  assert stats.chisquare(counts, expected).pvalue > 1e-4, (counts, expected)
  # The four graders are i.i.d.: each grader position alone has the same law.
  per_grader = draws.reshape(-1, 4)
  for k in range(4):
    assert stats.chisquare(np.bincount(per_grader[:, k], minlength=4),
                           d.candidate_probs * len(per_grader)).pvalue > 1e-4


def _fingerprints(examples):
  return sorted(hashlib.sha1(e["image"].tobytes() + e["masks"].tobytes()).hexdigest()
                for e in examples)


def _build(data_dir, seed):
  config = synthetic.SyntheticMultiscaleConfig(
      name=f"tiny{seed}", image_size=32, num_train=12, num_validation=3, num_test=3, seed=seed)
  builder = synthetic.SyntheticMultiscale(config=config, data_dir=data_dir,
                                          file_format="array_record")
  builder.download_and_prepare()
  return builder


def test_builder_stores_the_generated_examples(tmp_path):
  builder = _build(tmp_path, seed=0)
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "train": 12, "validation": 3, "test": 3}
  source = builder.as_data_source(split="validation")
  example = source[0]
  assert example["image"].shape == (32, 32, 1) and example["image"].dtype == np.uint8
  assert example["masks"].shape == (32, 32, 4) and example["candidates"].shape == (32, 32, 4)
  assert example["candidate_probs"].dtype == np.float32
  assert example["grader_candidates"].dtype == np.int32
  definition = builder.builder_config.definition
  expected = [synthetic.generate_example(definition, 0, "validation", i) for i in range(3)]
  assert _fingerprints(source) == _fingerprints(expected)

  other = _build(tmp_path, seed=1)
  assert (_fingerprints(other.as_data_source(split="train"))
          != _fingerprints(builder.as_data_source(split="train")))


def test_plain_tfds_calls_build_and_read_array_record(tmp_path):
  """`tfds.builder` / `tfds.data_source` as the tfds docs teach: no file_format, no TensorFlow."""
  builder = tfds.builder("synthetic_multiscale/small", data_dir=tmp_path)
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  builder.download_and_prepare()
  assert list(tmp_path.glob("synthetic_multiscale/small/*/*.array_record-*"))
  test = tfds.data_source("synthetic_multiscale/small", data_dir=tmp_path, split="test")
  definition = synthetic.MultiscaleDefinition.for_image_size(32)
  expected = [synthetic.generate_example(definition, 0, "test", i) for i in range(32)]
  assert _fingerprints(test) == _fingerprints(expected)


def test_generation_logs_progress_with_rate_and_eta(tmp_path, caplog):
  caplog.set_level(logging.INFO)
  # absl sets its own logger to WARNING once any earlier test has parsed absl flags.
  caplog.set_level(logging.INFO, logger="absl")
  _build(tmp_path, seed=5)
  lines = [r.getMessage() for r in caplog.records
           if r.getMessage().startswith("Generating synthetic_multiscale/tiny5 train: ")]
  assert "example 1/12" in lines[0] and "first 1 examples took" in lines[0]
  assert "example 12/12 (100.0%)" in lines[-1]
  assert "examples/s" in lines[-1] and "ETA 0:00:00" in lines[-1]
