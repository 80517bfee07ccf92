"""Tests of the `lidc_knegt` builder on tiny fixtures written in the published formats.

The fixtures follow the loaders' code: the pickle of stefanknegt/Probabilistic-Unet-Pytorch
(`load_LIDC_data.py`: a dict keyed `<patient>_<slice>` of dicts with `image`, `masks` (a list
of 4 arrays) and `series_uid`), PHiSeg's hdf5 (baumgach/PHiSeg-code `data/lidc_data_loader.py`:
groups train/val/test with `images` = image - 0.5 float64 (N, 128, 128), `labels` uint8
(N, 128, 128, 4), `uids`), and CCDM's copy with `labels` (N, 4, 128, 128).
"""
import math
import os
import pickle
import random

import numpy as np
import pytest
import tensorflow_datasets as tfds

from hpunet_jax.data import lidc_knegt
from hpunet_jax.data import pipeline

h5py = pytest.importorskip("h5py")
model_selection = pytest.importorskip("sklearn.model_selection")

tfds.disable_progress_bar()

SIZE = lidc_knegt.IMAGE_SIZE


def make_records(num_patients=10, slices=2, seed=0):
  """`{<patient>_<slice>: {image, masks, series_uid}}`, inserted in a scrambled order.

  Patient 3 has two series (a second scan), so series and patients differ.
  """
  rng = np.random.default_rng(seed)
  keys = [(p, s) for p in range(num_patients) for s in range(slices)]
  order = rng.permutation(len(keys))
  records = {}
  for i in order:
    patient, slice_ = keys[i]
    masks = []
    for k in range(4):
      mask = np.zeros(SIZE, np.uint8)
      if k:  # grader 0 saw nothing: an empty mask, as in the data
        top = int(rng.integers(20, 90))
        mask[top:top + 4 * k, 30:60] = 1
      masks.append(mask)
    second_scan = "9" if patient == 3 and slice_ else ""
    series = f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{patient:04d}{second_scan}"
    records[f"LIDC-IDRI-{patient:04d}_slice{slice_}"] = {
        "image": rng.random(SIZE).astype(np.float32),
        "masks": masks,
        "series_uid": series,
    }
  return records


def write_pickle(path, records):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(records, f)
  return path


def mose_reference(records):
  """MoSE's `prepare_data` (gaozhitong/MoSE-AUSeg data/preprocess/lidc_data_loader.py) with
  scikit-learn: `{split: [key, ...]}` in the order its hdf5 stores them."""
  unique = np.unique([v["series_uid"] for v in records.values()])
  train_and_val, test = model_selection.train_test_split(unique, test_size=0.2, random_state=0)
  train, val = model_selection.train_test_split(train_and_val, test_size=0.2, random_state=0)
  ids = {"test": test, "train": train, "val": val}
  out = {"train": [], "val": [], "test": []}
  for key, value in records.items():
    tt = next(t for t in ("test", "train", "val") if value["series_uid"] in ids[t])
    out[tt].append(key)
  return {"train": out["train"], "validation": out["val"], "test": out["test"]}


def write_hdf5(path, records, split_keys, layout="phiseg"):
  """PHiSeg's `prepare_data` output for the given split (CCDM's label layout if asked)."""
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with h5py.File(path, "w") as f:
    for split, group in lidc_knegt.HDF5_GROUPS.items():
      keys = split_keys[split]
      images = [records[k]["image"].astype(float) - 0.5 for k in keys]
      labels = [np.asarray(records[k]["masks"]) for k in keys]          # 4 x 128 x 128
      if layout == "phiseg":
        labels = [l.transpose((1, 2, 0)) for l in labels]
      g = f.create_group(group)
      g.create_dataset("uids", data=np.asarray(
          [int(records[k]["series_uid"].split(".")[-1]) for k in keys], dtype=np.int64))
      g.create_dataset("labels", data=np.asarray(labels, dtype=np.uint8))
      g.create_dataset("images", data=np.asarray(images, dtype=np.float64))
  return path


def build(data_dir, manual_dir, config="mose"):
  if isinstance(config, str):
    builder = tfds.builder(f"lidc_knegt/{config}", data_dir=os.fspath(data_dir),
                           file_format="array_record")
  else:
    builder = lidc_knegt.LidcKnegt(config=config, data_dir=os.fspath(data_dir))
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def split_keys(builder):
  return {split: [e["key"].decode() for e in builder.as_data_source(split=split)]
          for split in lidc_knegt.SPLITS}


