"""The input pipeline: grain over tfds data sources (or fake data), numpy out.

Training order is a pure function of `(seed, global position)`: the split is
shuffled with the seed (reshuffled every epoch) and repeated forever; element
`g` of that order gets its grader (and random crop / flip) from grain's RNG keyed
by `(seed, g)`; global batch `t` is positions `[t*G, (t+1)*G)`, of which process
`p` yields `[t*G + p*L, t*G + (p+1)*L)`. Hence one process with batch G yields
exactly the concatenation of what P processes with batch G/P yield, and an
iterator's state is just its position (grain's `get_state` / `set_state`).

Config group `data` (see `default_config`):
  name: 'synthetic_multiscale[/default|/small]', 'synthetic_objects[/default|/s64|/small]',
    'synthetic_grid[/default|/small]',
    'lidc_crops[/default]',
    'lidc_crops/custom', 'lidc_crops/<your name>' (your data with the sizes
    below fixed), 'lidc_knegt[/mose|/patient|/hdf5]' (the 128x128 LIDC of the
    later literature, float images) or 'fake'.
  data_dir: tfds data dir (None = tfds default): a local folder, or a folder
    on an object store (`gs://bucket/tfds`, any `etils.epath` path). The array
    files are read through local files, so an object-store data_dir is
    mirrored: `prepare` builds the dataset in a local mirror
    (`$TMPDIR/hpunet_jax_data/...`) and uploads it; every process reading it
    downloads it into its host's mirror once. On several hosts, data_dir must
    be shared (an object store or a shared file system): a folder local to
    each host stops the run before training (`prepare_on_all_processes`).
  manual_dir: folder with the LIDC tarballs or extracted folders, or for
    `lidc_knegt` the pickle(s) or hdf5 (None = tfds'
    `<data_dir>/downloads/manual`); local or on an object store.
  crop_size: centre crop (or random crop, below) to `crop_size` squared; None = none.
    With `augment.enabled` the training examples stay uncropped: the
    augmentation cuts them to `crop_size` on device (evaluation still
    centre-crops).
  random_crop: training crops at a random offset instead of the centre.
  random_flip: training flips left-right with probability 1/2.
  image_size: `(H, W)` or int: the size on disk (before any crop); for fake
    data the size generated, otherwise checked against the dataset if set.
  num_channels: image channels of fake data.
  num_graders: masks per image: generated for fake data, checked otherwise.
  read_threads: grain threads reading and transforming examples.
  prefetch_batches: batches grain reads ahead.
  augment: on-device spatial augmentation in the train step
    (`hpunet_jax.data.augment`; off by default).
"""
import hashlib
import os
import tempfile
import time

from absl import logging
from etils import epath
import grain
import numpy as np
import tensorflow_datasets as tfds

from hpunet_jax.data import augment
from hpunet_jax.data.config import FAKE, default_config, validate_config  # pylint: disable=unused-import
from hpunet_jax.data.config import _image_size
from hpunet_jax.infra import files
from hpunet_jax.data import lidc
from hpunet_jax.data import lidc_knegt  # pylint: disable=unused-import  (registers the builder)
from hpunet_jax.data import synthetic  # pylint: disable=unused-import  (registers the builder)

FAKE_NUM_EXAMPLES = 64  # Per split; training repeats them forever.
_FAKE_SPLIT_IDS = {"train": 0, "validation": 1, "test": 2}


def _is_remote(path) -> bool:
  """An object-store path (`gs://...`, `s3://...`): no local file can be opened on it."""
  return path is not None and not files.is_local(path)


def _local_data_dir(data_config):
  """Where tfds builds and reads: `data.data_dir`, or for an object store its local mirror."""
  data_dir = data_config.get("data_dir")
  if not _is_remote(data_dir):
    return data_dir
  remote = os.fspath(data_dir).rstrip("/")
  readable = "".join(c if c.isalnum() or c in "-_." else "_" for c in remote)[-60:]
  tag = hashlib.sha1(remote.encode()).hexdigest()[:12]
  return os.path.join(tempfile.gettempdir(), "hpunet_jax_data", f"{readable}_{tag}")


def _remote_dataset_dir(data_config, builder):
  """The dataset's folder in an object-store `data.data_dir` (None for a local one)."""
  data_dir = data_config.get("data_dir")
  if not _is_remote(data_dir):
    return None
  relative = epath.Path(builder.data_path).relative_to(epath.Path(_local_data_dir(data_config)))
  return epath.Path(data_dir) / relative


# tfds writes this file last: its presence marks a complete copy.
_COMPLETE_MARKER = "dataset_info.json"


