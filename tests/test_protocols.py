"""The literature's evaluation protocols: each preset against a numpy port of its paper's code."""
import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.optimize

from hpunet_jax import config_lib
from hpunet_jax.evaluation import driver, metrics, protocols

SIZE = 16


def _random_masks(rng, n, empty=()):
  """`n` random blobs `[n, SIZE, SIZE]`; those at `empty` all zeros."""
  y, x = np.mgrid[:SIZE, :SIZE]
  masks = []
  for i in range(n):
    cy, cx = rng.uniform(4, 12, 2)
    r = rng.uniform(2, 5)
    mask = ((y - cy) ** 2 + (x - cx) ** 2 <= r ** 2) & (rng.random((SIZE, SIZE)) < 0.9)
    masks.append(np.zeros_like(mask) if i in empty else mask)
  return np.stack(masks).astype(np.float32)


# --- numpy ports of the papers' code (PROTOCOL_NOTES of the issue; sources in protocols.py) ---

def _iou_car(a, b):
  """CARSSS `get_foreground_IoU`: both empty -> 1, one empty -> 0, else jaccard."""
  a, b = a > 0.5, b > 0.5
  if not a.any() and not b.any():
    return 1.0
  if not a.any() or not b.any():
    return 0.0
  return (a & b).sum() / (a | b).sum()


def _iou_mose(a, b):
  """MoSE `iou_dist`'s IoU: (I + 1e-8) / (U + 1e-8)."""
  a, b = a > 0.5, b > 0.5
  return ((a & b).sum() + 1e-8) / ((a | b).sum() + 1e-8)


def _iou_ccdm(a, b):
  """CCDM: (x & y).sum / (x | y).sum, NaN (both empty) -> 1."""
  a, b = a > 0.5, b > 0.5
  with np.errstate(invalid="ignore"):
    value = (a & b).sum() / (a | b).sum()
  return 1.0 if np.isnan(value) else value


def _matched(cost):
  rows, cols = scipy.optimize.linear_sum_assignment(cost)
  return rows, cols