def check_examples(builder, records):
  for split in lidc_knegt.SPLITS:
    for example in builder.as_data_source(split=split):
      record = records[example["key"].decode()]
      assert example["image"].dtype == np.float32 and example["image"].shape == SIZE + (1,)
      np.testing.assert_array_equal(example["image"][..., 0], record["image"])
      assert example["masks"].dtype == np.uint8 and example["masks"].shape == SIZE + (4,)
      np.testing.assert_array_equal(example["masks"], np.stack(record["masks"], -1))


def assert_nothing_prepared(data_dir, config="mose"):
  builder = tfds.builder(f"lidc_knegt/{config}", data_dir=os.fspath(data_dir),
                         file_format="array_record")
  assert not builder.is_prepared()
  leftovers = [os.path.join(d, f) for d, _, files in os.walk(data_dir) for f in files
               if f == "dataset_info.json" or ".array_record" in f]
  assert not leftovers


# --- the splits ----------------------------------------------------------------------


@pytest.mark.parametrize("random_state", [0, 1, 42])
def test_train_test_split_is_scikit_learns_index_for_index(random_state):
  rng = np.random.default_rng(random_state)
  for n in list(range(2, 120)) + [871, 1010, 1024]:
    array = np.unique(rng.integers(0, 10**9, n).astype(str))
    for test_size in (0.2, 0.1, 0.33):
      try:
        expected = model_selection.train_test_split(array, test_size=test_size,
                                                    random_state=random_state)
      except ValueError:
        with pytest.raises(ValueError):
          lidc_knegt.train_test_split(array, test_size, random_state)
        continue
      got = lidc_knegt.train_test_split(array, test_size, random_state)
      for e, g in zip(expected, got):
        np.testing.assert_array_equal(e, g)


def test_mose_split_puts_every_series_where_moses_code_does(tmp_path):
  records = make_records(num_patients=12)
  write_pickle(tmp_path / "manual" / "data_lidc.pickle", records)
  builder = build(tmp_path / "data", tmp_path / "manual")
  assert split_keys(builder) == mose_reference(records)   # same split, same order
  check_examples(builder, records)
  info = builder.info
  assert info.features["image"].np_dtype == np.float32
  example = builder.as_data_source(split="test")[0]
  key = example["key"].decode()
  assert example["series_uid"].decode() == records[key]["series_uid"]
  assert example["patient_id"].decode() == key.split("_")[0]


def test_default_config_is_mose(tmp_path):
  assert tfds.builder("lidc_knegt", data_dir=os.fspath(tmp_path)).builder_config.name == "mose"


def test_pickle_over_two_files_read_in_small_chunks_is_the_same_data(tmp_path, monkeypatch):
  records = make_records(num_patients=12)
  keys = list(records)
  write_pickle(tmp_path / "one" / "data_lidc.pickle", records)
  # The loaders read every *.pickle of the folder and merge them; sorted names here.
  write_pickle(tmp_path / "two" / "data_lidc_0.pickle", {k: records[k] for k in keys[:9]})
  write_pickle(tmp_path / "two" / "data_lidc_1.pickle", {k: records[k] for k in keys[9:]})
  (tmp_path / "two" / "README.txt").write_text("not a pickle")
  monkeypatch.setattr(lidc_knegt, "_MAX_READ_BYTES", 4096)   # the 2**31 - 1 byte chunks
  one = build(tmp_path / "data1", tmp_path / "one")
  two = build(tmp_path / "data2", tmp_path / "two")
  assert split_keys(one) == split_keys(two) == mose_reference(records)
  check_examples(two, records)


