"""The `data` config group: its fields, defaults and checks (no data library imported).

`hpunet_jax.config_lib` builds the experiment config from `default_config`
without loading grain or tensorflow-datasets; `hpunet_jax.data.pipeline`
documents each field.
"""
from etils import epath
import ml_collections

from hpunet_jax.data import augment

FAKE = "fake"


def default_config():
  """The `data` config group, with the defaults this module expects."""
  return ml_collections.ConfigDict({
      "name": "synthetic_multiscale",
      "data_dir": ml_collections.FieldReference(None, field_type=str),
      "manual_dir": ml_collections.FieldReference(None, field_type=str),
      "crop_size": ml_collections.FieldReference(None, field_type=int),
      "random_crop": False,
      "random_flip": False,
      "image_size": ml_collections.FieldReference(None, field_type=object),
      "num_channels": 1,
      "num_graders": ml_collections.FieldReference(None, field_type=int),
      "read_threads": 4,
      "prefetch_batches": 4,
      "augment": augment.default_config(),
  })


def _image_size(data_config):
  """`data.image_size` as `(H, W)`, or None."""
  size = data_config.get("image_size")
  if size is None:
    return None
  size = (size, size) if isinstance(size, int) else tuple(size)
  if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
    raise ValueError(f"data.image_size={data_config.image_size!r}: need an int or (H, W)")
  return size


def validate_config(data_config):
  """Raises ValueError naming the `data.*` field that is wrong."""
  name = data_config.get("name")
  if not isinstance(name, str) or not name:
    raise ValueError(f"data.name={name!r}: need a dataset name or 'fake'")
  image_size = _image_size(data_config)
  crop_size = data_config.get("crop_size")
  if crop_size is not None:
    if not isinstance(crop_size, int) or crop_size <= 0:
      raise ValueError(f"data.crop_size={crop_size!r}: need a positive int or None")
    if image_size is not None and crop_size > min(image_size):
      raise ValueError(f"data.crop_size={crop_size} is larger than data.image_size={image_size}")
  if data_config.get("random_crop") and crop_size is None:
    raise ValueError("data.random_crop=True needs data.crop_size")
  augment.validate_config(data_config)
  num_graders = data_config.get("num_graders")
  if num_graders is not None and (not isinstance(num_graders, int) or num_graders <= 0):
    raise ValueError(f"data.num_graders={num_graders!r}: need a positive int or None")
  if name == FAKE:
    if image_size is None:
      raise ValueError("data.image_size must be set for data.name='fake'")
    if data_config.get("num_channels", 1) <= 0:
      raise ValueError(f"data.num_channels={data_config.num_channels!r}: need a positive int")
  manual_dir = data_config.get("manual_dir")
  if manual_dir is not None:
    if not epath.Path(manual_dir).is_dir():
      raise ValueError(f"data.manual_dir={manual_dir!r} is not a folder")
