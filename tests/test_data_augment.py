"""Tests of the on-device augmentation: geometry, interpolation, validity mask, config."""
import jax
import ml_collections
import numpy as np
import pytest

from hpunet_jax.data import augment, pipeline


def data_config(crop_size=20, **augment_fields):
  config = pipeline.default_config()
  config.name = pipeline.FAKE
  config.image_size = 36
  config.crop_size = crop_size
  config.augment.enabled = True
  config.augment.elastic_spacing = 8
  for key, value in augment_fields.items():
    config.augment[key] = value
  return config


IDENTITY = dict(max_rotation_degrees=0.0, min_scale=1.0, max_scale=1.0, max_shear=0.0,
                max_translation=0.0, elastic_stddev=0.0)


def _batch(size=36, n=4, seed=0):
  rng = np.random.default_rng(seed)
  image = rng.random((n, size, size, 2)).astype(np.float32)
  labels = rng.random((n, size, size)) > 0.6
  return {"image": image, "segmentation": np.eye(2, dtype=np.float32)[labels.astype(np.int64)]}


def test_without_transforms_it_is_the_centre_crop():
  batch = _batch()
  out = augment.augment_batch(jax.random.key(0), batch, data_config(**IDENTITY))
  np.testing.assert_array_equal(out["image"], batch["image"][:, 8:28, 8:28])
  np.testing.assert_array_equal(out["segmentation"], batch["segmentation"][:, 8:28, 8:28])
  np.testing.assert_array_equal(out["mask"], np.ones((4, 20, 20)))


def test_zoom_out_marks_exactly_the_pixels_from_outside():
  """Scale 2 maps the 20 px crop onto 40 px of a 36 px source: the border is invalid."""
  config = data_config(**{**IDENTITY, "min_scale": 2.0, "max_scale": 2.0})
  out = augment.augment_batch(jax.random.key(0), _batch(), config)
  centred = np.arange(20) - 9.5
  source = 17.5 + 2 * centred                               # source row/column of each pixel
  inside_1d = (source >= 0) & (source <= 35)
  np.testing.assert_array_equal(out["mask"][0], np.outer(inside_1d, inside_1d).astype(np.float32))
  assert 0 < out["mask"].mean() < 1


def test_image_is_interpolated_linearly_and_masks_by_nearest_neighbour():
  """With every transform on: a ramp image reads back its source coordinates, and the
  segmentation is the source pixel nearest to them (still one-hot)."""
  config = data_config(elastic_stddev=2.0)
  rng = jax.random.key(3)
  rows, cols = np.meshgrid(np.arange(36.0), np.arange(36.0), indexing="ij")
  labels = np.random.default_rng(1).random((4, 36, 36)) > 0.5
  batch = {"image": np.broadcast_to(np.stack([rows, cols], -1), (4, 36, 36, 2)).astype(np.float32),
           "segmentation": np.eye(2, dtype=np.float32)[labels.astype(np.int64)]}
  out = augment.augment_batch(rng, batch, config)
  coords = np.asarray(augment.sample_coordinates(rng, 4, (36, 36), 20, config.augment))
  valid = np.asarray(out["mask"]) > 0
  inside = ((coords >= 0) & (coords <= 35)).all(-1)
  np.testing.assert_array_equal(valid, inside)
  assert 0.3 < valid.mean() < 1.0                    # the transforms did move pixels outside
  np.testing.assert_allclose(np.asarray(out["image"])[valid], coords[valid], atol=1e-3)
  far = ((coords <= -1) | (coords >= 36)).any(-1)      # no source pixel within reach
  assert far.any()
  np.testing.assert_array_equal(np.asarray(out["image"])[far], 0.0)   # zero outside
  nearest = np.clip(np.floor(coords + 0.5).astype(int), 0, 35)
  b = np.arange(4)[:, None, None]
  np.testing.assert_array_equal(np.asarray(out["segmentation"])[..., 1],
                                labels[b, nearest[..., 0], nearest[..., 1]])
  np.testing.assert_array_equal(np.asarray(out["segmentation"]).sum(-1), 1.0)


def test_each_example_gets_its_own_transform_and_the_key_decides():
  config = data_config()
  batch = _batch()
  batch["image"][:] = batch["image"][:1]              # four copies of one example
  a = augment.augment_batch(jax.random.key(0), batch, config)
  b = augment.augment_batch(jax.random.key(0), batch, config)
  c = augment.augment_batch(jax.random.key(1), batch, config)
  np.testing.assert_array_equal(a["image"], b["image"])
  assert not np.allclose(a["image"], c["image"])
  assert not np.allclose(a["image"][0], a["image"][1])


def test_elastic_field_is_smooth_with_the_configured_size():
  config = data_config(crop_size=64, **{**IDENTITY, "elastic_stddev": 3.0})
  coords = np.asarray(augment.sample_coordinates(jax.random.key(0), 16, (80, 80), 64,
                                                 config.augment))
  identity = np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0), indexing="ij"), -1) + 8
  displacement = coords - identity
  assert 1.5 < displacement.std() < 4.5, displacement.std()
  step = np.abs(np.diff(displacement, axis=1)).mean()
  assert step < 0.2 * displacement.std(), step       # neighbours move together