def gpu_net_reference(records, train_frac=0.8, seed=1234):
  """ishaanb92/GeneralizedProbabilisticUNet data/create_data_split.py, as that script does it."""
  full_key_constructor_dict = {}
  for key in sorted(records):
    full_key_constructor_dict.setdefault(key.split("_")[0], []).append(key.split("_")[1])
  patient_ids = sorted(full_key_constructor_dict)
  n = len(patient_ids)
  val_frac = (1 - train_frac) / 2
  num_train, num_val = math.floor(train_frac * n + 0.5), math.floor(val_frac * n + 0.5)
  random.Random(seed).shuffle(patient_ids)
  groups = {"train": patient_ids[:num_train],
            "validation": patient_ids[num_train:num_train + num_val],
            "test": patient_ids[num_train + num_val:]}
  return {s: [f"{p}_{k}" for p in ps for k in full_key_constructor_dict[p]]
          for s, ps in groups.items()}


def test_patient_split_is_the_generalized_prob_unet_script(tmp_path):
  records = make_records(num_patients=20)
  write_pickle(tmp_path / "manual" / "data_lidc.pickle", records)
  builder = build(tmp_path / "data", tmp_path / "manual", config="patient")
  keys = split_keys(builder)
  assert keys == gpu_net_reference(records)
  assert {s: len(v) for s, v in keys.items()} == {"train": 32, "validation": 4, "test": 4}
  patients = {s: {k.split("_")[0] for k in v} for s, v in keys.items()}
  assert not (patients["train"] & patients["validation"]) and not (
      patients["train"] & patients["test"]) and not (patients["validation"] & patients["test"])
  check_examples(builder, records)


