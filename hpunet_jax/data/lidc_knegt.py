"""`lidc_knegt`: the 128x128 multi-grader LIDC that most later LIDC tables use.

PHiSeg (Baumgartner 2019), Stochastic Segmentation Networks (Monteiro 2020),
MoSE (Gao 2023), the Generalized Prob. U-Net (Bhat 2022) and CCDM's "LIDC v1"
all build on `data_lidc.pickle`, published with the PyTorch Prob. U-Net of
stefanknegt/Probabilistic-Unet-Pytorch, or on PHiSeg's `data_lidc.hdf5` made
from it. Formats, as their loaders read them:

* **The pickle** (`load_LIDC_data.py` of stefanknegt/Probabilistic-Unet-Pytorch):
  a dict keyed `<patient>_<slice>`; each value a dict with `image` (2-D float
  in [0, 1], 128x128), `masks` (a list of 4 binary 128x128 arrays, one per
  grader, empty where a grader saw nothing) and `series_uid` (str). That loader
  reads every file whose name contains `.pickle` in its folder, in chunks of
  2**31 - 1 bytes (files over 2 GiB), and merges the dicts; here the files are
  read in sorted name order (the loader takes `os.listdir`'s), and a key found
  in two files is an error rather than silently overwritten.
* **PHiSeg's hdf5** (`prepare_data()` in baumgach/PHiSeg-code
  `data/lidc_data_loader.py`, copied unchanged into gaozhitong/MoSE-AUSeg
  `data/preprocess/lidc_data_loader.py`): groups `train`, `val`, `test`, each
  with `images` float64 (N, 128, 128) = image - 0.5, `labels` uint8
  (N, 128, 128, 4) and `uids` = Python's `hash(series_uid)` (salted per
  process, so not reproducible and not invertible). CCDM's copy
  (LarsDoorenbos/ccdm-stochastic-segmentation `datasets/lidc.py`,
  `process_data`) skips the transpose and stores `labels` as (N, 4, 128, 128).
  Within a group, images are in the pickle's order.

Configs (the split is what differs):

* `lidc_knegt/mose` (= `lidc_knegt`, the default): MoSE's split, from the pickle.
  `unique = np.unique(series_uids)`, `rest, test = train_test_split(unique,
  test_size=0.2, random_state=0)`, `train, val = train_test_split(rest,
  test_size=0.2, random_state=0)` (scikit-learn's `train_test_split`; it is
  reproduced here with numpy's legacy `RandomState`, see `train_test_split`,
  and tested against scikit-learn). Every series lands in the split MoSE's
  code puts it in, and each split keeps the pickle's order, as in MoSE's (and
  PHiSeg's) hdf5. PHiSeg's own split is the same code without `random_state`,
  i.e. unseeded: only its hdf5 (config `hdf5`) reproduces a given PHiSeg run.
  Note that MoSE trains and tests from `.npy` files named by that index and
  listed with `sorted()` (`data/lidc_dataset.py`), i.e. in string order
  (0, 1, 10, 100, ...): the same images, in another order.
* `lidc_knegt/patient`: a patient-level 80/10/10 split as
  ishaanb92/GeneralizedProbabilisticUNet `data/create_data_split.py` makes it:
  patients = the key before its first `_`, sorted, shuffled with
  `random.Random(1234).shuffle`; the first `floor(0.8 n + 0.5)` train, the
  next `floor(0.1 n + 0.5)` validation, the rest test; each split lists its
  patients in shuffled order, each patient's keys in sorted order. The fraction
  0.8 is the script's first version (commit ed977c9, "Add dataset files"); its
  later version (e18f22c, "Fix path in the data split script") has
  `TRAIN_FRAC = 0.6`: build that one with
  `LidcKnegtConfig(name="patient60", split="patient", train_fraction=0.6)`.
* `lidc_knegt/hdf5`: the split stored in a PHiSeg or CCDM hdf5 (`*.hdf5` or
  `*.h5`, exactly one, in `manual_dir`), with the 0.5 shift undone and either
  label layout accepted. Needs h5py (`pip install 'hpunet-jax[lidc_knegt]'`).
  The file keeps only hashes of the series UIDs: `series_uid` is that hash as
  decimal text and `patient_id` is empty.

The pickle's own training script (`train_model.py`) splits 90/10 over images
with an unseeded `np.random.shuffle`, so patients leak across it; it is not
offered.

Each example: `image` float32 `[128, 128, 1]` in [0, 1] (not quantised),
`masks` uint8 `[128, 128, 4]` in {0, 1}, `series_uid`, `patient_id` and
`key` (the pickle key, or `<group>/<index>` in an hdf5) as text. Examples are
stored in the order above (tfds' shuffling by key is off), so index i of a
split is the split's i-th image.

Every input is checked before or while the dataset is written (tfds writes
into a temporary folder and renames it only on success): a missing field, an
image or mask of the wrong shape, an image outside [0, 1], a non-binary mask,
a grader count other than 4, a series in two splits, an unreadable file each
stop the build with an error naming the pickle key or the file and index.
A pickle is Python code as much as data: read only files you trust.
"""
import dataclasses
import functools
import math
import os
import pickle
import random

