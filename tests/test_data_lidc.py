"""Tests of the `lidc_crops` builder on tiny fixtures written in the release's layouts."""
import os
import tarfile

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from hpunet_jax.data import lidc
from hpunet_jax.data import pipeline

tfds.disable_progress_bar()

# (patient, z, crop) per split folder; z as on disk.
LAYOUT = {
    "train": [("LIDC-0001", "-123.5", 0), ("LIDC-0001", "-120.0", 1), ("LIDC-0002", "17.25", 0)],
    "val": [("LIDC-0003", "-80.0", 2)],
    "test": [("LIDC-0004", "5.0", 0)],
}


def image_pixels(size, crop):
  height, width = size
  return ((np.arange(height * width).reshape(height, width) * 7 + crop) % 256).astype(np.uint8)


def mask_pixels(size, grader):
  """Grader k marks the top k + 1 rows, so the graders' order can be checked."""
  mask = np.zeros(size, np.uint8)
  mask[:grader + 1] = 255
  return mask


def write_png(path, array):
  Image.fromarray(np.asarray(array)).save(path, format="PNG")


def write_split(split_dir, items, size, num_graders=4, first_grader=0):
  for patient, z, crop in items:
    for sub in ("images", "gt"):
      os.makedirs(os.path.join(split_dir, sub, patient), exist_ok=True)
    stem = f"z-{z}_c{crop}"
    write_png(os.path.join(split_dir, "images", patient, f"{stem}.png"), image_pixels(size, crop))
    for k in range(num_graders):
      write_png(os.path.join(split_dir, "gt", patient, f"{stem}_l{k + first_grader}.png"),
                    mask_pixels(size, k))


def write_tree(root, size=(12, 10), num_graders=4):
  """Extracted folders `root/{train,val,test}/...`; patient LIDC-0002 numbers graders l1..l4."""
  for folder, items in LAYOUT.items():
    for item in items:
      write_split(os.path.join(root, folder), [item], size, num_graders,
                  first_grader=1 if item[0] == "LIDC-0002" else 0)
  return root


def make_tarballs(tree, out_dir, leading_folder):
  os.makedirs(out_dir, exist_ok=True)
  for folder in LAYOUT:
    with tarfile.open(os.path.join(out_dir, f"{folder}.tar.gz"), "w:gz") as tar:
      for sub in ("images", "gt"):
        arcname = f"{folder}/{sub}" if leading_folder[folder] else sub
        tar.add(os.path.join(tree, folder, sub), arcname=arcname)
  return out_dir


def build(data_dir, manual_dir, config="custom"):
  if isinstance(config, str):
    builder = tfds.builder(f"lidc_crops/{config}", data_dir=data_dir, file_format="array_record")
  else:
    builder = lidc.LidcCrops(config=config, data_dir=data_dir, file_format="array_record")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir)))
  return builder


def by_key(source):
  return {(e["patient_id"].decode(), e["z"].decode(), int(e["crop"])): e for e in source}