def test_patient_split_with_another_fraction(tmp_path):
  records = make_records(num_patients=20)
  write_pickle(tmp_path / "manual" / "data_lidc.pickle", records)
  config = lidc_knegt.LidcKnegtConfig(name="patient60", split="patient", seed=1234,
                                      train_fraction=0.6)
  keys = split_keys(build(tmp_path / "data", tmp_path / "manual", config=config))
  assert keys == gpu_net_reference(records, train_frac=0.6)
  assert [len(v) // 2 for v in keys.values()] == [12, 4, 4]


@pytest.mark.parametrize("layout", ["phiseg", "ccdm"])
def test_hdf5_in_each_label_layout(tmp_path, layout):
  records = make_records(num_patients=12)
  keys = mose_reference(records)
  write_hdf5(tmp_path / "manual" / "data_lidc.hdf5", records, keys, layout)
  builder = build(tmp_path / "data", tmp_path / "manual", config="hdf5")
  for split in lidc_knegt.SPLITS:
    source = builder.as_data_source(split=split)
    assert len(source) == len(keys[split])
    for index, (example, key) in enumerate(zip(source, keys[split])):
      assert example["key"].decode() == f"{lidc_knegt.HDF5_GROUPS[split]}/{index}"
      # The - 0.5 undone exactly: float32 in, float32 out.
      np.testing.assert_array_equal(example["image"][..., 0], records[key]["image"])
      np.testing.assert_array_equal(example["masks"], np.stack(records[key]["masks"], -1))
      assert example["series_uid"].decode() == str(int(records[key]["series_uid"].split(".")[-1]))
      assert example["patient_id"].decode() == ""


# --- bad input: a clear error and nothing written ------------------------------------


def _set(records, key, field, value):
  records = dict(records)
  records[key] = dict(records[key], **{field: value})
  return records


def _drop(records, key, field):
  records = dict(records)
  records[key] = {k: v for k, v in records[key].items() if k != field}
  return records


BAD_PICKLES = {
    "missing field": (lambda r, k: _drop(r, k, "masks"), r"key '{key}': no 'masks'"),
    "image shape": (lambda r, k: _set(r, k, "image", np.zeros((64, 128), np.float32)),
                    r"key '{key}': image has shape \(64, 128\)"),
    "image range": (lambda r, k: _set(r, k, "image", np.full(SIZE, 255.0)),
                    r"key '{key}': image values in \[255, 255\], expected \[0, 1\]"),
    "mask shape": (lambda r, k: _set(r, k, "masks", [np.zeros(SIZE)] * 3 + [np.zeros((128, 64))]),
                   r"key '{key}': masks\[3\] has shape \(128, 64\)"),
    "non-binary mask": (lambda r, k: _set(r, k, "masks", [np.full(SIZE, 255, np.uint8)] * 4),
                        r"key '{key}': masks\[0\]: mask values \[255\] are not binary"),
    "three graders": (lambda r, k: _set(r, k, "masks", [np.zeros(SIZE, np.uint8)] * 3),
                      r"key '{key}': 3 masks \(graders\), expected 4"),
    "value not a dict": (lambda r, k: dict(r, **{k: [1, 2]}), r"key '{key}': value is a list"),
    "series uid": (lambda r, k: _set(r, k, "series_uid", None), r"key '{key}': series_uid None"),
}


@pytest.mark.parametrize("case", sorted(BAD_PICKLES))
def test_bad_pickle_names_file_and_key_and_writes_nothing(tmp_path, case):
  records = make_records(num_patients=6, slices=1)
  key = list(records)[-1]   # the last one: the error must not wait for a later example
  corrupt, message = BAD_PICKLES[case]
  path = write_pickle(tmp_path / "manual" / "data_lidc.pickle", corrupt(records, key))
  with pytest.raises(lidc_knegt.LidcKnegtDataError,
                     match=f"{path}: " + message.format(key=key)):
    build(tmp_path / "data", tmp_path / "manual")
  assert_nothing_prepared(tmp_path / "data")


def test_unreadable_and_wrong_pickles(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "data_lidc.pickle").write_bytes(b"\x80\x04 not a pickle at all")
  with pytest.raises(lidc_knegt.LidcKnegtDataError,
                     match=f"{manual / 'data_lidc.pickle'}: unreadable pickle"):
    build(tmp_path / "data", manual)
  write_pickle(manual / "data_lidc.pickle", [1, 2, 3])
  with pytest.raises(lidc_knegt.LidcKnegtDataError, match="holds a list, expected a dict"):
    build(tmp_path / "data", manual)
  assert_nothing_prepared(tmp_path / "data")


def test_key_in_two_pickles_is_refused(tmp_path):
  records = make_records(num_patients=6, slices=1)
  key = list(records)[0]
  write_pickle(tmp_path / "manual" / "a.pickle", records)
  write_pickle(tmp_path / "manual" / "b.pickle", {key: records[key]})
  with pytest.raises(lidc_knegt.LidcKnegtDataError,
                     match=f"b.pickle: key '{key}' is also in .*a.pickle"):
    build(tmp_path / "data", tmp_path / "manual")
  assert_nothing_prepared(tmp_path / "data")


def test_no_pickle_says_where_the_hdf5_goes(tmp_path):
  records = make_records(num_patients=6, slices=1)
  write_hdf5(tmp_path / "manual" / "data_lidc.hdf5", records, mose_reference(records))
  with pytest.raises(lidc_knegt.LidcKnegtDataError, match="no \\*.pickle .*use lidc_knegt/hdf5"):
    build(tmp_path / "data", tmp_path / "manual")


def _hdf5_with(tmp_path, edit, layout="phiseg"):
  records = make_records(num_patients=12, slices=1)
  path = write_hdf5(tmp_path / "manual" / "data_lidc.hdf5", records, mose_reference(records),
                    layout)
  with h5py.File(path, "a") as f:
    edit(f)
  return path


def _replace(f, name, data):
  del f[name]
  f.create_dataset(name, data=data)


BAD_HDF5 = {
    "series in two splits": (
        lambda f: _replace(f, "test/uids", np.concatenate([f["train/uids"][:1],
                                                           f["test/uids"][1:]])),
        r"series \d+ is in two splits: train \({path}: train index 0\) and test \({path}: "
        r"test index 0\)"),
    "three graders": (lambda f: _replace(f, "val/labels", f["val/labels"][..., :3]),
                      r"{path}: val/labels has 3 graders"),
    "label shape": (lambda f: _replace(f, "val/labels", f["val/labels"][:, :64]),
                    r"{path}: val/labels has shape \(\d+, 64, 128, 4\)"),
    "image shape": (lambda f: _replace(f, "train/images", f["train/images"][:, :, :64]),
                    r"{path}: train/images has shape \(\d+, 128, 64\)"),
    "missing group": (lambda f: f.__delitem__("val"), r"{path}: no group 'val'"),
    "missing uids": (lambda f: f.__delitem__("test/uids"), r"{path}: no test/uids"),
    "non-binary label": (
        lambda f: f["test/labels"].__setitem__((2, 5, 5, 1), 7),
        r"{path}: test index 2: labels: mask values \[0, 1, 7\] are not binary"),
    "image not shifted": (
        lambda f: f["val/images"].__setitem__(1, f["val/images"][1] + 0.5),
        r"{path}: val index 1: image \+ 0.5 has values in"),
}


@pytest.mark.parametrize("case", sorted(BAD_HDF5))
def test_bad_hdf5_names_file_and_index_and_writes_nothing(tmp_path, case):
  edit, message = BAD_HDF5[case]
  path = _hdf5_with(tmp_path, edit)
  with pytest.raises(lidc_knegt.LidcKnegtDataError, match=message.format(path=path)):
    build(tmp_path / "data", tmp_path / "manual", config="hdf5")
  assert_nothing_prepared(tmp_path / "data", config="hdf5")


def test_unreadable_hdf5_and_two_hdf5s(tmp_path):
  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "data_lidc.hdf5").write_bytes(b"this is no hdf5")
  with pytest.raises(lidc_knegt.LidcKnegtDataError,
                     match=f"{manual / 'data_lidc.hdf5'}: unreadable hdf5"):
    build(tmp_path / "data", manual, config="hdf5")
  (manual / "copy.h5").write_bytes(b"")
  with pytest.raises(lidc_knegt.LidcKnegtDataError, match="exactly one .*copy.h5, data_lidc.hdf5"):
    build(tmp_path / "data", manual, config="hdf5")
  assert_nothing_prepared(tmp_path / "data", config="hdf5")


