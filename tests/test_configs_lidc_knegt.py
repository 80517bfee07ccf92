"""`configs/lidc_knegt.py:tiny` trains and evaluates end to end on a pickle fixture."""
import json
import os
import pickle

import numpy as np
import pytest

from conftest import run_cli
from configs import lidc_knegt as lidc_knegt_config
from hpunet_jax import config_lib
from hpunet_jax.infra import writer as writer_lib


def _write_pickle(path, num_series=8, size=128):
  """The PyTorch Prob. U-Net's pickle layout: `<patient>_<slice>` -> image, 4 masks, series_uid;
  a bright disc per image and four graders' slightly different discs (one of them empty)."""
  rng = np.random.default_rng(0)
  rows, cols = np.mgrid[:size, :size]
  data = {}
  for i in range(num_series):
    for s in range(2):
      cy, cx = rng.uniform(50, 78, 2)
      disc = (rows - cy) ** 2 + (cols - cx) ** 2
      image = np.clip(0.2 + 0.2 * rng.random((size, size)) + 0.5 * (disc < 12 ** 2), 0, 1)
      masks = [np.zeros((size, size), np.uint8)] + [
          (disc < (8 + 2 * k) ** 2).astype(np.uint8) for k in range(1, 4)]
      data[f"LIDC-IDRI-{i:04d}_slice{s}"] = {
          "image": image.astype(np.float32), "masks": masks, "series_uid": f"1.3.6.{i}"}
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    pickle.dump(data, f)


def test_full_config_validates_at_128_without_crop_or_translation():
  config = lidc_knegt_config.get_config()
  config_lib.validate(config, num_devices=1)
  assert config.data.name == "lidc_knegt" and config.data.crop_size == 128
  assert config.data.augment.enabled and config.data.augment.max_translation is None


@pytest.mark.slow
def test_tiny_config_trains_and_evaluates_end_to_end(tmp_path):
  manual = tmp_path / "manual"
  _write_pickle(str(manual / "data_lidc.pickle"))
  workdir = tmp_path / "run"
  run_cli("experiments.train", "--config=configs/lidc_knegt.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={tmp_path / 'tfds'}", f"--config.data.manual_dir={manual}",
          timeout=900)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["name"] == "lidc_knegt" and saved["data"]["augment"]["enabled"] is True
  lines = [json.loads(l) for l in (workdir / writer_lib.METRICS_FILE).read_text().splitlines()]
  train_lines = [l for l in lines if "augment_valid_fraction" in l]
  assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
  for line in train_lines:
    assert 0.3 < line["augment_valid_fraction"] <= 1.0 and np.isfinite(line["loss"])
  evaluate = run_cli("experiments.evaluate", f"--workdir={workdir}", "--config.eval.split=test",
                     timeout=900)
  results = json.loads((workdir / "evaluation.json").read_text())
  assert results["split"] == "test" and results["num_samples"] == 16
  assert results["num_images"] == 2   # eval.num_examples of :tiny
  assert "lidc_knegt test" in evaluate.stdout
  assert any(k.startswith("ged") for k in results), sorted(results)
  # The same run scored as MoSE's code scores it: 16 samples, the whole test split.
  evaluate = run_cli("experiments.evaluate", f"--workdir={workdir}", "--config.eval.split=test",
                     "--config.eval.protocol=mose", timeout=900)
  results = json.loads((workdir / "evaluation.json").read_text())
  assert results["protocol"] == "mose" and results["num_samples"] == 16
  assert results["num_images"] == 4   # the test split of 8 series: 2 series x 2 slices
  assert {"ged_16", "hm_iou_16"} <= set(results) and "ncc" not in results
  assert "protocol mose" in evaluate.stdout