from absl import logging
from etils import epath
import numpy as np
import tensorflow_datasets as tfds

from hpunet_jax.data import builders
from hpunet_jax.infra.progress import Progress

IMAGE_SIZE = (128, 128)
NUM_GRADERS = 4
SPLITS = ("train", "validation", "test")
# tfds split -> group in PHiSeg's / CCDM's hdf5.
HDF5_GROUPS = {"train": "train", "validation": "val", "test": "test"}
PICKLE_FIELDS = ("image", "masks", "series_uid")
SPLIT_METHODS = ("mose", "patient", "hdf5")
# The pickle loaders' read size (files over 2 GiB cannot be read in one call on macOS).
_MAX_READ_BYTES = 2**31 - 1
# hdf5 examples are checked and converted this many at a time.
_HDF5_CHUNK = 256


class LidcKnegtDataError(ValueError):
  """The pickle(s) or hdf5 in manual_dir do not have the expected layout or content."""


@dataclasses.dataclass(eq=False)
class LidcKnegtConfig(tfds.core.BuilderConfig):
  """How a `lidc_knegt` dataset is split.

  Attributes:
    split: 'mose' (MoSE's series-level split of the pickle), 'patient' (the
      Generalized Prob. U-Net's patient-level split of the pickle) or 'hdf5'
      (the split stored in an hdf5).
    seed: `random_state` of both `train_test_split` calls ('mose'), or the
      `random.Random` seed ('patient'); unused for 'hdf5'.
    test_size: the fraction of series for test, and of the rest for
      validation ('mose').
    train_fraction: the fraction of patients for training; validation and
      test get half the rest each ('patient').
  """
  split: str = "mose"
  seed: int = 0
  test_size: float = 0.2
  train_fraction: float = 0.8


_MANUAL_INSTRUCTIONS = """\
Put in `manual_dir` either the pickle(s) of stefanknegt/Probabilistic-Unet-Pytorch
(`data_lidc.pickle`; every file whose name contains `.pickle` is read and merged)
for the configs `mose` and `patient`, or PHiSeg's / CCDM's `data_lidc.hdf5`
(groups train/val/test with images, labels, uids) for the config `hdf5`.
"""


# --- scikit-learn's train_test_split, without scikit-learn ---------------------------


def shuffle_split_indices(num_samples, test_size, random_state):
  """`(train, test)` indices as scikit-learn's `ShuffleSplit(test_size, random_state)`.

  scikit-learn (`model_selection/_split.py`): a float `test_size` gives
  `n_test = ceil(test_size * n)` and `n_train = n - n_test`; then
  `permutation = RandomState(random_state).permutation(n)`,
  `test = permutation[:n_test]`, `train = permutation[n_test:n_test + n_train]`.
  numpy's legacy `RandomState` stream is frozen, so this is exact across versions.
  """
  num_test = math.ceil(test_size * num_samples)   # Python float arithmetic, as sklearn's
  num_train = num_samples - num_test
  if not 0 < test_size < 1 or num_test <= 0 or num_train <= 0:
    raise ValueError(f"test_size={test_size} of {num_samples} samples leaves an empty side "
                     f"({num_train} train, {num_test} test)")
  permutation = np.random.RandomState(random_state).permutation(num_samples)
  return permutation[num_test:num_test + num_train], permutation[:num_test]