def test_too_few_series_for_the_mose_split(tmp_path):
  records = make_records(num_patients=2, slices=1)
  write_pickle(tmp_path / "manual" / "data_lidc.pickle", records)
  with pytest.raises(lidc_knegt.LidcKnegtDataError, match="2 series: the mose split needs"):
    build(tmp_path / "data", tmp_path / "manual")


# --- the pipeline ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lidc_knegt", "lidc_knegt/patient", "lidc_knegt/hdf5"])
def test_pipeline_prepares_and_reads_float_images(tmp_path, name):
  records = make_records(num_patients=10)
  manual = tmp_path / "manual"
  if name.endswith("hdf5"):
    write_hdf5(manual / "data_lidc.hdf5", records, mose_reference(records))
  else:
    write_pickle(manual / "data_lidc.pickle", records)
  config = pipeline.default_config()
  config.name = name
  config.data_dir = os.fspath(tmp_path / "data")
  config.manual_dir = os.fspath(manual)
  config.image_size = 128
  config.num_graders = 4
  config.read_threads = 1
  pipeline.prepare(config)
  pipeline.prepare(config)   # prepared: a no-op
  train = pipeline.make_train_iterator(config, global_batch_size=4, seed=0,
                                       process_index=0, process_count=1)
  batch = next(train)
  assert batch["image"].shape == (4, 128, 128, 1) and batch["image"].dtype == np.float32
  images = {r["image"].tobytes() for r in records.values()}
  # Floats in [0, 1] as stored, not divided by 255.
  assert all(image[..., 0].tobytes() in images for image in batch["image"])
  seg = batch["segmentation"]
  assert seg.shape == (4, 128, 128, 2)
  np.testing.assert_array_equal(seg.sum(-1), 1.0)
  evaluation = next(pipeline.make_eval_iterator(config, "test", batch_size=8))
  assert evaluation["image"].dtype == np.float32 and 0 <= evaluation["image"].min()
  assert evaluation["image"].max() <= 1 and evaluation["masks"].shape[1:] == (128, 128, 4)
  assert pipeline.num_examples(config, "test") >= len(evaluation["image"])
  assert pipeline.example_ids(config, "test") is None   # no file names: the colab takes the first


def test_series_under_two_patients_is_refused_by_the_patient_split(tmp_path):
  records = make_records(num_patients=20, slices=1)
  keys = sorted(records)
  records[keys[-1]] = dict(records[keys[-1]], series_uid=records[keys[0]]["series_uid"])
  write_pickle(tmp_path / "manual" / "data_lidc.pickle", records)
  with pytest.raises(lidc_knegt.LidcKnegtDataError,
                     match=f"series {records[keys[0]]['series_uid']} is in two splits: .*key "):
    build(tmp_path / "data", tmp_path / "manual", config="patient")
  assert_nothing_prepared(tmp_path / "data", config="patient")
