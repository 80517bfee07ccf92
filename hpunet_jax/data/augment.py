"""Spatial augmentation on the accelerator, inside the jitted train step.

The Prob. U-Net paper's LIDC appendix (Kohl et al. 2018, arXiv 1806.05034)
lists random elastic deformation, rotation, shearing, scaling and a randomly
translated crop; the HPU-Net (arXiv 1905.13077) trained on the same 180x180
crops cut to 128x128, reportedly with DeepMind's `multidim-image-augmentation`,
and the release's `loss(seg, img, mask)` takes the mask of pixels that
augmentation did not bring in from outside the image. This module does the
same on device:

  source position = centre + translation + A @ (u + elastic(u)),
  A = rotation(angle) @ diag(scale) @ shear,

for every output pixel `u` (centred coordinates of the `crop_size` crop), as
`multidim-image-augmentation`'s `create_2d_deformation_field` composes it:
normal displacements on a coarse control grid, interpolated to a dense field,
then the affine map and the crop offset. The one coordinate field is sampled
once with `jax.scipy.ndimage.map_coordinates`: linearly for the image,
nearest-neighbour for the one-hot segmentation (so it stays one-hot), and the
validity mask is 1 where the position lies inside the source image.

Why `jax.scipy.ndimage` (plus `jax.image.resize` for the control grid) and
not dm-pix: `pix.elastic_deformation` and `pix.affine_transform` each resample
the image, so chaining them with the crop would interpolate it two or three
times (blurring it) and neither reports which pixels came from outside the
source, which the loss mask needs. dm-pix's elastic field is also Simard's
blurred per-pixel noise (`alpha`, `sigma`), not the control-grid field whose
parameters `multidim-image-augmentation` documents. Composing the transforms
into one coordinate field and sampling once avoids all three problems with the
same primitive dm-pix itself falls back on.

Randomness: every parameter is drawn from one key with the *global* batch
shape (`[B]`, `[B, g, g, 2]`), so under `jit` with a sharded batch the values
do not depend on the number of devices or processes (partitionable threefry).

Config group `data.augment` (see `default_config`; sources in the comments
there): `enabled`, `max_rotation_degrees`, `min_scale`, `max_scale`,
`max_shear`, `max_translation`, `elastic_stddev`, `elastic_spacing`.
"""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

# `fold_in(step_key, AUGMENT_STREAM)` is the augmentation's key; the loss
# splits the step key itself, so the two streams never share bits.
AUGMENT_STREAM = 0x617567  # "aug"


def default_config():
  """The `data.augment` group, off; `configs/lidc.py` turns it on."""
  return ml_collections.ConfigDict(dict(
      enabled=False,
      # multidim-image-augmentation's documentation colab
      # (doc/elastic_deformation_colab.md): rotation
      # `vectorized_random_uniform(-pi/9, pi/9)`, i.e. +-20 degrees.
      max_rotation_degrees=20.0,
      # Same colab: scale factors `vectorized_random_uniform([.8, .8], [1.2, 1.2])`,
      # drawn per axis.
      min_scale=0.8,
      max_scale=1.2,
      # Same colab: shearing coefficients `vectorized_random_uniform([-.1, -.1], [.1, .1])`.
      max_shear=0.1,
      # The randomly translated crop (both papers): None = (source - crop) / 2
      # per axis, i.e. 26 px for 180 -> 128, so that before the other
      # transforms the crop lies inside the source image.
      max_translation=ml_collections.FieldReference(None, field_type=float),
      # Elastic deformation: the colab shows a 15 px standard deviation on a
      # 101 px control grid for a 241x321 photo; no source gives LIDC's values.
      # Conservative choice: a 32 px grid (4 cells over 128) and 3 px, a smaller
      # displacement-to-spacing ratio (0.09) than the colab's (0.15).
      elastic_stddev=3.0,
      elastic_spacing=32,
  ))


def enabled(data_config) -> bool:
  augment = data_config.get("augment")
  return bool(augment is not None and augment.get("enabled", False))