def _hm_iou_car(samples, graders):
  """CAR: graders `repeat(16 // 4)` (l0..l3, l0..l3, ...), 16x16 cost 1 - IoU, mean matched IoU."""
  graders = np.tile(graders, (16 // len(graders), 1, 1))
  iou = np.array([[_iou_car(s, g) for g in graders] for s in samples])
  rows, cols = _matched(1 - iou)
  return iou[rows, cols].mean()


def _hm_iou_berdiff(samples, graders):
  """BerDiff: `np.repeat(label, 4, 0)` (l0 x4, l1 x4, ...), distance 0 where the union is 0."""
  graders = np.repeat(graders, 4, 0)
  iou = np.array([[_iou_car(s, g) for g in graders] for s in samples])
  rows, cols = _matched(1 - iou)
  return iou[rows, cols].mean()


def _hm_iou_ccdm(samples, graders):
  """CCDM: both sets `repeat_interleave`d to `np.lcm(N, M)`."""
  size = np.lcm(len(samples), len(graders))
  samples = np.repeat(samples, size // len(samples), 0)
  graders = np.repeat(graders, size // len(graders), 0)
  iou = np.array([[_iou_ccdm(s, g) for g in graders] for s in samples])
  rows, cols = _matched(1 - iou)
  return iou[rows, cols].mean()


def _hm_iou_mose(samples, graders):
  """MoSE, uniform weights: the N x M distance tiled along the graders (`repeat(1, 1, N // M)`)."""
  d_sy = np.array([[1 - _iou_mose(s, g) for g in graders] for s in samples])
  cost = np.tile(d_sy, (1, len(samples) // len(graders)))
  rows, cols = _matched(cost)
  return (1 - cost[rows, cols]).mean()


def _ged_phiseg(samples, graders):
  """PHiSeg `generalised_energy_distance`, nlabels=1: all pairs incl. i = j."""
  d = lambda a, b: 1 - _iou_car(a, b)
  d_sy = np.mean([d(s, y) for s in samples for y in graders])
  d_ss = np.mean([d(s, t) for s in samples for t in samples])
  d_yy = np.mean([d(y, z) for y in graders for z in graders])
  return 2 * d_sy - d_ss - d_yy


def _ged_mose(samples, graders):
  """MoSE's weighted GED with uniform weights (1/N for samples, 1/M for graders)."""
  p_s = np.full(len(samples), 1 / len(samples))
  p_y = np.full(len(graders), 1 / len(graders))
  dist = lambda a, b: np.array([[1 - _iou_mose(x, z) for z in b] for x in a])
  return (2 * p_s @ dist(samples, graders) @ p_y - p_s @ dist(samples, samples) @ p_s
          - p_y @ dist(graders, graders) @ p_y)


# --- the presets ---

def test_presets_match_the_config_names_and_cite_their_code():
  assert tuple(protocols.PROTOCOLS) == config_lib.EVAL_PROTOCOLS
  counts = {name: protocols.get(name).num_samples for name in protocols.PROTOCOLS}
  assert counts == dict(hpunet=None, phiseg=50, ssn=100, car=16, ccdm=16, mose=16, berdiff=16)
  for name in protocols.PROTOCOLS:
    preset = protocols.get(name)
    assert preset.name == name and protocols.PROTOCOLS[name].__doc__
    if name != "hpunet":
      assert "@" in preset.source and preset.whole_split, name   # owner/repo@commit
  assert protocols.get("car").hm_iou_tiling == "graders"
  assert protocols.get("ccdm").hm_iou_tiling == "lcm"
  assert protocols.get("berdiff").hm_iou_num_images == 180
  assert protocols.get("phiseg").hm_iou_size is None and protocols.get("ssn").hm_iou_size is None
  with pytest.raises(ValueError, match="eval.protocol='nope'"):
    protocols.get("nope")


def test_config_field_validated_and_resolved():
  config = config_lib.base_config()
  assert config.eval.protocol == "hpunet"
  config.eval.num_samples, config.eval.num_examples = 7, 3
  assert (protocols.num_samples(config.eval), protocols.num_examples(config.eval)) == (7, 3)
  config.eval.protocol = "phiseg"
  assert (protocols.num_samples(config.eval), protocols.num_examples(config.eval)) == (50, None)
  config.eval.protocol = "phi-seg"
  with pytest.raises(ValueError, match="eval.protocol='phi-seg'"):
    config_lib.validate(config, num_devices=1)


# --- HM-IoU: the papers' tilings ---

def test_hm_iou_by_hand():
  """16 empty samples, graders 2 empty and 2 not: 8 of the 16 matched pairs have IoU 1."""
  samples = np.zeros((16, SIZE, SIZE), np.float32)
  graders = _random_masks(np.random.default_rng(0), 4, empty=(0, 2))
  for tiling in protocols.TILINGS:
    assert metrics.hungarian_matched_iou(samples, graders, tiling=tiling) == pytest.approx(0.5)
  # Samples that are the graders, in another order, each twice: a perfect match.
  samples = np.concatenate([graders[::-1]] * 4)
  assert metrics.hungarian_matched_iou(samples, graders, tiling="graders") == pytest.approx(1.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_hm_iou_equals_each_papers_code_at_16_samples(seed):
  rng = np.random.default_rng(seed)
  samples = _random_masks(rng, 16, empty=(3, 11))
  graders = _random_masks(rng, 4, empty=(1,))
  ported = dict(car=_hm_iou_car(samples, graders), berdiff=_hm_iou_berdiff(samples, graders),
                ccdm=_hm_iou_ccdm(samples, graders), mose=_hm_iou_mose(samples, graders))
  for name, expected in ported.items():
    tiling = protocols.get(name).hm_iou_tiling
    got = metrics.hungarian_matched_iou(samples, graders, tiling=tiling)
    assert got == pytest.approx(expected, abs=1e-6), name
  # hpunet's lcm tiling is CCDM's at any count, e.g. 6 samples (lcm 12).
  assert metrics.hungarian_matched_iou(samples[:6], graders) == pytest.approx(
      _hm_iou_ccdm(samples[:6], graders), abs=1e-6)


def test_graders_tiling_refuses_what_the_papers_code_cannot_take():
  rng = np.random.default_rng(0)
  samples, graders = _random_masks(rng, 6), _random_masks(rng, 4)
  with pytest.raises(ValueError, match="multiple of 4"):
    metrics.hungarian_matched_iou(samples, graders, tiling="graders")
  with pytest.raises(ValueError, match="tiling='repeat'"):
    metrics.hungarian_matched_iou(samples, graders, tiling="repeat")


# --- GED: the papers' formulas ---

@pytest.mark.parametrize("num_samples", [16, 50])
def test_ged_equals_phisegs_and_moses_code(num_samples):
  rng = np.random.default_rng(num_samples)
  samples = _random_masks(rng, num_samples, empty=(0, 5))
  graders = _random_masks(rng, 4, empty=(2,))
  got = float(metrics.generalized_energy_distance(samples, graders))
  assert got == pytest.approx(_ged_phiseg(samples, graders), abs=1e-5)
  assert got == pytest.approx(_ged_mose(samples, graders), abs=1e-5)   # 1e-8 guards aside
  assert float(metrics.generalized_energy_distance(graders, graders)) == pytest.approx(0, abs=1e-7)


# --- the driver under each preset ---

GRADER_SETS = _random_masks(np.random.default_rng(7), 4 * 8).reshape(8, 4, SIZE, SIZE)


class GraderStub:
  """Each sample is one of the image's graders (drawn at random); reconstructs perfectly."""

  def sample(self, params, rng, images, *, num_samples=1, mean=False):
    del params, mean
    graders = jnp.moveaxis(images[..., 1:], -1, 1)  # [B, 4, H, W]: the graders ride in the image
    index = jax.random.randint(rng, (num_samples, images.shape[0]), 0, graders.shape[1])
    masks = graders[jnp.arange(images.shape[0])[None, :], index]  # [N, B, H, W]
    return 5.0 * jnp.stack([1.0 - masks, masks], -1)

  def reconstruct(self, params, rng, images, segmentations, *, mean=False):
    del params, rng, images, mean
    return 5.0 * segmentations


def _batches():
  masks = np.moveaxis(GRADER_SETS, 1, -1)  # [8, H, W, 4]
  images = np.concatenate([np.zeros_like(masks[..., :1]), masks], -1)
  return [{"image": images[i:i + 4], "masks": masks[i:i + 4]} for i in (0, 4)]


def _evaluate(protocol, num_samples):
  return driver.per_image_scores(GraderStub(), {}, _batches(), rng=jax.random.key(0),
                                 num_samples=num_samples, protocol=protocol)


def test_hpunet_protocol_is_todays_evaluation():
  kwargs = dict(rng=jax.random.key(0), num_samples=16, num_bootstrap=50)
  default = driver.evaluate(GraderStub(), {}, _batches(), **kwargs)
  explicit = driver.evaluate(GraderStub(), {}, _batches(), protocol=protocols.hpunet(), **kwargs)
  assert default == explicit
  assert {"ged_16", "hm_iou_16", "iou_rec", "ncc", "diversity", "ged_16_subset_b"} <= set(default)


@pytest.mark.parametrize("name", [pytest.param("phiseg", marks=pytest.mark.slow),
                                  pytest.param("ssn", marks=pytest.mark.slow),
                                  "car", "ccdm", "mose"])
def test_each_preset_computes_its_papers_scores(name):
  preset = protocols.get(name)
  scores = _evaluate(preset, preset.num_samples)
  expected = {f"ged_{n}" for n in preset.ged_sizes} | {"subset_b"}
  expected |= {"hm_iou_16"} if preset.hm_iou_size else set()
  expected |= {"ncc"} if preset.ncc else set()
  expected |= {"diversity"} if preset.diversity else set()
  assert set(scores) == expected, name
  # The same per-image GED as the paper's formula on the same samples.
  samples = _stub_samples(preset.num_samples)
  ged = [_ged_phiseg(samples[i], GRADER_SETS[i]) for i in range(8)]
  key = f"ged_{preset.ged_sizes[0]}"
  np.testing.assert_allclose(scores[key], ged, atol=1e-5)
  if preset.hm_iou_size:
    port = {"car": _hm_iou_car, "ccdm": _hm_iou_ccdm, "mose": _hm_iou_mose}[name]
    np.testing.assert_allclose(scores["hm_iou_16"],
                               [port(samples[i], GRADER_SETS[i]) for i in range(8)], atol=1e-6)
  summary = driver.summarise(scores, num_bootstrap=0, protocol=preset)
  assert not any(k.startswith(("ged_", "hm_iou_")) and "subset_b" in k for k in summary)


def _stub_samples(num_samples):
  """The samples `GraderStub` draws per image in `_evaluate`: image i of the split, sample j
  from `fold_in(fold_in(key, i), j)`, one image at a time, as the driver draws them."""
  images = np.concatenate([b["image"] for b in _batches()])
  out = []
  for i, image in enumerate(images):
    key = jax.random.fold_in(jax.random.key(0), i)
    logits = [GraderStub().sample({}, jax.random.fold_in(key, j), jnp.asarray(image[None]))[0, 0]
              for j in range(num_samples)]
    out.append(np.asarray(jnp.argmax(jnp.stack(logits), -1) == 1, np.float32))
  return np.stack(out)  # [8, N, H, W]


@pytest.mark.slow
def test_berdiff_scores_hm_iou_on_the_first_images_only():
  preset = dataclasses.replace(protocols.berdiff(), hm_iou_num_images=5)  # 180 of 1980, here 5 of 8
  scores = _evaluate(preset, 16)
  everything = _evaluate(protocols.hpunet(), 16)
  assert len(scores["ged_16"]) == 8 and len(scores["hm_iou_16"]) == 5
  np.testing.assert_allclose(scores["hm_iou_16"], everything["hm_iou_16"][:5])
  summary = driver.summarise(scores, num_bootstrap=0, protocol=preset)
  assert summary["hm_iou_16_num_images"] == 5
  assert summary["hm_iou_16"] == pytest.approx(np.mean(everything["hm_iou_16"][:5]))
  assert math.isclose(summary["ged_16"], np.mean(everything["ged_16"]))