def train_test_split(array, test_size, random_state):
  """`(train, test)` as scikit-learn's `train_test_split(array, test_size=, random_state=)`."""
  array = np.asarray(array)
  train, test = shuffle_split_indices(len(array), test_size, random_state)
  return array[train], array[test]


def mose_split_of_series(series_uids, test_size=0.2, random_state=0):
  """`{series_uid: tfds split}` as MoSE's `prepare_data` assigns them.

  gaozhitong/MoSE-AUSeg `data/preprocess/lidc_data_loader.py`: `np.unique` of
  the series UIDs, then test = 20% of them, validation = 20% of the rest, both
  with `random_state=0`.
  """
  unique = np.unique(np.asarray(list(series_uids), dtype=str))
  if len(unique) < 3:
    raise LidcKnegtDataError(
        f"{len(unique)} series: the mose split needs at least 3 (one per split)")
  rest, test = train_test_split(unique, test_size, random_state)
  train, validation = train_test_split(rest, test_size, random_state)
  split_of = {}
  for split, uids in (("train", train), ("validation", validation), ("test", test)):
    split_of.update({str(uid): split for uid in uids})
  return split_of


def patient_id_of(key):
  """The patient of a pickle key `<patient>_<slice>`: the part before the first `_`."""
  return key.split("_")[0]


def patient_split_of_keys(keys, train_fraction=0.8, seed=1234):
  """`{tfds split: [key, ...]}` as the Generalized Prob. U-Net's `create_data_split.py`.

  ishaanb92/GeneralizedProbabilisticUNet `data/create_data_split.py`: patients
  (the key before its first `_`) sorted, shuffled by `random.Random(SEED)`,
  `floor(TRAIN_FRAC * n + 0.5)` for training, `floor((1 - TRAIN_FRAC) / 2 * n
  + 0.5)` for validation, the rest for test; each split lists its patients in
  shuffled order and each patient's keys in sorted order.
  """
  keys_of = {}
  for key in sorted(keys):
    keys_of.setdefault(patient_id_of(key), []).append(key)
  patients = sorted(keys_of)
  val_fraction = (1 - train_fraction) / 2     # the script's float arithmetic
  num_train = math.floor(train_fraction * len(patients) + 0.5)
  num_val = math.floor(val_fraction * len(patients) + 0.5)
  random.Random(seed).shuffle(patients)
  groups = {"train": patients[:num_train],
            "validation": patients[num_train:num_train + num_val],
            "test": patients[num_train + num_val:]}
  for split, members in groups.items():
    if not members:
      raise LidcKnegtDataError(
          f"{len(patients)} patients: the patient split (train_fraction={train_fraction}) "
          f"leaves {split} empty")
  return {split: [k for p in members for k in keys_of[p]] for split, members in groups.items()}


# --- reading and checking the pickle -------------------------------------------------


def pickle_files(manual_dir):
  """The files the pickle loader reads: names containing `.pickle`, sorted."""
  manual_dir = epath.Path(manual_dir)
  return sorted((p for p in manual_dir.iterdir()
                 if ".pickle" in p.name and not p.name.startswith(".") and p.is_file()),
                key=lambda p: p.name)


def read_pickle(path):
  """Unpickles `path` as the loaders do (chunks of 2**31 - 1 bytes); errors name the file."""
  try:
    data = bytearray()
    with epath.Path(path).open("rb") as f:
      while chunk := f.read(_MAX_READ_BYTES):
        data += chunk
    value = pickle.loads(data)
  except Exception as e:  # pylint: disable=broad-except  (unpickling can raise anything)
    raise LidcKnegtDataError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from e
  if not isinstance(value, dict):
    raise LidcKnegtDataError(
        f"{path}: holds a {type(value).__name__}, expected a dict keyed <patient>_<slice>")
  return value