def validate_config(data_config):
  """Raises ValueError naming the `data.augment.*` field that is wrong."""
  if not enabled(data_config):
    return
  a = data_config.augment
  if data_config.get("crop_size") is None:
    raise ValueError("data.augment.enabled=True needs data.crop_size (the size of the "
                     "augmented crop, e.g. 128)")
  if data_config.get("random_crop"):
    raise ValueError("data.random_crop=True and data.augment.enabled=True: the augmentation "
                     "does the translated crop on device; set data.random_crop=False")
  def need(ok, field, what):
    if not ok:
      raise ValueError(f"data.augment.{field}={a.get(field)!r}: need {what}")
  need(isinstance(a.max_rotation_degrees, (int, float)) and 0 <= a.max_rotation_degrees <= 180,
       "max_rotation_degrees", "a number in [0, 180]")
  need(isinstance(a.min_scale, (int, float)) and a.min_scale > 0, "min_scale", "a number > 0")
  need(isinstance(a.max_scale, (int, float)) and a.max_scale >= a.min_scale, "max_scale",
       f"a number >= data.augment.min_scale ({a.min_scale})")
  need(isinstance(a.max_shear, (int, float)) and 0 <= a.max_shear < 1, "max_shear",
       "a number in [0, 1)")
  need(a.max_translation is None or (isinstance(a.max_translation, (int, float)) and
                                     a.max_translation >= 0),
       "max_translation", "None or a number >= 0")
  need(isinstance(a.elastic_stddev, (int, float)) and a.elastic_stddev >= 0, "elastic_stddev",
       "a number >= 0 (pixels)")
  need(isinstance(a.elastic_spacing, int) and a.elastic_spacing > 0, "elastic_spacing",
       "a positive int (pixels)")


def output_spec(data_config, batch):
  """Shapes of what the model sees: `batch`'s spatial size replaced by the crop.

  Args:
    data_config: the `data` group.
    batch: dict with `image` `[B, H, W, C]` and `segmentation` `[B, H, W, K]`
      (arrays or `jax.ShapeDtypeStruct`s).

  Returns:
    The batch unchanged when augmentation is off; otherwise a dict of
    `jax.ShapeDtypeStruct`s `image` `[B, S, S, C]`, `segmentation`
    `[B, S, S, K]` and `mask` `[B, S, S]`, S = `data.crop_size`.
  """
  if not enabled(data_config):
    return batch
  size = data_config.crop_size
  image, seg = batch["image"], batch["segmentation"]
  lead = (image.shape[0], size, size)
  return {"image": jax.ShapeDtypeStruct(lead + tuple(image.shape[3:]), jnp.float32),
          "segmentation": jax.ShapeDtypeStruct(lead + tuple(seg.shape[3:]), jnp.float32),
          "mask": jax.ShapeDtypeStruct(lead, jnp.float32)}


def _control_grid_size(crop_size, spacing):
  # Cells covering the crop plus one control point beyond each border, so the
  # cubic interpolation has no border effects (as multidim's control grid).
  return int(math.ceil(crop_size / spacing)) + 2