def _files_under(folder):
  # epath refuses rglob on object stores (one listing per folder is what it costs).
  for path in folder.iterdir():
    if path.is_dir():
      yield from _files_under(path)
    else:
      yield path


def _copy_tree(source, destination):
  """Copies the files under `source` to `destination`, the completion marker last."""
  source, destination = epath.Path(source), epath.Path(destination)
  files = sorted(_files_under(source), key=lambda p: p.name == _COMPLETE_MARKER)
  for path in files:
    target = destination / path.relative_to(source)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(path.read_bytes())


def _download(remote, local):
  """Copies the prepared dataset `remote` into the local folder `local` (atomically)."""
  local = epath.Path(local)
  logging.info("Copying %s to %s.", remote, local)
  tmp = local.parent / f".{local.name}.incomplete{os.getpid()}_{time.time_ns()}"
  _copy_tree(remote, tmp)
  try:
    tmp.rename(local)
  except OSError:   # another process on this host got there first
    if not local.exists():
      raise
    tmp.rmtree()


def _builder(data_config):
  """The tfds builder that `data.name` names; for an object-store data_dir, a local mirror's.

  A dataset already prepared in that object store is copied into the mirror.
  """
  builder = _local_builder(data_config)
  remote = _remote_dataset_dir(data_config, builder)
  if (remote is not None and not builder.is_prepared()
      and (remote / _COMPLETE_MARKER).exists()):
    _download(remote, builder.data_path)
    builder = _local_builder(data_config)   # reads the copied dataset_info
  return builder


def _local_builder(data_config):
  name = data_config.name
  base, _, config_name = name.partition("/")
  data_dir = _local_data_dir(data_config)
  if base == "lidc_crops" and config_name not in ("", "default", "custom"):
    # Your own data under a name of your choosing, with the sizes checked.
    image_size = _image_size(data_config)
    config = lidc.LidcCropsConfig(
        name=config_name, image_size=image_size, num_graders=data_config.get("num_graders"),
        description=f"User data from manual_dir, image_size={image_size}, "
                    f"num_graders={data_config.get('num_graders')}.")
    return lidc.LidcCrops(config=config, data_dir=data_dir, file_format="array_record")
  try:
    return tfds.builder(name, data_dir=data_dir, file_format="array_record")
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ValueError(f"data.name={name!r}: no such dataset ({e})") from e


def _check_sizes(data_config, builder):
  """Checks `data.image_size` / `data.num_graders`, where set, against the prepared data."""
  example = builder.as_data_source(split="train")[0]
  height, width, num_graders = example["masks"].shape
  image_size = _image_size(data_config)
  if image_size is not None and image_size != (height, width):
    raise ValueError(
        f"data.image_size={image_size} but {data_config.name} in {builder.data_dir} is "
        f"{height}x{width} (rebuild it after deleting that folder, or fix data.image_size)")
  if data_config.get("num_graders") not in (None, num_graders):
    raise ValueError(
        f"data.num_graders={data_config.num_graders} but {data_config.name} in "
        f"{builder.data_dir} has {num_graders} graders")
  crop_size = data_config.get("crop_size")
  if crop_size is not None and crop_size > min(height, width):
    raise ValueError(f"data.crop_size={crop_size} is larger than the {height}x{width} images "
                     f"of {data_config.name}")


def prepare(data_config):
  """Builds the dataset `data.name` in `data.data_dir` unless it is built already.

  LIDC is read from `data.manual_dir` when that holds the tarballs or extracted
  folders, otherwise downloaded. Call it from one process before the others
  read the data. A no-op for fake data.
  """
  validate_config(data_config)
  if data_config.name == FAKE:
    logging.info("data.name='fake': nothing to prepare.")
    return
  builder = _builder(data_config)
  if builder.is_prepared():
    logging.info("%s is already prepared in %s.", data_config.name, builder.data_dir)
  else:
    manual_dir = data_config.get("manual_dir")
    logging.info("Preparing %s in %s%s.", data_config.name, builder.data_dir,
                 f" from manual_dir {manual_dir}" if manual_dir else "")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir) if manual_dir else None
    # The builders log progress lines with a rate and an ETA (`infra.progress.Progress`);
    # tfds' own bars would repeat them without an ETA.
    tfds.display_progress_bar(False)
    try:
      builder.download_and_prepare(download_config=download_config)
    except FileExistsError:
      # Another job on this machine (a sweep started at once) finished building the same
      # dataset first: tfds builds in a scratch folder and its final rename found the
      # other's. That dataset is the one to read; anything else is a real error.
      if not _builder(data_config).is_prepared():
        raise
      logging.info("%s was prepared in %s by another job meanwhile; using it.",
                   data_config.name, builder.data_dir)
    finally:
      tfds.display_progress_bar(True)
    builder = _builder(data_config)   # its info, splits included, as written (by either job)
    logging.info("Prepared %s: %s", data_config.name,
                 {s: i.num_examples for s, i in builder.info.splits.items()})
  remote = _remote_dataset_dir(data_config, builder)
  if remote is not None and not (remote / _COMPLETE_MARKER).exists():
    logging.info("Uploading %s to %s.", builder.data_path, remote)
    _copy_tree(builder.data_path, remote)
  _check_sizes(data_config, builder)


