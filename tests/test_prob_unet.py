"""The Prob. U-Net (`hpunet_jax.model.prob_unet`): API, parity with the release's TF code, training.

The fixture `tests/fixtures/prob_unet_release_small/` was written once by the
release's unmodified `model/probabilistic_unet.py` (SimonKohl/probabilistic_unet)
under TensorFlow 2.21 (`tf.compat.v1`) and Sonnet 1.36, NCHW as released,
built as `training/train_prob_unet.py` builds it, for a small config
(channels (4, 6, 8), 2 convs per block, latent 2, 3 classes, two 1x1 convs,
2-channel 8x12 images) with every variable filled with random values. How to
regenerate it: `tests/fixtures/make_prob_unet_fixture.py`.
"""
import dataclasses
import json
import os

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import run_cli
from configs import prob_unet as prob_unet_configs
from hpunet_jax import config_lib
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.model import HPUNetConfig, ProbUNetConfig, count_params, make_model
from hpunet_jax.model import prob_unet
from hpunet_jax.release import prob_unet_names, tf_checkpoint
from hpunet_jax.training import state as train_lib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "fixtures", "prob_unet_release_small")
FIXTURE_CONFIG = ProbUNetConfig(latent_dim=2, channels=(4, 6, 8), num_classes=3,
                                num_1x1_convs=2, convs_per_block=2)
# The release's network at its defaults (training/prob_unet_config.py) for LIDC
# (1 image channel, 2 classes): the number of values in the variables the
# release's TF code creates, counted by make_prob_unet_fixture.py (its
# config.json, `default_param_counts`).
RELEASE_LIDC_PARAMS = 17_945_946
RELEASE_CITYSCAPES_PARAMS = 17_954_736   # 3 channels, 19 + 5 classes

SMALL = ProbUNetConfig(latent_dim=3, channels=(4, 8, 8), num_classes=2, num_1x1_convs=2,
                       convs_per_block=2)


@pytest.fixture(scope="module")
def fixture():
  with np.load(os.path.join(FIXTURE, "expected.npz")) as data:
    expected = dict(data)
  with open(os.path.join(FIXTURE, "config.json")) as f:
    meta = json.load(f)
  tensors = tf_checkpoint.read(os.path.join(FIXTURE, "tf_graph_data.ckpt"))
  params = prob_unet_names.convert(tensors, FIXTURE_CONFIG, image_channels=meta["image_channels"])
  return expected, meta, params


def _inputs(config, batch=2, size=8, channels=1, seed=0):
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(batch, size, size, channels)).astype(np.float32)
  labels = rng.integers(0, config.num_classes, (batch, size, size))
  return images, np.eye(config.num_classes, dtype=np.float32)[labels]


def test_fixture_config_is_the_one_tested(fixture):
  _, meta, _ = fixture
  assert (meta["latent_dim"], tuple(meta["num_channels"]), meta["num_classes"],
          meta["num_1x1_convs"], meta["num_convs_per_block"]) == (
              FIXTURE_CONFIG.latent_dim, FIXTURE_CONFIG.channels, FIXTURE_CONFIG.num_classes,
              FIXTURE_CONFIG.num_1x1_convs, FIXTURE_CONFIG.convs_per_block)
  assert meta["default_param_counts"] == {"lidc_1_channel_2_classes": RELEASE_LIDC_PARAMS,
                                          "cityscapes_3_channels_24_classes":
                                              RELEASE_CITYSCAPES_PARAMS}


def test_every_release_variable_maps_and_the_counts_agree(fixture):
  _, meta, params = fixture
  mapping = prob_unet_names.name_map(FIXTURE_CONFIG)
  assert sorted(mapping) == sorted(meta["variables"])
  size = FIXTURE_CONFIG.size_multiple
  abstract = jax.eval_shape(make_model(FIXTURE_CONFIG).init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, size, size, 2), jnp.float32),
                            jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))
  assert count_params(abstract) == count_params(params)