def sample_coordinates(rng, batch_size, source_shape, crop_size, augment_config):
  """Source positions `[B, S, S, 2]` (row, column) of every output pixel.

  Args:
    rng: the augmentation key.
    batch_size: B, the *global* batch size.
    source_shape: `(H, W)` of the source images.
    crop_size: S.
    augment_config: the `data.augment` group.
  """
  a = augment_config
  height, width = source_shape
  if crop_size > min(height, width):
    raise ValueError(f"data.crop_size={crop_size} is larger than the {height}x{width} images "
                     "to augment")
  k_rot, k_scale, k_shear, k_shift, k_elastic = jax.random.split(rng, 5)
  shape = (batch_size,)
  angle = jnp.deg2rad(jax.random.uniform(k_rot, shape, minval=-a.max_rotation_degrees,
                                         maxval=a.max_rotation_degrees))
  scale = jax.random.uniform(k_scale, shape + (2,), minval=a.min_scale, maxval=a.max_scale)
  shear = jax.random.uniform(k_shear, shape + (2,), minval=-a.max_shear, maxval=a.max_shear)
  max_shift = np.array([(height - crop_size) / 2, (width - crop_size) / 2], np.float32)
  if a.max_translation is not None:
    max_shift = np.full((2,), a.max_translation, np.float32)
  shift = jax.random.uniform(k_shift, shape + (2,), minval=-max_shift, maxval=max_shift)

  # Output pixels in centred coordinates, [S, S, 2].
  axis = jnp.arange(crop_size, dtype=jnp.float32) - (crop_size - 1) / 2
  grid = jnp.stack(jnp.meshgrid(axis, axis, indexing="ij"), axis=-1)
  grid = jnp.broadcast_to(grid, shape + grid.shape)

  if a.elastic_stddev > 0:
    cells = _control_grid_size(crop_size, a.elastic_spacing)
    control = a.elastic_stddev * jax.random.normal(k_elastic, shape + (cells, cells, 2))
    dense_size = cells * a.elastic_spacing
    dense = jax.image.resize(control, shape + (dense_size, dense_size, 2), method="cubic")
    start = (dense_size - crop_size) // 2
    grid = grid + dense[:, start:start + crop_size, start:start + crop_size]

  cos, sin = jnp.cos(angle), jnp.sin(angle)
  rotation = jnp.stack([jnp.stack([cos, -sin], -1), jnp.stack([sin, cos], -1)], -2)
  shearing = jnp.stack([jnp.stack([jnp.ones_like(angle), shear[:, 0]], -1),
                        jnp.stack([shear[:, 1], jnp.ones_like(angle)], -1)], -2)
  affine = rotation @ (scale[:, :, None] * shearing)                   # [B, 2, 2]
  centre = jnp.array([(height - 1) / 2, (width - 1) / 2], jnp.float32)
  return jnp.einsum("bij,bhwj->bhwi", affine, grid) + (centre + shift)[:, None, None, :]


def _resample(channel, coordinates, order):
  """`channel` `[H, W]` at `coordinates` `[S, S, 2]`."""
  mode = "constant" if order == 1 else "nearest"
  return jax.scipy.ndimage.map_coordinates(
      channel, [coordinates[..., 0], coordinates[..., 1]], order=order, mode=mode, cval=0.0)


def apply(coordinates, image, segmentation):
  """Samples one batch at `coordinates`.

  Args:
    coordinates: `[B, S, S, 2]` source positions (`sample_coordinates`).
    image: `[B, H, W, C]`, interpolated linearly (zero outside the source).
    segmentation: one-hot `[B, H, W, K]`, nearest neighbour (stays one-hot).

  Returns:
    `(image [B, S, S, C], segmentation [B, S, S, K], mask [B, S, S])`, the
    mask 1.0 where the position lies inside the source image.
  """
  per_channel = jax.vmap(_resample, in_axes=(-1, None, None), out_axes=-1)
  per_example = jax.vmap(per_channel, in_axes=(0, 0, None))
  out_image = per_example(image, coordinates, 1)
  out_seg = per_example(segmentation, coordinates, 0)
  height, width = image.shape[1:3]
  rows, cols = coordinates[..., 0], coordinates[..., 1]
  inside = (rows >= 0) & (rows <= height - 1) & (cols >= 0) & (cols <= width - 1)
  return out_image, out_seg, inside.astype(jnp.float32)


def augment_batch(rng, batch, data_config):
  """The augmented global batch: `image`, `segmentation` and the validity `mask`.

  Args:
    rng: the augmentation key (`fold_in(step_key, AUGMENT_STREAM)`).
    batch: dict with `image` float `[B, H, W, C]` and one-hot `segmentation`
      `[B, H, W, K]` (the pipeline's uncropped examples).
    data_config: the `data` group (`crop_size` and `augment`).
  """
  image, seg = batch["image"], batch["segmentation"]
  coordinates = sample_coordinates(rng, image.shape[0], image.shape[1:3],
                                   data_config.crop_size, data_config.augment)
  out_image, out_seg, mask = apply(coordinates, image.astype(jnp.float32),
                                   seg.astype(jnp.float32))
  return {**batch, "image": out_image, "segmentation": out_seg, "mask": mask}
