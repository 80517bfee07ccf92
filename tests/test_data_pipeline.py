"""Tests of the grain input pipeline (synthetic `small` data, fake data, tiny in-memory sources)."""
import json

import numpy as np
import pytest
from scipy import stats
import tensorflow_datasets as tfds

from hpunet_jax.data import pipeline
from hpunet_jax.data import synthetic

tfds.disable_progress_bar()


@pytest.fixture(scope="module")
def small_config(synthetic_data_dir):
  """`synthetic_multiscale/small` (32x32; 256 / 32 / 32 examples), prepared once a session."""
  config = pipeline.default_config()
  config.name = "synthetic_multiscale/small"
  config.data_dir = synthetic_data_dir
  config.read_threads = 2
  pipeline.prepare(config)   # finds it prepared
  return config


def fake_config(image_size=12, num_channels=1, **overrides):
  config = pipeline.default_config()
  config.name = "fake"
  config.image_size = image_size
  config.num_channels = num_channels
  config.num_graders = 4
  config.read_threads = 0
  config.update(overrides)
  return config


def take(iterator, n):
  return [next(iterator) for _ in range(n)]


def test_train_batches_shapes_and_dtypes(small_config):
  config = small_config.copy_and_resolve_references()
  config.crop_size = 24
  config.random_crop = True
  config.random_flip = True
  batch = next(pipeline.make_train_iterator(
      config, global_batch_size=8, seed=0, process_index=0, process_count=1))
  assert set(batch) == {"image", "segmentation"}
  assert batch["image"].shape == (8, 24, 24, 1) and batch["image"].dtype == np.float32
  assert batch["segmentation"].shape == (8, 24, 24, 2)
  assert batch["segmentation"].dtype == np.float32
  np.testing.assert_array_equal(batch["segmentation"].sum(-1), 1.0)
  assert set(np.unique(batch["segmentation"])) <= {0.0, 1.0}
  assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


@pytest.mark.parametrize("augment", [False, True])
def test_process_shards_concatenate_to_the_global_batch(small_config, augment):
  config = small_config.copy_and_resolve_references()
  config.crop_size = 24 if augment else None
  config.random_crop = augment
  config.random_flip = augment
  steps, global_batch = 40, 8  # 40 * 8 = 320 > 256: crosses an epoch boundary.

  def batches(process_index, process_count):
    return take(pipeline.make_train_iterator(
        config, global_batch_size=global_batch, seed=5, process_index=process_index,
        process_count=process_count), steps)

  single = batches(0, 1)
  for process_count in (2, 4):
    shards = [batches(p, process_count) for p in range(process_count)]
    for step in range(steps):
      for key in ("image", "segmentation"):
        np.testing.assert_array_equal(
            np.concatenate([shard[step][key] for shard in shards]), single[step][key])


def test_global_batch_size_must_divide(small_config):
  with pytest.raises(ValueError, match="train.batch_size=6"):
    pipeline.make_train_iterator(small_config, global_batch_size=6, seed=0, process_index=0,
                                 process_count=4)


@pytest.mark.parametrize("use_fake", [False, True])
def test_state_restore_yields_the_same_batches(small_config, use_fake):
  config = fake_config(crop_size=8, random_crop=True, random_flip=True) if use_fake else small_config
  make = lambda: pipeline.make_train_iterator(
      config, global_batch_size=4, seed=1, process_index=1, process_count=2)
  iterator = make()
  take(iterator, 3)
  state = json.loads(json.dumps(iterator.get_state()))
  expected = take(iterator, 3)
  restored = make()
  restored.set_state(state)
  for want, got in zip(expected, take(restored, 3)):
    for key in want:
      np.testing.assert_array_equal(want[key], got[key])


def _indexed_source(num_examples, size=6):
  """Example i's image holds i; grader k's mask marks only pixel (0, k)."""
  masks = np.zeros((size, size, 4), np.uint8)
  masks[0, np.arange(4), np.arange(4)] = 1
  return [{"image": np.full((size, size, 1), i, np.uint8), "masks": masks}
          for i in range(num_examples)]


def _example_ids(batch):
  return np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)


def _graders(batch):
  return np.argmax(batch["segmentation"][:, 0, :4, 1], axis=-1)


def test_every_epoch_is_a_new_permutation():
  dataset = pipeline.train_dataset(_indexed_source(20), seed=0, local_batch_size=5,
                                   process_index=0, process_count=1)
  ids = np.concatenate([_example_ids(dataset[t]) for t in range(8)]).reshape(2, 20)
  assert sorted(ids[0]) == sorted(ids[1]) == list(range(20))
  assert not np.array_equal(ids[0], ids[1])


def test_each_grader_is_chosen_a_quarter_of_the_time():
  dataset = pipeline.train_dataset(_indexed_source(50), seed=3, local_batch_size=50,
                                   process_index=0, process_count=1)
  batches = [dataset[t] for t in range(40)]  # 40 epochs of 50 examples.
  graders = np.stack([_graders(b) for b in batches])
  counts = np.bincount(graders.ravel(), minlength=4)
  assert stats.chisquare(counts).pvalue > 1e-4, counts
  # Drawn per example and step: one example gets different graders across epochs.
  ids = np.stack([_example_ids(b) for b in batches])
  graders_of_example_0 = graders[ids == 0]
  assert len(set(graders_of_example_0.tolist())) > 1