def test_logits_match_the_release_graph(fixture):
  expected, _, params = fixture
  model = make_model(FIXTURE_CONFIG)
  image, segmentation = expected["image"], expected["segmentation"]
  tol = dict(rtol=1e-5, atol=1e-5 * np.abs(expected["fixed_z_logits"]).max())
  # Posterior mean through f_comb (`reconstruct(use_posterior_mean=True)`).
  out = model.forward(params, jax.random.key(0), image, segmentation, mean=True)
  np.testing.assert_allclose(out["logits"], expected["reconstruction_mean_logits"], **tol)
  np.testing.assert_allclose(out["posterior"][0].mu[:, 0, 0], expected["posterior_loc"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.exp(out["posterior"][0].log_sigma[:, 0, 0]),
                             expected["posterior_scale_diag"], rtol=1e-5)
  np.testing.assert_allclose(out["prior"][0].mu[:, 0, 0], expected["prior_loc"],
                             rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(jnp.exp(out["prior"][0].log_sigma[:, 0, 0]),
                             expected["prior_scale_diag"], rtol=1e-5)
  # The release's analytic KL is averaged over the batch in `elbo`.
  np.testing.assert_allclose(jnp.mean(out["kl"][0]), expected["kl"], rtol=1e-5)
  # A prior sample with its draw fixed: f_comb at a given z; and at the prior's mean.
  z = expected["latent"][:, None, None, :]
  samples = model.sample(params, jax.random.key(1), image, num_samples=2, latents=[z])
  for sample in samples:
    np.testing.assert_allclose(sample, expected["fixed_z_logits"], **tol)
  prior_mean = model.sample(params, jax.random.key(1), image, mean=True)[0]
  np.testing.assert_allclose(prior_mean, expected["prior_mean_logits"], **tol)


def test_l2_penalty_is_the_training_scripts(fixture):
  expected, _, params = fixture
  # sum(REGULARIZATION_LOSSES) of the release's graph: tf.nn.l2_loss of every
  # weight but f_comb's logits conv, no bias.
  np.testing.assert_allclose(prob_unet.l2_penalty(params, 1.0), expected["reg_loss"], rtol=1e-5)
  weights = {m: {"w": jnp.ones((2, 2)), "b": jnp.ones((3,))}
             for m in ("prob_unet/~/f_comb/conv_0", "prob_unet/~/f_comb/logits")}
  np.testing.assert_allclose(make_model(SMALL).l2_penalty(weights, 1e-5), 1e-5 * 4 / 2)


def test_parameter_count_of_the_release_defaults():
  model = make_model(ProbUNetConfig())
  count = lambda channels, classes: count_params(jax.eval_shape(
      model.init if classes == 2 else make_model(ProbUNetConfig(num_classes=classes)).init,
      jax.random.key(0), jax.ShapeDtypeStruct((1, 64, 64, channels), jnp.float32),
      jax.ShapeDtypeStruct((1, 64, 64, classes), jnp.float32)))
  assert count(1, 2) == RELEASE_LIDC_PARAMS
  assert count(3, 24) == RELEASE_CITYSCAPES_PARAMS
  lidc = config_lib.validate(prob_unet_configs.get_config("lidc"))
  assert lidc == ProbUNetConfig()


def test_api_shapes_and_determinism():
  model = make_model(SMALL)
  images, segs = _inputs(SMALL)
  params = model.init(jax.random.key(0), images, segs)
  again = model.init(jax.random.key(0), images, segs)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), params, again))
  assert model.config.num_scales == 1 and model.config.latent_shapes(8, 8) == [(1, 1, 3)]
  assert model.config.size_multiple == 4

  samples = model.sample(params, jax.random.key(1), images, num_samples=5)
  assert samples.shape == (5, 2, 8, 8, 2)
  np.testing.assert_array_equal(samples, model.sample(params, jax.random.key(1), images,
                                                      num_samples=5))
  assert float(jnp.std(samples, axis=0).max()) > 0            # the samples differ
  means = model.sample(params, jax.random.key(1), images, num_samples=3, mean=(True,))
  np.testing.assert_array_equal(means[0], means[2])

  out = model.forward(params, jax.random.key(2), images, segs)
  assert out["logits"].shape == (2, 8, 8, 2)
  assert [g.mu.shape for g in out["prior"] + out["posterior"]] == [(2, 1, 1, 3)] * 2
  assert out["posterior_latents"][0].shape == (2, 1, 1, 3) and out["kl"][0].shape == (2,)
  np.testing.assert_array_equal(
      model.reconstruct(params, jax.random.key(2), images, segs), out["logits"])
  # The posterior's latent through `latents=` gives the reconstruction.
  again = model.sample(params, jax.random.key(3), images, latents=out["posterior_latents"])
  np.testing.assert_allclose(again[0], out["logits"], rtol=1e-5, atol=1e-6)

  with pytest.raises(ValueError, match="multiple of"):
    model.check_inputs(jnp.zeros((1, 6, 8, 1)))
  with pytest.raises(ValueError, match="latents"):
    model.sample(params, jax.random.key(1), images, latents=[jnp.zeros((2, 2, 2, 3))])
  with pytest.raises(ValueError, match="ProbUNetConfig.channels"):
    ProbUNetConfig(channels=())
  # The HPU-Net is still what an HPUNetConfig builds.
  assert type(make_model(HPUNetConfig(channels_per_block=(4, 8), latent_dims=(1,))).config) \
      is HPUNetConfig


