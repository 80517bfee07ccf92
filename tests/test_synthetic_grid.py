"""`synthetic_grid`: its definition, generator and builder; the scores that scale with O; its configs.

The CLI runs use the `:tiny` configs (the `small` data, a few steps).
"""
import itertools
import json
import math
import os

import numpy as np
import pytest
from scipy import stats
import tensorflow_datasets as tfds

from conftest import run_cli
from configs import prob_unet_grid, synthetic_grid
from hpunet_jax import config_lib
from hpunet_jax.data import synthetic
from hpunet_jax.evaluation import exact
from hpunet_jax.model import HPUNetConfig
from hpunet_jax.model.config import latent_placement

tfds.disable_progress_bar()
D = synthetic.GridDefinition()


# --- the definition and the generator -------------------------------------------------------

def test_default_definition_is_the_documented_one():
  D.validate()
  assert (D.image_size, D.grid, D.cell_size, D.num_objects) == (64, 4, 16, 16)
  kinds = [kind for kind, _ in D.factors]
  assert (kinds.count("presence"), kinds.count("boundary"), kinds.count("absent_boundary")) == (
      6, 5, 5)
  assert D.num_joint_states == 2 ** 11 * 3 ** 5 >= 2 ** 16
  np.testing.assert_allclose(D.state_probs.sum(-1), 1.0)
  for (kind, probs), row in zip(D.factors, D.state_probs):
    if kind == "absent_boundary":
      np.testing.assert_allclose(row, [0.30, 0.35, 0.35])
    else:
      assert row[2] == 0.0   # the padding state of a two-state object


@pytest.mark.parametrize("change, field", [
    (dict(image_size=62), "image_size=62"), (dict(grid=2, image_size=32), "factors"),
    (dict(max_radius=6), "too small"), (dict(loose_offset=3), "loose_offset"),
    (dict(factors=(("presence", (0.5, 0.4)),) * 16), r"factors\[0\]"),
    (dict(factors=(("blob", (0.5, 0.5)),) * 16), "kind"),
    (dict(num_graders=0), "num_graders")])
def test_validate_names_the_field(change, field):
  import dataclasses
  with pytest.raises(ValueError, match=field):
    dataclasses.replace(D, **change).validate()


def test_objects_sit_in_their_cells_and_the_4x4_latent_has_one_cell_per_object():
  config = HPUNetConfig(channels_per_block=(4,) * 7, latent_dims=(1, 1, 1))
  assert [s[:2] for s in config.latent_shapes(64, 64)] == [(1, 1), (2, 2), (4, 4)]
  cell = D.cell_size
  for index in range(10):
    example = synthetic.generate_grid_example(D, 0, "test", index)
    regions = example["object_regions"].astype(bool)
    states = example["object_states"].astype(bool)
    image = example["image"][..., 0] / 255
    assert (regions.sum(-1) == 1).all()   # the cells tile the image
    for o, (kind, _) in enumerate(D.factors):
      top, left = (o // 4) * cell, (o % 4) * cell
      assert regions[top:top + cell, left:left + cell, o].all()
      assert not (states[:, :, o] & ~regions[..., o, None]).any()
      cy, cx = example["centres"][o]
      extent = example["radii"][o] + D.halo_width
      assert top + extent <= cy <= top + cell - 1 - extent
      assert left + extent <= cx <= left + cell - 1 - extent
      masks = [states[:, :, o, s] for s in range(3)]
      if kind == "presence":
        assert not masks[0].any() and masks[1].any() and not masks[2].any()
      elif kind == "boundary":
        assert masks[0].any() and (masks[0] <= masks[1]).all() and not masks[2].any()
        assert masks[0].sum() < 0.7 * masks[1].sum()
      else:
        assert not masks[0].any() and masks[1].any() and (masks[1] <= masks[2]).all()
      assert image[cy - 1:cy + 2, cx - 1:cx + 2].mean() > 0.8   # bright whatever the state
    # Each grader's mask is the union of its states' masks.
    objects = np.arange(D.num_objects)
    for m, grader in enumerate(example["grader_states"]):
      np.testing.assert_array_equal(example["masks"][..., m],
                                    states[:, :, objects, grader].any(-1))


def test_generation_is_deterministic_and_graders_follow_the_probabilities():
  a = synthetic.generate_grid_example(D, 0, "train", 7)
  b = synthetic.generate_grid_example(D, 0, "train", 7)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key])
  for other in [(1, "train", 7), (0, "validation", 7), (0, "train", 8)]:
    assert not np.array_equal(a["image"], synthetic.generate_grid_example(D, *other)["image"])
  states = np.concatenate([synthetic.generate_grid_example(D, 2, "train", i)["grader_states"]
                           for i in range(250)])                              # [1000, O]
  for o, probs in enumerate(D.state_probs):
    counts = np.bincount(states[:, o], minlength=3)
    support = probs > 0
    assert counts[~support].sum() == 0
    assert stats.chisquare(counts[support], probs[support] * len(states)).pvalue > 1e-4, (o, counts)
  # Objects independent of one another (two three-state objects).
  table = np.zeros((3, 3))
  for s, t in states[:, [2, 5]]:
    table[s, t] += 1
  assert stats.chi2_contingency(table).pvalue > 1e-4, table


