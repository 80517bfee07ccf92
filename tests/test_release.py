"""Importing DeepMind's released TF1 checkpoint (release.py, tf_checkpoint.py).

The fixture `tests/fixtures/release_small/` is a real TF V2 checkpoint written
once by TensorFlow 2.21 (`tf.compat.v1.train.Saver`) from the release's own,
unmodified `model.py` with Sonnet 1.36, for a small config (channels
(4, 6, 8, 8), inner channels (2, 6, 4, 4), latent dims (2, 1), 2 blocks per
level, 2 convs per block), connected as the colab does, plus what training
adds (Adam's slots, beta powers, GECO's Lagrange multiplier, global_step).
Every variable holds distinct random values. `expected.npz` holds them by
name and the release graph's logits for a fixed input with every scale at its
mean. How to regenerate it: `tests/fixtures/make_release_fixture.py` (a
scratch virtualenv with TensorFlow; neither the package nor the tests need
TensorFlow).

It is not the real LIDC checkpoint, which these machines cannot download:
the name map is checked against the release's naming for this config, and
the real file differs only in sizes.
"""
import json
import os
import shutil
import tarfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from hpunet_jax import config_lib, release
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import checkpoint, parallel
from hpunet_jax.release import tf_checkpoint
from hpunet_jax.training import loop
from hpunet_jax.training import state as train_lib
from hpunet_jax.data import pipeline
from hpunet_jax.model import HPUNetConfig, make_model
import test_data_lidc  # the tiny LIDC layout writer (tests/ is on sys.path under pytest)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "release_small")
PREFIX = os.path.join(FIXTURE, "tf_graph_data.ckpt")
FIXTURE_MODEL = dict(latent_dims=(2, 1), channels_per_block=(4, 6, 8, 8),
                     down_channels_per_block=(2, 6, 4, 4), num_classes=2, convs_per_block=2,
                     blocks_per_level=2)
CONFIG = HPUNetConfig(**FIXTURE_MODEL)
NUM_MODEL_TENSORS = 172   # 39 convs per core, 7 + logits in f_comb, w and b each


@pytest.fixture(scope="module")
def expected():
  with np.load(os.path.join(FIXTURE, "expected.npz")) as data:
    arrays = dict(data)
  variables = {k[len("variable:"):]: v for k, v in arrays.items() if k.startswith("variable:")}
  return arrays, variables


@pytest.fixture(scope="module")
def converted():
  return release.convert(tf_checkpoint.read(PREFIX), CONFIG)


def experiment_config():
  """The experiment config of an imported fixture: its model, fake 8x8 data."""
  config = config_lib.base_config()
  config.model.update(FIXTURE_MODEL)
  config.data.name = "fake"
  config.data.crop_size = None
  config.data.image_size = 8
  config.data.num_graders = 4
  config.train.batch_size = 2
  config.eval.batch_size = 4
  config.eval.num_samples = 4
  return config


def test_reader_reads_what_tensorflow_wrote(expected):
  _, variables = expected
  listing = tf_checkpoint.variables(PREFIX)
  assert len(listing) == 522
  assert listing["model/HPUNet/prior/conv_2d/w"] == ((3, 3, 1, 2), "float32")
  assert listing["global_step"] == ((), "int64")
  tensors = tf_checkpoint.read(PREFIX)
  assert sorted(tensors) == sorted(listing)
  for name, value in variables.items():
    assert tensors[name].dtype == value.dtype, name
    np.testing.assert_array_equal(tensors[name], value, err_msg=name)
  assert int(tensors["global_step"]) == 240_000