def test_execution_settings_change_no_parameter():
  model = make_model(SMALL)
  images, segs = _inputs(SMALL)
  params = model.init(jax.random.key(0), images, segs)
  reference = model.forward(params, jax.random.key(1), images, segs, mean=True)["logits"]
  for execution in (dict(remat=True), dict(compute_dtype="bfloat16")):
    other = make_model(dataclasses.replace(SMALL, **execution))
    logits = other.forward(params, jax.random.key(1), images, segs, mean=True)["logits"]
    assert logits.dtype == jnp.float32
    scale = float(jnp.abs(reference).max())
    tol = 1e-6 if "remat" in execution else 0.05
    np.testing.assert_allclose(logits, reference, atol=tol * scale + 1e-6)


def test_sampling_runs_the_unet_and_prior_once():
  """Every 3x3 convolution of the sampling graph (U-Net and prior) sees the batch, not the samples."""
  model = make_model(SMALL)
  images, segs = _inputs(SMALL)
  params = model.init(jax.random.key(0), images, segs)

  def convs(num_samples):
    jaxpr = jax.make_jaxpr(lambda p, x: model.sample(p, jax.random.key(0), x,
                                                     num_samples=num_samples))(params, images)
    found = []

    def walk(jaxpr):
      for eqn in jaxpr.eqns:
        if eqn.primitive.name == "conv_general_dilated":
          found.append(eqn.invars[0].aval.shape)
        for sub in jax.extend.core.jaxprs_in_params(eqn.params):
          walk(sub)

    walk(jaxpr.jaxpr)
    return found

  levels, per_block = len(SMALL.channels), SMALL.convs_per_block
  expected = per_block * (levels + (levels - 1) + levels)   # U-Net encoder, decoder, prior
  for num_samples in (1, 7):
    shapes = convs(num_samples)
    assert len(shapes) == expected
    assert all(shape[0] == images.shape[0] for shape in shapes)   # unbatched over samples


@pytest.mark.slow
def test_one_elbo_train_step(tmp_path):
  config = prob_unet_configs.get_config("tiny")
  config.data.crop_size = None
  config.train.batch_size = 2
  model_cfg = config_lib.validate(config)
  assert isinstance(model_cfg, ProbUNetConfig) and config.loss.type == "elbo"
  images, segs = _inputs(model_cfg, batch=2, size=16)
  batch = {"image": images, "segmentation": segs}
  state = train_lib.create_train_state(config, 0, batch)
  assert "lagrange_raw" not in state.params
  before = jax.tree.map(np.asarray, state.params["net"])   # the step donates the state
  step = train_lib.make_train_step(config)
  new_state, metrics = step(state, batch)
  assert int(new_state.step) == 1
  assert np.isfinite(float(metrics["loss"]))
  np.testing.assert_allclose(metrics["l2"], prob_unet.l2_penalty(before, 1e-5), rtol=1e-5)
  changed = jax.tree.map(lambda a, b: bool(np.any(a != np.asarray(b))), before,
                         new_state.params["net"])
  assert all(jax.tree.leaves(changed))


def test_run_configs_choose_the_model():
  old = config_lib.config_from_json({"model": {"latent_dims": [1], "num_classes": 2}})
  assert isinstance(config_lib.model_config(old), HPUNetConfig)
  config = prob_unet_configs.get_config()
  assert isinstance(config_lib.validate(config), ProbUNetConfig)
  saved = json.loads(json.dumps(config.to_dict(), default=list))
  assert config_lib.model_config(config_lib.config_from_json(saved)) == \
      config_lib.model_config(config)
  config.model.name = "unet"
  with pytest.raises(ValueError, match="model.name"):
    config_lib.validate(config)
  config = prob_unet_configs.get_config()
  config.model.latent_dim = 0
  with pytest.raises(ValueError, match="model.latent_dim must be a positive int"):
    config_lib.validate(config)
  # The group holds the Prob. U-Net's fields alone, and config.json records only those.
  assert set(config.model) == {"name", *config_lib.model_fields("prob_unet")}
  assert "latent_dims" not in json.loads(config.to_json_best_effort())["model"]
  with config.unlocked():
    config.model.latent_dims = (1, 1)
  with pytest.raises(ValueError, match=r"^model.latent_dims is not a field of model 'prob_unet' "
                     r"\(a field of model 'hpunet'\)"):
    config_lib.validate(config)
  with pytest.raises(ValueError, match="unknown argument"):
    prob_unet_configs.get_config("huge")