def _where(data_config):
  return (f"data.data_dir={data_config.get('data_dir')}" if data_config.get("data_dir")
          else "data.data_dir (unset: tfds' default, ~/tensorflow_datasets)")


def prepare_on_all_processes(data_config):
  """Prepares the data on process 0, then checks that every process sees it.

  With one process this is `prepare`. With several, process 0 builds (or
  finds) the dataset in `data.data_dir`; then each process opens it (from an
  object store, copying it into its host's local mirror). If a process does
  not find it, `data.data_dir` is local to each host: every process raises a
  ValueError naming the processes and the field to set, before training.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from hpunet_jax.infra import multihost  # pylint: disable=g-import-not-at-top
  if jax.process_count() == 1:
    prepare(data_config)
    return
  failed = None
  if jax.process_index() == 0:
    try:
      prepare(data_config)
    except Exception as e:  # pylint: disable=broad-except
      failed = e   # the others must not wait for a dataset that will not come
  ok = multihost.gather_flags(failed is None)
  if not ok[0]:
    if failed is not None:
      raise failed
    raise ValueError(f"process 0 could not prepare {data_config.name} in {_where(data_config)}")
  seen = multihost.gather_flags(data_config.name == FAKE or _builder(data_config).is_prepared())
  missing = [int(i) for i in np.flatnonzero(~seen)]
  if missing:
    raise ValueError(
        f"{_where(data_config)}: process 0 prepared {data_config.name} there, but processes "
        f"{missing} do not find it: that folder is local to each host. Set "
        "--config.data.data_dir to storage every host sees (gs://bucket/tfds, or a shared file "
        "system), or prepare the same data_dir on every host before training.")


class FakeSource:
  """Deterministic random examples for benchmarks and smoke tests (grain data source).

  Example `i` of split `s`: `image` uint8 uniform `[H, W, C]` and `masks` uint8
  Bernoulli(1/2) `[H, W, M]` from `np.random.default_rng([split_id, i])`.
  """

  def __init__(self, image_size, num_channels, num_graders, split="train",
               num_examples=FAKE_NUM_EXAMPLES):
    self._shape = tuple(image_size)
    self._num_channels = num_channels
    self._num_graders = num_graders
    self._split_id = _FAKE_SPLIT_IDS.get(split, len(_FAKE_SPLIT_IDS))
    self._num_examples = num_examples

  def __len__(self):
    return self._num_examples

  def __getitem__(self, index):
    if not 0 <= index < self._num_examples:
      raise IndexError(index)
    rng = np.random.default_rng([self._split_id, index])
    return {
        "image": rng.integers(0, 256, self._shape + (self._num_channels,), dtype=np.uint8),
        "masks": (rng.random(self._shape + (self._num_graders,)) < 0.5).astype(np.uint8),
    }

  def __repr__(self):  # grain logs and checkpoints data sources by repr.
    return (f"FakeSource(image_size={self._shape}, num_channels={self._num_channels}, "
            f"num_graders={self._num_graders}, split_id={self._split_id})")


def _source(data_config, split):
  """A random-access source of decoded examples (dicts of numpy arrays)."""
  validate_config(data_config)
  if data_config.name == FAKE:
    return FakeSource(_image_size(data_config), data_config.get("num_channels", 1),
                      data_config.get("num_graders") or 4, split)
  builder = _builder(data_config)
  if not builder.is_prepared():
    raise ValueError(
        f"data.name={data_config.name!r} is not prepared in {_where(data_config)}: "
        "call hpunet_jax.data.pipeline.prepare(config.data) first")
  _check_sizes(data_config, builder)
  return builder.as_data_source(split=split)


def num_examples(data_config, split):
  """Examples in `split` (a tfds split, slices like 'train[:10]' included)."""
  validate_config(data_config)
  if data_config.name == FAKE:
    return FAKE_NUM_EXAMPLES
  builder = _builder(data_config)
  if not builder.is_prepared():
    raise ValueError(f"data.name={data_config.name!r} is not prepared in {builder.data_dir}")
  return builder.info.splits[split].num_examples


def _crop(array, top, left, size):
  """Crops `[H, W, ...]` to `[size, size, ...]` at `(top, left)`."""
  return array[top:top + size, left:left + size]


def _centre(shape, size):
  return (shape[0] - size) // 2, (shape[1] - size) // 2


def _image_to_float(image):
  """float32 in [0, 1]: uint8 images are scaled by 1/255, float ones (lidc_knegt) kept."""
  if np.issubdtype(image.dtype, np.floating):
    return image.astype(np.float32)
  return image.astype(np.float32) / 255.0


class _TrainTransform:
  """One grader, crop and flip per example, drawn from grain's `(seed, position)` RNG."""

  def __init__(self, crop_size, random_crop, random_flip):
    self._crop_size = crop_size
    self._random_crop = random_crop
    self._random_flip = random_flip

  def __call__(self, example, rng):
    masks = example["masks"]
    # Draw order is fixed (grader, crop, flip) so that it stays a function of the position.
    grader = rng.integers(masks.shape[-1])
    image, mask = example["image"], masks[..., grader]
    if self._crop_size is not None:
      size = self._crop_size
      if self._random_crop:
        top = rng.integers(image.shape[0] - size + 1)
        left = rng.integers(image.shape[1] - size + 1)
      else:
        top, left = _centre(image.shape, size)
      image, mask = _crop(image, top, left, size), _crop(mask, top, left, size)
    if self._random_flip and rng.random() < 0.5:
      image, mask = image[:, ::-1], mask[:, ::-1]
    foreground = (mask > 0).astype(np.float32)
    return {
        "image": _image_to_float(image),
        "segmentation": np.stack([1.0 - foreground, foreground], axis=-1),
    }