def check_examples(builder, size, num_graders=4):
  assert {s: i.num_examples for s, i in builder.info.splits.items()} == {
      "train": 3, "validation": 1, "test": 1}
  train = by_key(builder.as_data_source(split="train"))
  assert set(train) == {(p, z, c) for p, z, c in LAYOUT["train"]}
  for (_, _, crop), example in train.items():
    assert example["image"].dtype == np.uint8 and example["image"].shape == size + (1,)
    np.testing.assert_array_equal(example["image"][..., 0], image_pixels(size, crop))
    assert example["masks"].shape == size + (num_graders,)
    # Binary {0, 1}, graders in numeric order whether on disk l0.. or l1...
    for k in range(num_graders):
      np.testing.assert_array_equal(example["masks"][..., k], mask_pixels(size, k) // 255)
  test = by_key(builder.as_data_source(split="test"))
  assert list(test) == [("LIDC-0004", "5.0", 0)]


def assert_not_prepared(data_dir, builder_fn):
  assert not builder_fn().is_prepared()
  leftovers = [p for p in _walk(data_dir) if p.endswith("dataset_info.json")]
  assert not leftovers


def _walk(root):
  for dirpath, _, files in os.walk(root):
    for f in files:
      yield os.path.join(dirpath, f)


def test_release_from_manual_tarballs_with_and_without_leading_folder(tmp_path):
  tree = write_tree(tmp_path / "tree", size=(180, 180))
  manual = make_tarballs(tree, tmp_path / "manual",
                         leading_folder={"train": True, "val": False, "test": True})
  builder = build(tmp_path / "data", manual, config="default")
  check_examples(builder, (180, 180))
  assert builder.info.features["image"].shape == (180, 180, 1)
  assert builder.info.features["masks"].shape == (180, 180, 4)


def test_release_downloads_when_manual_dir_lacks_data(tmp_path, monkeypatch):
  tree = write_tree(tmp_path / "tree", size=(180, 180))
  tarballs = make_tarballs(tree, tmp_path / "bucket",
                           leading_folder={"train": True, "val": True, "test": False})
  requested = {}

  def fake_download(self, urls):  # The network is replaced by local files.
    del self
    requested.update(urls)
    return {split: tarballs / os.path.basename(url) for split, url in urls.items()}

  monkeypatch.setattr(tfds.download.DownloadManager, "download", fake_download)
  builder = tfds.builder("lidc_crops", data_dir=tmp_path / "data", file_format="array_record")
  builder.download_and_prepare()
  assert requested == {
      "train": "https://storage.googleapis.com/hpunet-data/lidc_crops/train.tar.gz",
      "validation": "https://storage.googleapis.com/hpunet-data/lidc_crops/val.tar.gz",
      "test": "https://storage.googleapis.com/hpunet-data/lidc_crops/test.tar.gz",
  }
  check_examples(builder, (180, 180))


def test_custom_config_infers_size_and_graders_from_extracted_folders(tmp_path):
  tree = write_tree(tmp_path / "manual", size=(16, 20), num_graders=3)
  builder = build(tmp_path / "data", tree, config="custom")
  check_examples(builder, (16, 20), num_graders=3)


def test_custom_config_with_fixed_sizes(tmp_path):
  tree = write_tree(tmp_path / "manual", size=(16, 20), num_graders=3)
  config = lidc.LidcCropsConfig(name="mine", image_size=(16, 20), num_graders=3)
  builder = build(tmp_path / "data", tree, config=config)
  check_examples(builder, (16, 20), num_graders=3)
  assert builder.info.features["masks"].shape == (16, 20, 3)


def test_custom_config_needs_manual_dir(tmp_path):
  with pytest.raises(lidc.LidcDataError, match="manual_dir only"):
    tfds.builder("lidc_crops/custom", data_dir=tmp_path / "data").download_and_prepare()


def _remove(path):
  os.remove(path)


def _write(path, array):
  write_png(path, array)


# Each case: (damage to apply to the extracted tree, file named in the error).
ERROR_CASES = {
    "image_without_masks": (
        lambda t: _remove(t / "train/gt/LIDC-0001/z--120.0_c1_l2.png"),
        "train/images/LIDC-0001/z--120.0_c1.png"),
    "mask_without_image": (
        lambda t: _remove(t / "val/images/LIDC-0003/z--80.0_c2.png"),
        "val/gt/LIDC-0003/z--80.0_c2_l0.png"),
    "mixed_numbering": (
        lambda t: _write(t / "test/gt/LIDC-0004/z-5.0_c0_l4.png", mask_pixels((12, 10), 0)),
        "test/images/LIDC-0004/z-5.0_c0.png"),
    "image_wrong_size": (
        lambda t: _write(t / "test/images/LIDC-0004/z-5.0_c0.png", image_pixels((12, 11), 0)),
        "test/images/LIDC-0004/z-5.0_c0.png"),
    "mask_size_differs_from_image": (
        lambda t: _write(t / "test/gt/LIDC-0004/z-5.0_c0_l3.png", mask_pixels((11, 10), 0)),
        "test/gt/LIDC-0004/z-5.0_c0_l3.png"),
    "mask_not_binary": (
        lambda t: _write(t / "val/gt/LIDC-0003/z--80.0_c2_l1.png",
                         np.full((12, 10), 128, np.uint8)),
        "val/gt/LIDC-0003/z--80.0_c2_l1.png"),
    "unreadable_png": (
        lambda t: (t / "test/gt/LIDC-0004/z-5.0_c0_l0.png").write_bytes(b"not a png"),
        "test/gt/LIDC-0004/z-5.0_c0_l0.png"),
    "split_folder_missing": (
        lambda t: os.rename(t / "val", t / "validation"),
        "val"),
    "images_folder_missing": (
        lambda t: os.rename(t / "test/images", t / "test/imgs"),
        "test/images"),
}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_bad_data_stops_generation_naming_the_file(tmp_path, case):
  damage, named = ERROR_CASES[case]
  tree = write_tree(tmp_path / "manual", size=(12, 10))
  damage(tree)
  config = lidc.LidcCropsConfig(name="mine", image_size=(12, 10), num_graders=4)
  with pytest.raises(lidc.LidcDataError) as error:
    build(tmp_path / "data", tree, config=config)
  assert os.fspath(tree / named) in str(error.value)
  assert_not_prepared(tmp_path / "data", lambda: lidc.LidcCrops(
      config=config, data_dir=tmp_path / "data", file_format="array_record"))


def test_inferred_grader_count_names_the_first_image_when_it_lacks_a_mask(tmp_path):
  tree = write_tree(tmp_path / "manual", size=(12, 10))
  first = "train/images/LIDC-0001/z--120.0_c1.png"   # the first training image in order
  _remove(tree / "train/gt/LIDC-0001/z--120.0_c1_l3.png")
  with pytest.raises(lidc.LidcDataError) as error:
    build(tmp_path / "data", tree, config="custom")
  message = str(error.value)
  assert message.startswith(os.fspath(tree / first)) and "\n" not in message
  assert "found l0, l1, l2" in message and "mix" not in message


def test_error_in_a_tarball_leaves_nothing_prepared(tmp_path):
  tree = write_tree(tmp_path / "tree", size=(180, 180))
  (tree / "test/gt/LIDC-0004/z-5.0_c0_l0.png").write_bytes(b"\x89PNG\r\n\x1a\ngarbage")
  manual = make_tarballs(tree, tmp_path / "manual",
                         leading_folder={"train": True, "val": True, "test": True})
  with pytest.raises(lidc.LidcDataError, match=r"z-5\.0_c0_l0\.png: unreadable PNG"):
    build(tmp_path / "data", manual, config="default")
  assert_not_prepared(tmp_path / "data", lambda: tfds.builder(
      "lidc_crops", data_dir=tmp_path / "data", file_format="array_record"))


def test_custom_sizes_must_agree_within_the_dataset(tmp_path):
  tree = write_tree(tmp_path / "manual", size=(12, 10))
  write_split(tree / "val", [("LIDC-0005", "1.0", 0)], size=(14, 10))
  with pytest.raises(lidc.LidcDataError, match="LIDC-0005/z-1.0_c0.png: image is 14x10"):
    build(tmp_path / "data", tree, config="custom")


def test_pipeline_prepares_and_reads_custom_data(tmp_path):
  tree = write_tree(tmp_path / "manual", size=(16, 20), num_graders=3)
  config = pipeline.default_config()
  config.name = "lidc_crops/custom"
  config.data_dir = os.fspath(tmp_path / "data")
  config.manual_dir = os.fspath(tree)
  config.crop_size = 8
  pipeline.prepare(config)
  pipeline.prepare(config)  # Already prepared: a no-op.
  assert pipeline.num_examples(config, "train") == 3
  batch = next(pipeline.make_eval_iterator(config, "test", batch_size=4))
  assert batch["masks"].shape == (1, 8, 8, 3)
  np.testing.assert_allclose(batch["image"][0, ..., 0], image_pixels((16, 20), 0)[4:12, 6:14] / 255,
                             rtol=1e-6)

  config.num_graders = 4
  with pytest.raises(ValueError, match="data.num_graders=4"):
    pipeline.prepare(config)
  config.num_graders = 3
  config.image_size = (16, 21)
  with pytest.raises(ValueError, match="data.image_size"):
    pipeline.prepare(config)


# PNG modes other tools write. Each: (Pillow image, read as mask?, expected uint8 [H, W, 1] or
# the error's words).
_EYE = np.eye(6, dtype=bool)


def _palette(colours):
  image = Image.fromarray(_EYE.astype(np.uint8)).convert("P")
  image.putpalette(colours)
  return image


PNG_MODE_CASES = {
    "1bit_mask": (Image.fromarray(_EYE), True, _EYE * 255),
    "16bit_mask_0_1": (Image.fromarray(_EYE.astype(np.uint16)), True, _EYE * 255),
    "16bit_mask_0_65535": (Image.fromarray(_EYE.astype(np.uint16) * 65535), True, _EYE * 255),
    "16bit_mask_not_binary": (Image.fromarray(_EYE.astype(np.uint16) * 300), True,
                              "16-bit mask values [0, 300] are not binary"),
    "16bit_image": (Image.fromarray(_EYE.astype(np.uint16) * 1000), False,
                    "16-bit image (PNG mode I;16)"),
    "gray_palette": (_palette([0, 0, 0, 255, 255, 255]), True, _EYE * 255),
    "colour_palette": (_palette([0, 0, 0, 255, 0, 0]), True, "has 3 channels (PNG mode P)"),
    "gray_rgb_image": (Image.fromarray(np.repeat((_EYE * 200).astype(np.uint8)[..., None], 3, -1)),
                       False, _EYE * 200),
    "colour_rgb_image": (Image.fromarray(np.stack([_EYE * 200, _EYE * 0, _EYE * 0], -1)
                                         .astype(np.uint8)), False,
                         "has 3 channels (PNG mode RGB), expected 1"),
    "tiff_named_png": (None, False, "unreadable PNG (not a PNG file)"),
}


@pytest.mark.parametrize("case", sorted(PNG_MODE_CASES))
def test_png_modes_are_converted_or_refused_naming_file_and_mode(tmp_path, case):
  image, is_mask, expected = PNG_MODE_CASES[case]
  path = tmp_path / "z-1.0_c0.png"
  if image is None:  # A TIFF saved under a .png name is not read as a PNG.
    Image.fromarray(_EYE.astype(np.float32)).save(path, format="TIFF")
  else:
    image.save(path, format="PNG")
  if isinstance(expected, str):
    with pytest.raises(lidc.LidcDataError) as error:
      lidc._read_png(path, 1, mask=is_mask)
    assert str(error.value).startswith(f"{path}: ")
    assert expected in str(error.value)
  else:
    array = lidc._read_png(path, 1, mask=is_mask)
    assert array.dtype == np.uint8
    np.testing.assert_array_equal(array, expected.astype(np.uint8)[..., None])


def test_one_bit_masks_build_a_dataset(tmp_path):
  """`Image.fromarray(bool_mask).save()` writes 1-bit PNGs: they are read as {0, 1} masks."""
  tree = write_tree(tmp_path / "manual", size=(12, 10))
  path = tree / "test/gt/LIDC-0004/z-5.0_c0_l2.png"
  Image.fromarray(mask_pixels((12, 10), 2) > 0).save(path)
  assert Image.open(path).mode == "1"
  test = build(tmp_path / "data", tree, config="custom").as_data_source(split="test")
  np.testing.assert_array_equal(test[0]["masks"][..., 2], mask_pixels((12, 10), 2) > 0)


def test_plain_tfds_calls_build_and_read_array_record(tmp_path):
  """`tfds.builder` / `tfds.data_source` without file_format write and read array_record."""
  tree = write_tree(tmp_path / "manual", size=(12, 10))
  builder = tfds.builder("lidc_crops/custom", data_dir=tmp_path / "data")
  assert builder.info.file_format == tfds.core.FileFormat.ARRAY_RECORD
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=os.fspath(tree)))
  test = tfds.data_source("lidc_crops/custom", data_dir=tmp_path / "data", split="test")
  np.testing.assert_array_equal(test[0]["image"][..., 0], image_pixels((12, 10), 0))