@pytest.mark.slow
def test_tiny_config_trains_evaluates_and_samples_through_the_clis(tmp_path, synthetic_data_dir):
  data_dir, workdir = synthetic_data_dir, str(tmp_path / "run")
  run_cli("experiments.train", "--config=configs/prob_unet.py:tiny", f"--workdir={workdir}",
          f"--config.data.data_dir={data_dir}", timeout=900)
  with open(os.path.join(workdir, "config.json")) as f:
    assert json.load(f)["model"]["name"] == "prob_unet"
  run_cli("experiments.evaluate", f"--workdir={workdir}", "--config.eval.split=test",
          "--config.eval.num_samples=8", "--config.eval.num_examples=2", timeout=900)
  with open(os.path.join(workdir, "evaluation.json")) as f:
    results = json.load(f)
  assert results["num_images"] == 2 and np.isfinite(results["ged_16"] if "ged_16" in results
                                                    else results["exact_ged"])
  out = str(tmp_path / "s" / "samples.png")
  run_cli("experiments.sample", f"--workdir={workdir}", f"--output={out}", "--num_samples=4",
          "--indices=0,1", "--config.eval.split=test", timeout=900)
  with np.load(str(tmp_path / "s" / "samples.npz")) as arrays:
    assert arrays["samples"].shape == (4, 2, 32, 32)


def test_a_field_of_another_model_stops_in_one_line_naming_both(tmp_path):
  workdir = tmp_path / "run"
  proc = run_cli("experiments.train", "--config=configs/prob_unet.py:tiny",
                 f"--workdir={workdir}", "--config.model.latent_dims=1,1", timeout=300,
                 check=False)
  lines = proc.stderr.strip().splitlines()
  assert proc.returncode == 1 and len(lines) == 1, proc.stderr[-3000:]
  assert lines[0].startswith("FATAL Flags parsing error: --config.model.latent_dims: "
                             "model.latent_dims is not a field of model 'prob_unet'"), lines
  assert "latent_dim," in lines[0]   # the fields it has
  assert not workdir.exists()


def test_three_channel_prob_unet_trains_restores_and_samples(tmp_path):
  """Training writes a checkpoint whose network restore reads back with its 3 input channels."""
  from hpunet_jax.training import loop  # pylint: disable=g-import-not-at-top
  config = prob_unet_configs.get_config("tiny")
  config.data.name, config.data.num_channels = "fake", 3
  config.data.image_size, config.data.crop_size = 32, None
  config.train.batch_size, config.train.num_steps = 2, 2
  config.train.log_every = config.train.eval_every = config.train.checkpoint_every = 2
  config.eval.num_examples, config.eval.num_samples, config.eval.batch_size = 2, 4, 2
  config.eval.num_figure_examples = 1
  workdir = tmp_path / "run"
  loop.train_and_evaluate(config, workdir)
  _, model, params, step = workdir_lib.Run(workdir).params()
  assert step == 2 and model.input_channels(params) == 3
  logits = model.sample(params, jax.random.key(0), np.zeros((2, 32, 32, 3), np.float32),
                        num_samples=3)
  assert logits.shape == (3, 2, 32, 32, 2) and np.isfinite(np.asarray(logits)).all()
  with pytest.raises(ValueError, match="images must be"):
    model.sample(params, jax.random.key(0), np.zeros((32, 32, 3), np.float32))


def test_resuming_an_old_hpunet_run_keeps_it_an_hpunet(tmp_path):
  from hpunet_jax.training import run  # pylint: disable=g-import-not-at-top
  old = json.loads(config_lib.base_config().to_json_best_effort())
  del old["model"]["name"]   # a config.json from before the field
  (tmp_path / workdir_lib.CONFIG_FILE).write_text(json.dumps(old))
  run.check_config_matches(str(tmp_path), config_lib.base_config())
  with pytest.raises(run.RunMismatchError, match="model.name='prob_unet'"):
    run.check_config_matches(str(tmp_path), prob_unet_configs.get_config("lidc"))


@pytest.mark.slow
def test_init_is_the_releases_he_normal():
  """TF 1.10's he_normal: a normal of std sqrt(2 / fan_in) truncated at 2 std; biases std 0.001."""
  config = ProbUNetConfig(latent_dim=2, channels=(32, 32), num_classes=2, num_1x1_convs=1,
                          convs_per_block=2)
  model = make_model(config)
  images, segs = _inputs(config, batch=1, size=2)
  truncated_std = 0.8796   # std of a unit normal truncated at +-2
  for params in (model.init(jax.random.key(0), images, segs),
                 jax.jit(model.init)(jax.random.key(0), images, segs)):   # host and Haiku
    block = params["prob_unet/~/unet/~/encoder/down_block_1/conv_1"]
    std = np.sqrt(2.0 / (3 * 3 * 32))
    assert abs(np.std(block["w"]) / (truncated_std * std) - 1) < 0.05
    assert np.abs(block["w"]).max() <= 2 * std + 1e-6
    assert np.abs(block["b"]).max() <= 0.002 and np.std(block["b"]) > 0