def test_eval_iterator_on_synthetic(small_config):
  batches = list(pipeline.make_eval_iterator(small_config, "validation", batch_size=10))
  assert [len(b["image"]) for b in batches] == [10, 10, 10, 2]
  first = batches[0]
  assert first["image"].shape == (10, 32, 32, 1) and first["image"].dtype == np.float32
  assert first["masks"].shape == (10, 32, 32, 4)
  assert first["candidates"].shape == (10, 4, 32, 32)
  np.testing.assert_allclose(first["candidate_probs"],
                             np.tile(synthetic.MultiscaleDefinition().candidate_probs, (10, 1)))
  # Every grader's mask is one of the example's candidates.
  for i in range(10):
    for m in range(4):
      assert any(np.array_equal(first["masks"][i, ..., m], first["candidates"][i, k])
                 for k in range(4))
  again = next(pipeline.make_eval_iterator(small_config, "validation", batch_size=10))
  np.testing.assert_array_equal(again["image"], first["image"])
  limited = list(pipeline.make_eval_iterator(small_config, "test", batch_size=4, num_examples=6))
  assert [len(b["image"]) for b in limited] == [4, 2]
  assert pipeline.num_examples(small_config, "train") == 256


def test_data_image_size_is_checked_against_the_dataset(small_config):
  config = small_config.copy_and_resolve_references()
  config.image_size = 64
  with pytest.raises(ValueError, match="data.image_size"):
    pipeline.prepare(config)


def test_fake_data_and_lidc_centre_crop():
  config = fake_config(image_size=180, num_channels=3, crop_size=128)
  pipeline.prepare(config)  # A no-op.
  batch = next(pipeline.make_train_iterator(
      config, global_batch_size=2, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (2, 128, 128, 3)
  assert batch["segmentation"].shape == (2, 128, 128, 2)
  evaluation = next(pipeline.make_eval_iterator(config, "test", batch_size=3))
  assert evaluation["masks"].shape == (3, 128, 128, 4) and "candidates" not in evaluation
  source = pipeline.FakeSource((180, 180), 3, 4, "test")
  np.testing.assert_allclose(evaluation["image"][1], source[1]["image"][26:-26, 26:-26] / 255,
                             rtol=1e-6)
  assert pipeline.num_examples(config, "test") == pipeline.FAKE_NUM_EXAMPLES


def test_config_errors_name_the_field():
  with pytest.raises(ValueError, match="data.image_size"):
    pipeline.validate_config(fake_config(image_size=None))
  with pytest.raises(ValueError, match="data.crop_size"):
    pipeline.validate_config(fake_config(image_size=12, crop_size=16))
  with pytest.raises(ValueError, match="data.random_crop"):
    pipeline.validate_config(fake_config(random_crop=True))
  with pytest.raises(ValueError, match="data.name='nope'"):
    pipeline.prepare(fake_config(name="nope"))


def test_workers_that_do_not_see_the_prepared_data_stop_naming_data_dir(tmp_path, monkeypatch):
  """Process 1 of 2, on a host whose (local) data_dir lacks what process 0 prepared."""
  import jax  # pylint: disable=g-import-not-at-top
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  config = pipeline.default_config()
  config.name = "synthetic_multiscale/small"
  config.data_dir = str(tmp_path / "tfds_on_this_host")
  monkeypatch.setattr(jax, "process_count", lambda: 2)
  monkeypatch.setattr(jax, "process_index", lambda: 1)
  # Process 0 prepared it fine (True); this process answers for itself.
  monkeypatch.setattr(multihost_utils, "process_allgather",
                      lambda x: np.stack([np.asarray(True), np.asarray(x)]))
  with pytest.raises(ValueError, match=r"data\.data_dir=.*tfds_on_this_host.*processes \[1\].*"
                                       r"local to each host.*--config\.data\.data_dir"):
    pipeline.prepare_on_all_processes(config)
  assert not (tmp_path / "tfds_on_this_host").exists() or not any(
      (tmp_path / "tfds_on_this_host").rglob("*.array_record*"))   # process 1 built nothing


def test_object_store_data_dir_is_read_through_a_local_mirror():
  config = pipeline.default_config()
  config.data_dir = "gs://bucket/tfds"
  mirror = pipeline._local_data_dir(config)  # pylint: disable=protected-access
  assert "://" not in mirror and "bucket" in mirror
  config.data_dir = "/shared/tfds"
  assert pipeline._local_data_dir(config) == "/shared/tfds"  # pylint: disable=protected-access


def test_a_dataset_another_job_finished_first_is_used(tmp_path, monkeypatch):
  """Two runs started at once on a fresh machine build the same dataset; the slower one's
  final rename meets the other's folder and must read that one, not fail."""
  config = pipeline.default_config()
  config.name = "synthetic_multiscale/small"
  config.data_dir = str(tmp_path)
  real_builder = pipeline._builder
  calls = []

  def builder_that_loses_the_race(data_config):
    builder = real_builder(data_config)
    if not calls:
      calls.append(1)
      own_generation = builder._download_and_prepare

      def other_job_finishes_meanwhile(*args, **kwargs):
        real_builder(data_config).download_and_prepare()   # the other job, done first
        return own_generation(*args, **kwargs)             # then tfds' rename fails
      builder._download_and_prepare = other_job_finishes_meanwhile
    return builder

  monkeypatch.setattr(pipeline, "_builder", builder_that_loses_the_race)
  pipeline.prepare(config)
  monkeypatch.setattr(pipeline, "_builder", real_builder)
  assert real_builder(config).is_prepared()
  batch = next(pipeline.make_train_iterator(
      config, global_batch_size=4, seed=0, process_index=0, process_count=1))
  assert batch["image"].shape == (4, 32, 32, 1)
  assert not list(tmp_path.rglob("*incomplete*"))