def test_builder_stores_the_generated_examples_without_candidates(tmp_path):
  config = synthetic.SyntheticGridConfig(name="tiny", num_train=3, num_validation=2, num_test=1)
  builder = synthetic.SyntheticGrid(config=config, data_dir=tmp_path, file_format="array_record")
  builder.download_and_prepare()
  source = builder.as_data_source(split="validation")
  for index in range(2):
    expected = synthetic.generate_grid_example(D, 0, "validation", index)
    stored = source[index]
    assert set(stored) == set(expected) and "candidates" not in stored
    for key in expected:
      np.testing.assert_array_equal(stored[key], expected[key])
  with pytest.raises(ValueError, match="image_size=48"):
    _ = synthetic.SyntheticGridConfig(name="bad", image_size=48).definition


# --- scores that scale with the number of objects -------------------------------------------

def _dense_joint_tvd(states, probs):
  """The dense definition: TVD over every one of the prod(S) joint states."""
  num_objects, num_states = probs.shape
  joint = np.zeros((num_states,) * num_objects)
  for row in states:
    joint[tuple(row)] += 1.0 / len(states)
  truth = np.ones(())
  for o in range(num_objects):
    truth = np.multiply.outer(truth, probs[o])
  return 0.5 * np.abs(joint - truth).sum()


def test_sparse_joint_tvd_and_total_correlation_equal_the_dense_ones():
  rng = np.random.default_rng(0)
  for num_objects, num_states in [(3, 2), (4, 3), (5, 3)]:
    probs = rng.dirichlet(np.ones(num_states), size=num_objects)
    probs[0, -1], probs[0] = 0.0, probs[0] / probs[0].sum()   # a padding state
    probs[0] /= probs[0].sum()
    states = rng.integers(0, num_states, size=(60, num_objects))
    assert exact.joint_tvd(states, probs) == pytest.approx(_dense_joint_tvd(states, probs))
    flat = np.ravel_multi_index(tuple(states.T), (num_states,) * num_objects)
    dense_tc = (sum(stats.entropy(np.bincount(states[:, o])) for o in range(num_objects))
                - stats.entropy(np.bincount(flat)))
    assert exact.total_correlation(states, num_states) == pytest.approx(dense_tc)


def test_pairwise_mutual_information_of_known_tables():
  # Independent states on a full product: 0; a copied state: its entropy.
  independent = np.array(list(itertools.product(range(3), range(2))))
  assert exact.mean_pairwise_mutual_information(independent, 3) == pytest.approx(0.0, abs=1e-12)
  copied = np.repeat(np.arange(3), 4)[:, None].repeat(3, axis=1)             # 3 equal objects
  mi = exact.pairwise_mutual_information(copied, 3)
  np.testing.assert_allclose(mi, math.log(3) * (1 - np.eye(3)))
  assert exact.mean_pairwise_mutual_information(copied[:, :1], 3) == 0.0