def read_pickles(paths):
  """`{key: (record, path)}` over all `paths`, in file order then each dict's order."""
  records = {}
  for path in paths:
    for key, record in read_pickle(path).items():
      if not isinstance(key, str):
        raise LidcKnegtDataError(f"{path}: key {key!r} is a {type(key).__name__}, expected str")
      if key in records:
        raise LidcKnegtDataError(
            f"{path}: key {key!r} is also in {records[key][1]} (which one to keep is ambiguous)")
      records[key] = (record, path)
  return records


def _check_image(image, where):
  """`image` as float32 `[H, W, 1]`; it must be finite, 2-D of IMAGE_SIZE, in [0, 1]."""
  image = np.asarray(image)
  if image.dtype == object or not (np.issubdtype(image.dtype, np.number)
                                   or image.dtype == bool):
    raise LidcKnegtDataError(f"{where}: image has dtype {image.dtype}, expected float")
  if image.shape != IMAGE_SIZE:
    raise LidcKnegtDataError(
        f"{where}: image has shape {image.shape}, expected {IMAGE_SIZE} (2-D, 128x128)")
  image = image.astype(np.float64)
  if not np.all(np.isfinite(image)):
    raise LidcKnegtDataError(f"{where}: image has non-finite values")
  low, high = float(image.min()), float(image.max())
  if low < 0 or high > 1:
    raise LidcKnegtDataError(f"{where}: image values in [{low:g}, {high:g}], expected [0, 1]")
  return image.astype(np.float32)[..., None]


def _check_binary(masks, where):
  values = np.unique(masks)
  if not np.all(np.isin(values, (0, 1))):
    raise LidcKnegtDataError(
        f"{where}: mask values {values[:8].tolist()} are not binary (expected {{0, 1}})")


def _check_masks(masks, where):
  """The pickle's list of graders' masks as uint8 `[H, W, 4]`."""
  if isinstance(masks, np.ndarray) and masks.ndim == 3:
    masks = list(masks)
  if not isinstance(masks, (list, tuple)):
    raise LidcKnegtDataError(
        f"{where}: masks is a {type(masks).__name__}, expected a list of {NUM_GRADERS} arrays")
  if len(masks) != NUM_GRADERS:
    raise LidcKnegtDataError(f"{where}: {len(masks)} masks (graders), expected {NUM_GRADERS}")
  checked = []
  for k, mask in enumerate(masks):
    mask = np.asarray(mask)
    if mask.shape != IMAGE_SIZE:
      raise LidcKnegtDataError(
          f"{where}: masks[{k}] has shape {mask.shape}, expected {IMAGE_SIZE}")
    if mask.dtype == object or not (np.issubdtype(mask.dtype, np.number) or mask.dtype == bool):
      raise LidcKnegtDataError(f"{where}: masks[{k}] has dtype {mask.dtype}")
    _check_binary(mask, f"{where}: masks[{k}]")
    checked.append(mask.astype(np.uint8))
  return np.stack(checked, axis=-1)


def check_record(key, record, path):
  """One pickle value checked and converted; errors name the file and the key.

  Returns:
    A dict with `image` float32 `[128, 128, 1]`, `masks` uint8 `[128, 128, 4]`,
    `series_uid`, `patient_id`, `key`.
  """
  where = f"{path}: key {key!r}"
  if not isinstance(record, dict):
    raise LidcKnegtDataError(
        f"{where}: value is a {type(record).__name__}, expected a dict with "
        f"{', '.join(PICKLE_FIELDS)}")
  for field in PICKLE_FIELDS:
    if field not in record:
      raise LidcKnegtDataError(
          f"{where}: no {field!r} (has {', '.join(map(repr, record)) or 'nothing'})")
  series_uid = record["series_uid"]
  if isinstance(series_uid, bytes):
    series_uid = series_uid.decode("utf-8", errors="replace")
  if not isinstance(series_uid, str) or not series_uid:
    raise LidcKnegtDataError(f"{where}: series_uid {series_uid!r} is not a non-empty str")
  return {
      "image": _check_image(record["image"], where),
      "masks": _check_masks(record["masks"], where),
      "series_uid": series_uid,
      "patient_id": patient_id_of(key),
      "key": key,
  }