def test_name_map_follows_sonnet_creation_order():
  """Spot checks worked out by hand from model.py / unet_utils.py for the fixture's config."""
  mapping = release.name_map(CONFIG, image_channels=1)
  assert len(mapping) == NUM_MODEL_TENSORS
  assert len(set(mapping.values())) == NUM_MODEL_TENSORS      # one parameter per tensor
  prior, root = "model/HPUNet/prior", "hpunet/~/prior"
  expected = {
      # Level 0 (4 out, 2 inner): block 0 has a skip (1 -> 4) and a projection.
      "conv_2d": "encoder_level_0_block_0/conv_0",
      "conv_2d_1": "encoder_level_0_block_0/conv_1",
      "conv_2d_2": "encoder_level_0_block_0/skip",
      "conv_2d_3": "encoder_level_0_block_0/project",
      "conv_2d_4": "encoder_level_0_block_1/conv_0",   # 4 -> 4: no skip
      "conv_2d_6": "encoder_level_0_block_1/project",
      # Level 1 (6 out, 6 inner): no projection.
      "conv_2d_9": "encoder_level_1_block_0/skip",
      "conv_2d_11": "encoder_level_1_block_1/conv_1",
      "conv_2d_12": "encoder_level_2_block_0/conv_0",
      "conv_2d_21": "encoder_level_3_block_0/project",  # 8 -> 8: no skip
      # The latent head before its decoder level's blocks.
      "conv_2d_25": "latent_0",
      "conv_2d_26": "decoder_level_0_block_0/conv_0",
      "conv_2d_28": "decoder_level_0_block_0/skip",
      "conv_2d_33": "latent_1",
      "conv_2d_36": "decoder_level_1_block_0/skip",
      "conv_2d_38": "decoder_level_1_block_1/conv_1",
  }
  for sonnet, haiku in expected.items():
    assert mapping[f"{prior}/{sonnet}/w"] == (f"{root}/{haiku}", "w"), sonnet
    assert mapping[f"{prior}/{sonnet}/b"] == (f"{root}/{haiku}", "b"), sonnet
  assert mapping["model/HPUNet/posterior/conv_2d_2/w"] == (
      "hpunet/~/posterior/encoder_level_0_block_0/skip", "w")
  assert mapping["model/HPUNet/f_comb/conv_2d_2/w"] == ("hpunet/~/f_comb/level_3_block_0/skip",
                                                        "w")
  assert mapping["model/HPUNet/f_comb/logits/b"] == ("hpunet/~/f_comb/logits", "b")
  # The LIDC release. Per core: 24 encoder blocks of 3 convs + projection, a
  # skip in the first block of levels 0-3; per scale a head and 3 blocks, the
  # first with a skip: 100 + 4 * 14 = 156 convs. f_comb: 3 levels of 13, logits.
  lidc = release.name_map(HPUNetConfig(), image_channels=1)
  assert len(lidc) == (2 * 156 + 39 + 1) * 2
  assert "model/HPUNet/posterior/conv_2d_155/w" in lidc
  assert "model/HPUNet/posterior/conv_2d_156/w" not in lidc
  assert lidc["model/HPUNet/f_comb/conv_2d_38/b"] == ("hpunet/~/f_comb/level_7_block_2/project",
                                                      "b")
  params = jax.eval_shape(make_model(HPUNetConfig()).init, jax.random.key(0),
                          jnp.zeros((1, 128, 128, 1)), jnp.zeros((1, 128, 128, 2)))
  assert sorted(lidc.values()) == sorted((m, p) for m, v in params.items() for p in v)


def test_every_tensor_lands_in_the_parameter_the_map_says(converted, expected):
  _, variables = expected
  mapping = release.name_map(CONFIG, image_channels=1)
  params = converted.params
  assert sum(len(v) for v in params.values()) == NUM_MODEL_TENSORS
  for name, (module, param) in mapping.items():
    np.testing.assert_array_equal(params[module][param], variables[name], err_msg=name)
  # The values are distinct, so a swapped pair would have failed above.
  flat = {n: v.tobytes() for n, v in variables.items() if n in mapping}
  assert len(set(flat.values())) == len(flat)
  np.testing.assert_array_equal(converted.lagrange_raw,
                                variables[f"model/HPUNet/{release.LAGRANGE_MULTIPLIER}"])
  assert converted.release_step == 240_000 and converted.scope == "model/HPUNet"
  assert {k: len(v) for k, v in converted.skipped.items()} == {
      release.SKIP_OPTIMIZER: 2 * (NUM_MODEL_TENSORS + 1) + 2,   # Adam, Adam_1; beta powers
      release.SKIP_GLOBAL_STEP: 1, release.SKIP_LAGRANGE: 1}


def test_imported_model_reproduces_the_release_graph(converted, expected):
  """Logits of the JAX model with the imported weights = the release's TF graph's."""
  arrays, _ = expected
  model = make_model(CONFIG)
  images, segs = jnp.asarray(arrays["image"]), jnp.asarray(arrays["segmentation"])
  sample = model.sample(converted.params, jax.random.key(0), images, mean=True)[0]
  np.testing.assert_allclose(sample, arrays["sample_mean_logits"], atol=1e-5)
  recon = model.reconstruct(converted.params, jax.random.key(0), images, segs, mean=True)
  np.testing.assert_allclose(recon, arrays["reconstruction_mean_logits"], atol=1e-5)