def test_exact_draws_on_the_grid_score_at_their_floors_in_well_under_a_minute():
  probs = D.state_probs
  floors = exact.factor_score_floors(probs, 100, num_draws=200, seed=1)
  rng = np.random.default_rng(5)
  draws = [np.stack([rng.choice(3, size=100, p=p) for p in probs], -1) for _ in range(40)]
  eye = np.eye(3)
  scores = [exact.factor_scores_from_iou(np.moveaxis(eye[s], 1, 0), probs) for s in draws]
  mean = lambda key: np.mean([np.mean(s[key]) for s in scores])
  assert mean("fidelity") == 1.0
  assert mean("object_tvd") == pytest.approx(floors["object_tvd"].mean(), rel=0.1)
  assert mean("pairwise_mutual_information") == pytest.approx(
      floors["pairwise_mutual_information"], rel=0.1)
  # Total correlation of 100 draws over 16 objects is mostly bias: close to
  # sum of marginal entropies - log 100, far from the true 0.
  marginal = sum(stats.entropy(p[p > 0]) for p in probs)
  assert floors["mutual_information"] == pytest.approx(marginal - math.log(100), abs=0.3)
  assert mean("mutual_information") == pytest.approx(floors["mutual_information"], rel=0.05)
  # Padding states are never assigned, even where their (empty) mask matches best.
  assert all((s["states"][:, [o for o, (k, _) in enumerate(D.factors) if k != "absent_boundary"]]
              < 2).all() for s in scores)
  # A sampler that drops every absent state is far above the floor on those objects.
  three = [o for o, (k, _) in enumerate(D.factors) if k == "absent_boundary"]
  dropped = draws[0].copy()
  dropped[:, three] = np.maximum(dropped[:, three], 1)
  score = exact.factor_scores_from_iou(np.moveaxis(eye[dropped], 1, 0), probs)
  assert score["object_tvd"][three].min() > 0.2


# --- configs, latent placement and the CLIs ------------------------------------------------

def test_grid_configs_share_the_budget_and_put_one_4x4_latent_cell_on_each_object():
  hpu, prob = synthetic_grid.get_config(), prob_unet_grid.get_config()
  hpu_model, prob_model = config_lib.validate(hpu), config_lib.validate(prob)
  for group in ("optim", "train", "data", "eval"):
    assert hpu[group].to_dict() == prob[group].to_dict(), group
  assert hpu.data.name == "synthetic_grid" and (hpu.model.name, prob.model.name) == (
      "hpunet", "prob_unet")
  description, warning = latent_placement(hpu_model, 64, 64)
  assert description.startswith("latents at 1x1 (1 ch), 2x2 (1 ch), 4x4 (1 ch)") and warning is None
  assert latent_placement(prob_model, 64, 64)[1] is None
  for module in (synthetic_grid, prob_unet_grid):
    config_lib.validate(module.get_config("tiny"))
    with pytest.raises(ValueError, match="unknown argument"):
      module.get_config("huge")


def test_a_32x32_config_on_64x64_images_is_warned_about():
  # The objects config's 6 levels at 64x64: latents at 2x2, 4x4, 8x8, no global one.
  config = HPUNetConfig(channels_per_block=(8, 16, 16, 16, 16, 16), latent_dims=(1, 1, 1))
  description, warning = latent_placement(config, 64, 64)
  assert "2x2 (1 ch), 4x4 (1 ch), 8x8 (1 ch)" in description
  assert "not 1x1" in warning and "need 7" in warning
  assert latent_placement(config, 32, 32)[1] is None


@pytest.mark.slow
@pytest.mark.parametrize("config", ["configs/synthetic_grid.py:tiny",
                                    "configs/prob_unet_grid.py:tiny"])
def test_tiny_grid_config_trains_and_evaluates_without_candidates(config, tmp_path, grid_data_dir):
  data_dir, workdir = grid_data_dir, str(tmp_path / "run")
  train = run_cli("experiments.train", f"--config={config}", f"--workdir={workdir}",
                  f"--config.data.data_dir={data_dir}", timeout=1800)
  assert "Model: latents at" in train.stdout and "WARNING" not in train.stdout
  evaluate = run_cli("experiments.evaluate", f"--workdir={workdir}", "--config.eval.split=test",
                     "--config.eval.num_samples=8", "--config.eval.num_examples=2",
                     timeout=1800)
  results = json.load(open(os.path.join(workdir, "evaluation.json")))
  assert "exact_ged" not in results   # no candidates: no exact GED
  for key in ("object_tvd_mean", "joint_tvd", "fidelity", "object_tvd_15", "fidelity_15",
              "frequency_2_0"):
    assert 0.0 <= results[key] <= 1.0, key
  assert results["mutual_information"] >= 0 and results["pairwise_mutual_information"] >= 0
  assert results["object_tvd_mean_floor"] > 0
  assert "mean object TVD" in evaluate.stdout and "pairwise MI" in evaluate.stdout
  assert "object 1: TVD" not in evaluate.stdout   # 16 objects: the summary only
  assert "mean moved" in evaluate.stdout
  if "synthetic_grid" in config:
    assert set(results["object_scales"]) >= {"only 1x1 free", "only 4x4 free"}