class _EvalTransform:
  """All graders (and candidates, where present) as float32, centre-cropped."""

  def __init__(self, crop_size):
    self._crop_size = crop_size

  def __call__(self, example):
    crop = lambda x: x
    if self._crop_size is not None:
      top, left = _centre(example["image"].shape, self._crop_size)
      crop = lambda x: _crop(x, top, left, self._crop_size)
    batch = {
        "image": _image_to_float(crop(example["image"])),
        "masks": (crop(example["masks"]) > 0).astype(np.float32),
    }
    if "candidates" in example:
      batch["candidates"] = np.moveaxis(crop(example["candidates"]) > 0, -1, 0).astype(np.float32)
      batch["candidate_probs"] = np.asarray(example["candidate_probs"], np.float32)
    if "object_regions" in example:   # Data with independent objects (synthetic_objects, _grid).
      batch["object_regions"] = np.moveaxis(crop(example["object_regions"]) > 0, -1, 0).astype(
          np.float32)                                                    # [O, H, W]
      batch["object_states"] = np.moveaxis(crop(example["object_states"]) > 0, (-2, -1), (0, 1)
                                           ).astype(np.float32)        # [O, S, H, W]
      batch["object_state_probs"] = np.asarray(example["object_state_probs"], np.float32)
    return batch


def _read_options(data_config):
  return grain.ReadOptions(num_threads=data_config.get("read_threads", 4),
                           prefetch_buffer_size=data_config.get("prefetch_batches", 4))


def train_dataset(source, *, seed, local_batch_size, process_index, process_count,
                  crop_size=None, random_crop=False, random_flip=False):
  """The training pipeline over any random-access `source` of `image` / `masks` dicts.

  Args:
    source: a grain data source (len + getitem) of dicts with `image` uint8
      `[H, W, C]` and `masks` uint8 `[H, W, M]`.
    seed: non-negative int; shuffle, grader, crop and flip all derive from it.
    local_batch_size: L, this process's share of the global batch.
    process_index: p.
    process_count: P; the global batch is G = L * P.
    crop_size: see the module docstring.
    random_crop: see the module docstring.
    random_flip: see the module docstring.

  Returns:
    A `grain.MapDataset` whose element t is process p's batch of step t:
    `image` float32 `[L, h, w, C]`, `segmentation` float32 `[L, h, w, 2]`.
  """
  transform = _TrainTransform(crop_size, random_crop, random_flip)
  return (grain.MapDataset.source(source)
          .seed(seed)
          .shuffle()          # Reshuffled each epoch by the repeat below.
          .repeat()           # Position g = epoch * N + i, for ever.
          .random_map(transform)  # RNG keyed by (seed, g): same for any process count.
          .batch(local_batch_size, drop_remainder=True)
          .slice(slice(process_index, None, process_count)))  # Batch t*P + p.