def test_renamed_missing_or_reshaped_tensors_stop_the_import():
  tensors = tf_checkpoint.read(PREFIX)
  tensors["model/HPUNet/prior/conv_2d_99/w"] = tensors.pop("model/HPUNet/prior/conv_2d_5/w")
  del tensors["model/HPUNet/f_comb/logits/b"]
  tensors["model/HPUNet/posterior/conv_2d_7/b"] = np.zeros(7, np.float32)
  tensors["model/HPUNet/extra_layer/w"] = np.zeros(3, np.float32)
  with pytest.raises(release.ReleaseImportError) as error:
    release.convert(tensors, CONFIG)
  message = str(error.value)
  for name in ("model/HPUNet/prior/conv_2d_99/w", "model/HPUNet/extra_layer/w",
               "model/HPUNet/prior/conv_2d_5/w", "model/HPUNet/f_comb/logits/b",
               "model/HPUNet/posterior/conv_2d_7/b (7,)"):
    assert name in message, name
  assert "map to no parameter (2)" in message and "lacks (2)" in message
  # A config that is not the checkpoint's: every shape that differs is named.
  with pytest.raises(release.ReleaseImportError, match="shapes that differ"):
    release.convert(tf_checkpoint.read(PREFIX),
                    HPUNetConfig(**dict(FIXTURE_MODEL, channels_per_block=(4, 6, 8, 10))))


def test_corrupt_files_are_rejected_naming_the_tensor(tmp_path):
  entries, _ = tf_checkpoint.read_index(PREFIX)
  victim = "model/HPUNet/prior/conv_2d_5/w"
  shutil.copytree(FIXTURE, tmp_path / "bad")
  data = tmp_path / "bad" / "tf_graph_data.ckpt.data-00000-of-00001"
  raw = bytearray(data.read_bytes())
  raw[entries[victim].offset + 3] ^= 0x40
  data.write_bytes(bytes(raw))
  with pytest.raises(tf_checkpoint.CheckpointFormatError, match=f"{victim}: CRC32C mismatch"):
    tf_checkpoint.read(tmp_path / "bad" / "tf_graph_data.ckpt")
  index = tmp_path / "bad" / "tf_graph_data.ckpt.index"
  raw = bytearray(index.read_bytes())
  raw[raw.index(b"logits")] ^= 0x01                    # a renamed key breaks the block's CRC
  index.write_bytes(bytes(raw))
  with pytest.raises(tf_checkpoint.CheckpointFormatError, match="CRC32C mismatch in the block"):
    tf_checkpoint.read(tmp_path / "bad" / "tf_graph_data.ckpt")
  index.write_bytes(b"not a checkpoint" * 4)
  with pytest.raises(tf_checkpoint.CheckpointFormatError, match="bad table magic"):
    tf_checkpoint.variables(tmp_path / "bad" / "tf_graph_data.ckpt")


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
  """A workdir written by import_release from the fixture's tarball."""
  tmp = tmp_path_factory.mktemp("release")
  tarball = tmp / "checkpoint.tar.gz"
  with tarfile.open(tarball, "w:gz") as tar:   # laid out as the release's: checkpoint/...
    for name in ("tf_graph_data.ckpt.index", "tf_graph_data.ckpt.data-00000-of-00001"):
      tar.add(os.path.join(FIXTURE, name), arcname=f"checkpoint/{name}")
  workdir = str(tmp / "imported")
  release.import_release(str(tarball), workdir, experiment_config())
  return workdir


def test_import_writes_a_workdir_that_restores_like_a_run(imported, converted):
  config, model, params, step = workdir_lib.Run(imported).params()
  assert step == 0 and model.config == make_model(CONFIG).config
  for module, values in converted.params.items():
    for name, value in values.items():
      np.testing.assert_array_equal(params[module][name], value)
  saved = json.load(open(os.path.join(imported, "config.json")))
  assert saved["model"]["channels_per_block"] == [4, 6, 8, 8]
  record = json.load(open(os.path.join(imported, release.IMPORT_FILE)))
  assert record["mapping"]["model/HPUNet/prior/conv_2d_25/w"] == "hpunet/~/prior/latent_0/w"
  with pytest.raises(FileExistsError):
    release.import_release(PREFIX, imported, experiment_config())
  del config