def test_ranges_are_respected():
  """Rotation, scale, shear and translation stay in their ranges: corners of the crop
  land where the extreme transforms would put them, never further."""
  config = data_config(crop_size=20, elastic_stddev=0.0)
  coords = np.asarray(augment.sample_coordinates(jax.random.key(0), 256, (36, 36), 20,
                                                 config.augment))
  centre_shift = coords[:, 9:11, 9:11].mean(axis=(1, 2)) - 17.5
  assert np.abs(centre_shift).max() <= 8.0 + 1e-4     # (36 - 20) / 2
  assert np.abs(centre_shift).max() > 6.0
  corner = np.linalg.norm(coords[:, 0, 0] - coords[:, 19, 19], axis=-1)   # diagonal length
  nominal = 19 * np.sqrt(2)
  assert corner.min() > nominal * 0.8 * (1 - 0.1) - 1e-3
  assert corner.max() < nominal * 1.2 * (1 + 0.1) + 1e-3


def test_output_spec_gives_the_model_crop():
  config = data_config()
  spec = augment.output_spec(config, _batch())
  assert spec["image"].shape == (4, 20, 20, 2) and spec["segmentation"].shape == (4, 20, 20, 2)
  assert spec["mask"].shape == (4, 20, 20)
  config.augment.enabled = False
  batch = _batch()
  assert augment.output_spec(config, batch) is batch


@pytest.mark.parametrize("field, value, named", [
    ("min_scale", 0.0, "data.augment.min_scale"),
    ("max_scale", 0.5, "data.augment.max_scale"),
    ("max_rotation_degrees", -1.0, "data.augment.max_rotation_degrees"),
    ("max_shear", 1.5, "data.augment.max_shear"),
    ("elastic_stddev", -1.0, "data.augment.elastic_stddev"),
    ("elastic_spacing", 0, "data.augment.elastic_spacing"),
    ("max_translation", -2.0, "data.augment.max_translation"),
])
def test_bad_ranges_name_the_field(field, value, named):
  config = data_config(**{field: value})
  with pytest.raises(ValueError, match=named.replace(".", r"\.")):
    pipeline.validate_config(config)


def test_augmentation_needs_a_crop_size_and_no_host_random_crop():
  config = data_config()
  config.crop_size = None
  with pytest.raises(ValueError, match=r"data\.crop_size"):
    pipeline.validate_config(config)
  config = data_config()
  config.random_crop = True
  with pytest.raises(ValueError, match=r"data\.random_crop"):
    pipeline.validate_config(config)


def test_pipeline_delivers_uncropped_examples_when_augmenting():
  config = data_config()
  batch = next(pipeline.make_train_iterator(config, global_batch_size=4, seed=0,
                                            process_index=0, process_count=1))
  assert batch["image"].shape == (4, 36, 36, 1)
  config.augment.enabled = False
  batch = next(pipeline.make_train_iterator(config, global_batch_size=4, seed=0,
                                            process_index=0, process_count=1))
  assert batch["image"].shape == (4, 20, 20, 1)


@pytest.mark.slow
def test_train_step_augments_and_reports_the_valid_fraction():
  import hpunet_jax
  from conftest import tiny_config
  config = tiny_config(latent_dims=(1,), convs_per_block=1)
  config.data = data_config(crop_size=16)
  config.train.batch_size = 4
  batch = _batch(size=36)
  batch["image"] = batch["image"][..., :1]
  state = hpunet_jax.create_train_state(config, 0, batch)   # uncropped examples are fine
  step = hpunet_jax.make_train_step(config)
  state, metrics = step(state, batch)
  assert 0.5 < float(metrics["augment_valid_fraction"]) <= 1.0
  assert np.isfinite(float(metrics["loss"]))
  # A step built for the same model without augmentation is a different program.
  config.data.augment.enabled = False
  assert hpunet_jax.make_train_step(config) is not step


def test_lidc_config_turns_augmentation_on_with_its_defaults():
  from configs import lidc
  config = lidc.get_config()
  assert config.data.augment.enabled and config.data.crop_size == 128
  assert not config.data.random_crop
  assert config.data.augment.to_dict() == {**augment.default_config().to_dict(), "enabled": True}
  pipeline.validate_config(config.data)
  assert isinstance(config.data.augment, ml_collections.ConfigDict)


def test_augmentation_figure_draws_one_row_per_example():
  from experiments import augmentation_figure
  figure = augmentation_figure.draw(num_examples=2)
  gap, label = augmentation_figure.GAP, augmentation_figure.LABEL_HEIGHT
  assert figure.shape == (label + 2 * (180 + gap), 180 + 6 * 128 + 8 * gap, 3)
  assert figure.dtype == np.uint8