def make_train_iterator(data_config, *, global_batch_size, seed, process_index=None,
                        process_count=None):
  """An endless iterator over this process's training batches.

  Args:
    data_config: the `data` config group.
    global_batch_size: G, the batch over all processes (`train.batch_size`).
    seed: the data seed (non-negative int).
    process_index: this process (default `jax.process_index()`).
    process_count: the number of processes (default `jax.process_count()`).

  Returns:
    A grain `DatasetIterator` yielding dicts with `image` float32 `[L, H, W, C]`
    in [0, 1] (uncropped when `data.augment.enabled`) and `segmentation` float32 one-hot `[L, H, W, 2]` (background,
    foreground) of one random grader, L = G / process_count. Its
    `get_state()` is a JSON-serialisable dict; after `set_state(state)` it
    yields the batches that followed when the state was taken.
  """
  if process_index is None or process_count is None:
    import jax  # pylint: disable=g-import-not-at-top
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
  if global_batch_size <= 0 or global_batch_size % process_count:
    raise ValueError(f"train.batch_size={global_batch_size} must be a positive multiple of "
                     f"the number of processes ({process_count})")
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f"seed={seed!r}: need a non-negative int")
  source = _source(data_config, "train")
  if len(source) == 0:  # pylint: disable=g-explicit-length-test
    raise ValueError(f"data.name={data_config.name!r}: the train split is empty")
  # With on-device augmentation the examples stay whole (e.g. 180x180 for
  # LIDC): the train step cuts the augmented crop.
  crop_size = None if augment.enabled(data_config) else data_config.get("crop_size")
  dataset = train_dataset(
      source, seed=int(seed), local_batch_size=global_batch_size // process_count,
      process_index=process_index, process_count=process_count,
      crop_size=crop_size, random_crop=data_config.get("random_crop", False),
      random_flip=data_config.get("random_flip", False))
  return iter(dataset.to_iter_dataset(_read_options(data_config)))


def make_eval_iterator(data_config, split, *, batch_size, num_examples=None):  # pylint: disable=redefined-outer-name
  """One pass over `split` in a fixed order, every grader kept.

  Args:
    data_config: the `data` config group.
    split: 'train', 'validation', 'test' (or a tfds slice such as 'test[:100]').
    batch_size: examples per batch; the last batch may be smaller.
    num_examples: the first `num_examples` examples only (None = all).

  Returns:
    A grain `DatasetIterator` yielding dicts: `image` float32 `[b, H, W, C]`,
    `masks` float32 binary `[b, H, W, M]`, and where the dataset has them
    `candidates` float32 binary `[b, K, H, W]` and `candidate_probs` float32
    `[b, K]`, and for data with independent objects `object_regions`
    `[b, O, H, W]`, `object_states` `[b, O, S, H, W]` and `object_state_probs`
    `[b, O, S]`. Images and masks get the training centre crop (`data.crop_size`).
  """
  if batch_size <= 0:
    raise ValueError(f"batch_size={batch_size}: need a positive int")
  source = _source(data_config, split)
  dataset = grain.MapDataset.source(source)
  if num_examples is not None:
    if not 0 < num_examples <= len(dataset):
      raise ValueError(f"num_examples={num_examples}: {data_config.name} {split} has "
                       f"{len(dataset)} examples")
    dataset = dataset[:num_examples]
  dataset = (dataset.map(_EvalTransform(data_config.get("crop_size")))
             .batch(batch_size, drop_remainder=False))
  return iter(dataset.to_iter_dataset(_read_options(data_config)))


def example_ids(data_config, split):
  """`[(patient_id, z, crop)]` of every example of `split` in source order, or None.

  None for datasets without patients and file names (fake and synthetic data,
  lidc_knegt). Reads (and decodes) the whole split once: for picking
  examples, not for training.
  """
  source = _source(data_config, split)
  if not len(source) or "patient_id" not in source[0] or "z" not in source[0]:
    return None
  text = lambda v: v.decode() if isinstance(v, bytes) else str(v)
  return [(text(e["patient_id"]), text(e["z"]), int(e["crop"]))
          for e in (source[i] for i in range(len(source)))]


__all__ = [
    "FAKE", "FAKE_NUM_EXAMPLES", "FakeSource", "default_config", "example_ids",
    "make_eval_iterator", "make_train_iterator", "num_examples", "prepare",
    "prepare_on_all_processes", "train_dataset",
    "validate_config",
]