def split_pickle(examples, config):
  """`{tfds split: [example, ...]}` of checked pickle examples by `config.split`."""
  if config.split == "mose":
    split_of = mose_split_of_series((e["series_uid"] for e in examples.values()),
                                    config.test_size, config.seed)
    splits = {split: [] for split in SPLITS}
    for example in examples.values():          # the pickle's order, as MoSE's hdf5
      splits[split_of[example["series_uid"]]].append(example)
  elif config.split == "patient":
    keys = patient_split_of_keys(examples, config.train_fraction, config.seed)
    splits = {split: [examples[k] for k in keys[split]] for split in SPLITS}
  else:
    raise ValueError(f"split={config.split!r} does not read a pickle")
  check_series_in_one_split({s: [e["series_uid"] for e in v] for s, v in splits.items()},
                            lambda split, i: f"key {splits[split][i]['key']!r}")
  return splits


def check_series_in_one_split(series_by_split, name_of):
  """Raises naming the first series found in two splits (`name_of(split, index)`)."""
  first = {}
  for split, series in series_by_split.items():
    for index, uid in enumerate(series):
      seen = first.setdefault(uid, (split, index))
      if seen[0] != split:
        raise LidcKnegtDataError(
            f"series {uid} is in two splits: {seen[0]} ({name_of(*seen)}) and "
            f"{split} ({name_of(split, index)})")


# --- reading and checking an hdf5 ----------------------------------------------------


def _import_h5py():
  try:
    import h5py  # pylint: disable=g-import-not-at-top  (an extra, needed only here)
  except ImportError as e:
    raise ImportError("lidc_knegt/hdf5 reads the hdf5 with h5py: "
                      "pip install 'hpunet-jax[lidc_knegt]' (or h5py)") from e
  return h5py


def hdf5_files(manual_dir):
  manual_dir = epath.Path(manual_dir)
  return sorted((p for p in manual_dir.iterdir()
                 if p.suffix in (".hdf5", ".h5") and not p.name.startswith(".") and p.is_file()),
                key=lambda p: p.name)


def _open_hdf5(path):
  """`(h5py.File, file object)` for `path` (any epath path); errors name the file."""
  h5py = _import_h5py()
  f = epath.Path(path).open("rb")
  try:
    return h5py.File(f, "r"), f
  except Exception as e:  # pylint: disable=broad-except  (h5py raises OSError, ValueError, ...)
    f.close()
    raise LidcKnegtDataError(f"{path}: unreadable hdf5 ({type(e).__name__}: {e})") from e


