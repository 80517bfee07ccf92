"""The LIDC recipe: the full config's step traced abstractly, `:tiny` run end to end."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from conftest import run_cli
from configs import lidc
from hpunet_jax import config_lib, objective
from hpunet_jax.infra import writer as writer_lib
from hpunet_jax.training import state as train
from hpunet_jax.data import augment
from hpunet_jax.model import count_params, make_model


def test_full_and_tiny_configs_validate_and_share_the_data_recipe():
  """`:tiny` shrinks the network and the schedule, not the data, crops or augmentation."""
  full, tiny = lidc.get_config(), lidc.get_config("tiny")
  for config in (full, tiny):
    config_lib.validate(config, num_devices=1)
    assert config.data.augment.enabled
  assert tiny.data.to_dict() == full.data.to_dict()
  with pytest.raises(ValueError, match="unknown argument"):
    lidc.get_config("huge")


@pytest.mark.slow
def test_full_lidc_step_with_augmentation_traces_to_the_model_crop():
  """The paper-size model only abstractly (jax.eval_shape): 180x180 in, 128x128 crops to
  the model, all metrics scalars, the release's parameter count."""
  config = lidc.get_config()
  config.train.batch_size = 2
  model = make_model(config_lib.model_config(config))
  sds = jax.ShapeDtypeStruct
  batch = {"image": sds((2, 180, 180, 1), jnp.float32),
           "segmentation": sds((2, 180, 180, 2), jnp.float32)}
  spec = augment.output_spec(config.data, batch)
  assert spec["image"].shape == (2, 128, 128, 1) and spec["mask"].shape == (2, 128, 128)
  params = jax.eval_shape(model.init, jax.random.key(0), sds((1, 128, 128, 1), jnp.float32),
                          sds((1, 128, 128, 2), jnp.float32))
  assert count_params(params) in (21_877_230, 20_584_302)   # docs/model.md, with/without
  params = {"net": params, "lagrange_raw": sds((), jnp.float32)}
  optimizer, _ = train.make_optimizer(config.optim)
  state = train.TrainState(step=sds((), jnp.int32), params=params,
                           opt_state=jax.eval_shape(optimizer.init, params),
                           geco=objective.init_geco_state(), rng=jax.random.key(0))
  step = train.make_train_step(config)
  new_state, metrics = jax.eval_shape(step.jitted, state, batch)
  assert jax.tree.map(lambda x: x.shape, new_state.params) == jax.tree.map(
      lambda x: x.shape, params)
  assert metrics["augment_valid_fraction"].shape == () and metrics["num_valid_pixels"].shape == ()


def _write_lidc_tree(root, size=180):
  """DeepMind's layout (`<split>/images/<patient>/z-<z>_c<crop>.png`, masks `..._l<k>.png`)
  with a bright disc per image and four graders' slightly different discs."""
  rng = np.random.default_rng(0)
  rows, cols = np.mgrid[:size, :size]
  for split, count in (("train", 4), ("val", 2), ("test", 2)):
    for i in range(count):
      patient = f"LIDC-{split}-{i}"
      for sub in ("images", "gt"):
        os.makedirs(os.path.join(root, split, sub, patient), exist_ok=True)
      cy, cx = rng.uniform(70, 110, 2)
      disc = (rows - cy) ** 2 + (cols - cx) ** 2
      image = np.clip(60 + 40 * rng.random((size, size)) + 120 * (disc < 15 ** 2), 0, 255)
      Image.fromarray(image.astype(np.uint8)).save(
          os.path.join(root, split, "images", patient, "z-0.0_c0.png"))
      for k in range(4):
        mask = (disc < (11 + 2 * k) ** 2).astype(np.uint8) * 255
        Image.fromarray(mask).save(os.path.join(root, split, "gt", patient, f"z-0.0_c0_l{k}.png"))


@pytest.mark.slow
def test_tiny_lidc_recipe_trains_end_to_end_with_augmentation(tmp_path):
  """`configs/lidc.py:tiny` on LIDC-layout 180x180 files: augmented crops, masked loss."""
  manual = tmp_path / "manual"
  _write_lidc_tree(str(manual))
  workdir = tmp_path / "run"
  run_cli("experiments.train", "--config=configs/lidc.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={tmp_path / 'tfds'}", f"--config.data.manual_dir={manual}",
          timeout=900)
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["data"]["augment"]["enabled"] is True
  lines = [json.loads(l) for l in (workdir / writer_lib.METRICS_FILE).read_text().splitlines()]
  train_lines = [l for l in lines if "augment_valid_fraction" in l]
  assert [l["step"] for l in train_lines] == [1, 2, 3, 4]
  for line in train_lines:
    assert 0.5 < line["augment_valid_fraction"] <= 1.0
    assert np.isfinite(line["loss"])