def test_fine_tuning_starts_from_the_imported_weights(imported, converted, tmp_path):
  """`train.init_from`: step 0, the imported network, a fresh optimiser and GECO state."""
  config = experiment_config()
  config.train.init_from = imported
  mesh = parallel.make_mesh()
  example = {"image": np.zeros((1, 8, 8, 1), np.float32),
             "segmentation": np.zeros((1, 8, 8, 2), np.float32)}
  fresh = train_lib.create_train_state(config, jax.random.key(1), example, mesh=mesh)
  state = loop._init_params_from(imported, fresh, mesh)  # pylint: disable=protected-access
  assert int(state.step) == 0
  for module, values in converted.params.items():
    for name, value in values.items():
      np.testing.assert_array_equal(state.params["net"][module][name], value)
  np.testing.assert_array_equal(state.params["lagrange_raw"], fresh.params["lagrange_raw"])
  for a, b in zip(jax.tree.leaves(state.opt_state), jax.tree.leaves(fresh.opt_state)):
    np.testing.assert_array_equal(a, b)
  other = experiment_config()
  other.model.channels_per_block = (4, 6, 8, 10)
  other_state = train_lib.create_train_state(other, jax.random.key(1), example, mesh=mesh)
  with pytest.raises(ValueError, match="train.init_from"):
    loop._init_params_from(imported, other_state, mesh)  # pylint: disable=protected-access


@pytest.mark.slow
def test_colab_figures(imported, tmp_path):
  config, model, params, _ = workdir_lib.Run(imported).params()
  paths, arrays = release.draw_colab_figures(model, params, config, "test",
                                             str(tmp_path / "colab"), num_samples=4)
  assert [os.path.basename(p) for p in paths] == [
      "colab.png", "colab_coarsest_free.png", "colab_finest_free.png"]
  assert list(arrays["indices"]) == list(range(10))               # fake data: no patients
  assert arrays["samples"].shape == (4, 10, 8, 8)
  assert arrays["reconstruction"].shape == (10, 8, 8)
  assert arrays["samples_finest_free"].shape == (4, 10, 8, 8)
  assert release.colab_variants(2)["_coarsest_free"][0] == (False, True)
  assert release.colab_variants(4)["_finest_free"][0] == (True, True, True, False)


def test_colab_picks_the_first_image_of_each_patient(tmp_path):
  config = pipeline.default_config()
  config.name = "lidc_crops/custom"
  config.data_dir = os.fspath(tmp_path / "data")
  config.manual_dir = os.fspath(test_data_lidc.write_tree(tmp_path / "manual", size=(8, 8)))
  pipeline.prepare(config)
  ids = pipeline.example_ids(config, "train")
  picked = [ids[i] for i in release.colab_indices(config, "train")]
  # LIDC-0001 has z-120.0_c1 and z-123.5_c0: the first file name is z--120.0_c1.png.
  assert picked == [("LIDC-0001", "-120.0", 1), ("LIDC-0002", "17.25", 0)]
  assert [ids[i][0] for i in release.colab_indices(config, "train", num_patients=1)] == [
      "LIDC-0001"]


@pytest.mark.slow
def test_import_cli(tmp_path):
  workdir = str(tmp_path / "run")
  overrides = [f"--config.model.{k}={','.join(map(str, v)) if isinstance(v, tuple) else v}"
               for k, v in FIXTURE_MODEL.items()]
  proc = run_cli("experiments.import_release", f"--checkpoint={FIXTURE}", f"--workdir={workdir}",
                 "--config.data.name=fake", "--config.data.image_size=16",
                 "--config.data.crop_size=16", "--config.data.num_graders=4", *overrides,
                 timeout=600)
  assert "Imported 172 tensors (14,006 parameters)" in proc.stdout
  assert "optimiser state (a fresh optimiser is used): 348 tensor(s)" in proc.stdout
  assert checkpoint.Checkpointer(os.path.join(workdir, "checkpoints")).all_steps() == [0]
  assert json.load(open(os.path.join(workdir, "config.json")))["data"]["image_size"] == 16