def hdf5_layout(h5, path):
  """`{tfds split: (num_examples, graders_axis)}`; checks groups, shapes and uids.

  `graders_axis` is 3 for PHiSeg's labels (N, 128, 128, 4) and 1 for CCDM's
  (N, 4, 128, 128). Also checks that no series (uid) is in two groups.
  """
  layout, uids = {}, {}
  for split, group_name in HDF5_GROUPS.items():
    if group_name not in h5:
      raise LidcKnegtDataError(
          f"{path}: no group {group_name!r} (has {', '.join(h5.keys()) or 'nothing'})")
    group = h5[group_name]
    for name in ("images", "labels", "uids"):
      if name not in group:
        raise LidcKnegtDataError(
            f"{path}: no {group_name}/{name} (has {', '.join(group.keys()) or 'nothing'})")
    images, labels = group["images"], group["labels"]
    num = images.shape[0] if images.ndim else 0
    if images.shape != (num,) + IMAGE_SIZE:
      raise LidcKnegtDataError(
          f"{path}: {group_name}/images has shape {images.shape}, expected (N, 128, 128)")
    if labels.ndim != 4 or labels.shape[0] != num:
      raise LidcKnegtDataError(
          f"{path}: {group_name}/labels has shape {labels.shape}, expected ({num}, 128, 128, 4) "
          f"or ({num}, 4, 128, 128)")
    if labels.shape[1:3] == IMAGE_SIZE:
      axis = 3
    elif labels.shape[2:4] == IMAGE_SIZE:
      axis = 1
    else:
      raise LidcKnegtDataError(
          f"{path}: {group_name}/labels has shape {labels.shape}, expected ({num}, 128, 128, 4) "
          f"or ({num}, 4, 128, 128)")
    if labels.shape[axis] != NUM_GRADERS:
      raise LidcKnegtDataError(
          f"{path}: {group_name}/labels has {labels.shape[axis]} graders (shape "
          f"{labels.shape}), expected {NUM_GRADERS}")
    group_uids = np.asarray(group["uids"][()]).reshape(-1)
    if group_uids.shape != (num,):
      raise LidcKnegtDataError(
          f"{path}: {group_name}/uids has {group_uids.size} entries for {num} images")
    if num == 0:
      raise LidcKnegtDataError(f"{path}: {group_name} holds no images")
    uids[split] = [str(u.decode() if isinstance(u, bytes) else u) for u in group_uids.tolist()]
    layout[split] = (num, axis)
  check_series_in_one_split(
      uids, lambda split, i: f"{path}: {HDF5_GROUPS[split]} index {i}")
  return layout, uids


def hdf5_examples(h5, path, split, num, axis, uids):
  """Yields `(key, example)` of one hdf5 group, checked chunk by chunk."""
  group_name = HDF5_GROUPS[split]
  group = h5[group_name]
  for start in range(0, num, _HDF5_CHUNK):
    stop = min(start + _HDF5_CHUNK, num)
    images = np.asarray(group["images"][start:stop], np.float64) + 0.5   # PHiSeg's - 0.5 undone
    labels = np.asarray(group["labels"][start:stop])
    if axis == 1:
      labels = np.moveaxis(labels, 1, -1)
    for offset in range(stop - start):
      index = start + offset
      where = f"{path}: {group_name} index {index}"
      image = images[offset]
      if not np.all(np.isfinite(image)):
        raise LidcKnegtDataError(f"{where}: image has non-finite values")
      low, high = float(image.min()), float(image.max())
      # The - 0.5 and + 0.5 in float64 are exact for float32 data; allow round-off anyway.
      if low < -1e-6 or high > 1 + 1e-6:
        raise LidcKnegtDataError(
            f"{where}: image + 0.5 has values in [{low:g}, {high:g}], expected [0, 1] "
            f"(images are stored as image - 0.5)")
      _check_binary(labels[offset], f"{where}: labels")
      key = f"{group_name}/{index}"
      yield key, {
          "image": np.clip(image, 0, 1).astype(np.float32)[..., None],
          "masks": labels[offset].astype(np.uint8),
          "series_uid": uids[index],
          "patient_id": "",
          "key": key,
      }


# --- the builder ---------------------------------------------------------------------


class LidcKnegt(builders.ArrayRecordBuilder):
  """The 128x128 LIDC of the PyTorch Prob. U-Net's pickle (or PHiSeg's hdf5), 4 graders."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "float32 images in [0, 1], masks in {0, 1}, published splits."}
  BUILDER_CONFIGS = [
      LidcKnegtConfig(
          name="mose", split="mose", seed=0, test_size=0.2,
          description="From the pickle, MoSE's split by series (scikit-learn's "
                      "train_test_split, test 0.2 then val 0.2 of the rest, random_state=0)."),
      LidcKnegtConfig(
          name="patient", split="patient", seed=1234, train_fraction=0.8,
          description="From the pickle, the Generalized Prob. U-Net's split by patient: "
                      "80/10/10, random.Random(1234)."),
      LidcKnegtConfig(
          name="hdf5", split="hdf5",
          description="The split stored in PHiSeg's (or CCDM's) data_lidc.hdf5, 0.5 shift "
                      "undone."),
  ]
  DEFAULT_CONFIG_NAME = "mose"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

  def _info(self):
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=IMAGE_SIZE + (1,), dtype=np.float32, encoding=tfds.features.Encoding.ZLIB),
            "masks": tfds.features.Tensor(
                shape=IMAGE_SIZE + (NUM_GRADERS,), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            "series_uid": tfds.features.Text(),
            "patient_id": tfds.features.Text(),
            "key": tfds.features.Text(),
        }),
        # The published order within each split (the pickle's, or the split script's).
        disable_shuffling=True,
        homepage="https://github.com/stefanknegt/Probabilistic-Unet-Pytorch",
        citation="""@inproceedings{baumgartner2019phiseg,
  title={PHiSeg: Capturing Uncertainty in Medical Image Segmentation},
  author={Baumgartner, Christian F. and Tezcan, Kerem C. and Chaitanya, Krishna and
          H{\\"o}tker, Andreas M. and Muehlematter, Urs J. and Schawkat, Khoschy and
          Becker, Anton S. and Donati, Olivio and Konukoglu, Ender},
  booktitle={MICCAI},
  year={2019}
}""",
    )

  def _manual_dir(self, dl_manager):
    manual_dir = builders.manual_dir(dl_manager)
    if manual_dir is None or not manual_dir.is_dir():
      raise LidcKnegtDataError(
          f"{manual_dir or 'manual_dir'}: no data for lidc_knegt/{self.builder_config.name}, "
          f"which is read from manual_dir only.\n{_MANUAL_INSTRUCTIONS}")
    return manual_dir

  def _split_generators(self, dl_manager):
    config = self.builder_config
    if config.split not in SPLIT_METHODS:
      raise ValueError(f"LidcKnegtConfig.split={config.split!r}: need one of {SPLIT_METHODS}")
    manual_dir = self._manual_dir(dl_manager)
    if config.split == "hdf5":
      return self._hdf5_generators(manual_dir)
    paths = pickle_files(manual_dir)
    if not paths:
      found = ", ".join(p.name for p in hdf5_files(manual_dir))
      raise LidcKnegtDataError(
          f"{manual_dir}: no *.pickle for lidc_knegt/{config.name}"
          + (f" (found {found}: use lidc_knegt/hdf5 for an hdf5)" if found else "")
          + f"\n{_MANUAL_INSTRUCTIONS}")
    # Everything is read and checked before anything is written.
    records = read_pickles(paths)
    if not records:
      raise LidcKnegtDataError(f"{', '.join(map(str, paths))}: no examples")
    examples = {}
    for key in list(records):   # popped: the pickle's arrays go as their copies are made
      record, path = records.pop(key)
      examples[key] = check_record(key, record, path)
    splits = split_pickle(examples, config)
    return {split: self._generate_examples(splits[split], split) for split in SPLITS}

  def _progress(self, total, split):
    return Progress(total, unit="example", every_s=10, print_fn=functools.partial(
        logging.info, "Reading lidc_knegt/%s %s: %s", self.builder_config.name, split))

  def _generate_examples(self, examples, split):
    progress = self._progress(len(examples), split)
    for done, example in enumerate(examples, 1):
      yield example["key"], example
      progress.update(done)

  def _hdf5_generators(self, manual_dir):
    paths = hdf5_files(manual_dir)
    if len(paths) != 1:
      raise LidcKnegtDataError(
          f"{manual_dir}: lidc_knegt/hdf5 needs exactly one *.hdf5 or *.h5, found "
          f"{', '.join(p.name for p in paths) or 'none'}")
    path = os.fspath(paths[0])
    h5, f = _open_hdf5(path)
    try:
      layout, uids = hdf5_layout(h5, path)
    finally:
      h5.close()
      f.close()
    return {split: self._generate_hdf5_examples(path, split, *layout[split], uids[split])
            for split in SPLITS}

  def _generate_hdf5_examples(self, path, split, num, axis, uids):
    progress = self._progress(num, split)
    h5, f = _open_hdf5(path)
    try:
      for done, item in enumerate(hdf5_examples(h5, path, split, num, axis, uids), 1):
        yield item
        progress.update(done)
    finally:
      h5.close()
      f.close()
