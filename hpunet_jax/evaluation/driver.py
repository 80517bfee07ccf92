"""Evaluation driver: samples a model on eval batches and scores the samples.

Shared by `experiments.evaluate` and the training loop's periodic evaluation.

Per batch, one jitted device function draws the samples, reconstructs from
every grader and returns only IoU matrices and per-image S_NCC / IoU_rec (a few
hundred floats per image, whatever the image size); every score is then derived
from those on the host, the Hungarian matching with scipy per image. Per-image
scores are aggregated over the split with `metrics.aggregate`.

Which samples each score uses (N = `num_samples`, default 100):
  - `ged_16`, `ged_50`, `ged_100`: the first 16 / 50 / 100 samples against all
    graders (sizes above N are skipped);
  - `hm_iou_16`: the first 16 samples, samples and graders tiled to their
    least common multiple (skipped if N < 16);
  - `ncc` (S_NCC) and `diversity`: all N samples (PHiSeg scores S_NCC on the
    same samples as its GED; more samples estimate its expectations better).
    S_NCC is NaN for an image whose maps are constant; the aggregate leaves
    such images out and counts them in `ncc_num_nan`;
  - exact scores (where batches carry `candidates`): all N samples, and the
    floor for N samples, so `exact_ged_normalised` compares like with like;
  - `iou_rec`: the posterior-mean reconstruction from each grader in turn
    against that grader, averaged over graders.
"""
import math
from typing import Any, Callable, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax import metrics

GED_SIZES = (16, 50, 100)
HM_IOU_SIZE = 16
# Scores that LIDC papers also report on subset B (all graders marked something).
SUBSET_B_KEYS = tuple(f"ged_{n}" for n in GED_SIZES) + (f"hm_iou_{HM_IOU_SIZE}",)
EXACT_KEYS = ("exact_ged", "exact_ged_floor", "exact_ged_single_guess", "exact_ged_normalised",
              "match_rate", "tvd")
# Scores that are undefined (NaN) for some images; `<key>_num_nan` counts them.
NAN_KEYS = ("ncc", "exact_ged_normalised")
_ORDER = tuple(f"ged_{n}" for n in GED_SIZES) + (
    f"hm_iou_{HM_IOU_SIZE}", "iou_rec", "ncc", "diversity") + EXACT_KEYS

# Batch keys of data that declares independent objects (`synthetic_objects`).
OBJECT_KEYS = ("object_regions", "object_states", "object_state_probs")
# Per-image keys of the per-object scores (`_factor_scores`), suffixed `_<o>`
# per object where they are per object.
FACTOR_PREFIXES = ("object_tvd", "joint_tvd", "mutual_information", "fidelity", "frequency")

# Jitted device functions, keyed by (id(model), num_samples). The model is kept
# in the value so that its id cannot be reused by another object while cached.
_DEVICE_FNS: dict = {}


def _device_fn(model, num_samples):
  """The jitted sample-reconstruct-score function of `model` (built once)."""
  key = (id(model), num_samples)
  cached = _DEVICE_FNS.get(key)
  if cached is not None and cached[0] is model:
    return cached[1]

  def device_fn(params, rng, images, masks, candidates, objects=None):
    sample_rng, reconstruct_rng = jax.random.split(rng)
    logits = model.sample(params, sample_rng, images, num_samples=num_samples)
    num_classes = logits.shape[-1]
    # Per image, samples first: [b, N, H, W].
    samples = jnp.moveaxis(jnp.argmax(logits, -1) == 1, 0, 1)
    sample_probs = jnp.moveaxis(jax.nn.softmax(logits, -1), 0, 1)  # [b, N, H, W, C]
    del logits
    graders = jnp.moveaxis(masks, -1, 1) > 0.5  # [b, M, H, W]
    batch, num_graders, height, width = graders.shape
    # All graders of all images in one call: image-major, grader-minor.
    repeated_images = jnp.repeat(images, num_graders, axis=0)
    segmentations = jax.nn.one_hot(
        graders.reshape(batch * num_graders, height, width).astype(jnp.int32), num_classes,
        dtype=jnp.float32)
    reconstruction_logits = model.reconstruct(params, reconstruct_rng, repeated_images,
                                              segmentations, mean=True)
    reconstructions = (jnp.argmax(reconstruction_logits, -1) == 1).reshape(graders.shape)
    out = dict(
        iou_ss=metrics.pairwise_iou(samples, samples),
        iou_sy=metrics.pairwise_iou(samples, graders),
        iou_yy=metrics.pairwise_iou(graders, graders),
        iou_rec=metrics.reconstruction_iou(reconstructions, graders),
        ncc=metrics.ncc(sample_probs, graders),
    )
    if candidates is not None:
      out["iou_sc"] = metrics.pairwise_iou(samples, candidates)
      out["iou_cc"] = metrics.pairwise_iou(candidates, candidates)
    if objects is not None:
      regions, state_masks = objects
      out["iou_ons"] = metrics.object_state_iou(samples, regions, state_masks)  # [b, O, N, S]
    return out

  jitted = jax.jit(device_fn)
  _DEVICE_FNS[key] = (model, jitted)
  return jitted


_FLOORS: dict = {}


def _factor_floors(state_probs, num_samples):
  """`metrics.factor_score_floors`, cached per distinct `(state_probs, N)`."""
  key = (np.asarray(state_probs, np.float32).tobytes(), np.shape(state_probs), num_samples)
  if key not in _FLOORS:
    _FLOORS[key] = metrics.factor_score_floors(state_probs, num_samples, num_draws=1000)
  return _FLOORS[key]


def _factor_scores(iou_ons, state_probs, num_samples) -> dict:
  """One image's per-object scores and their floors, as flat scalar entries."""
  scores = metrics.factor_scores_from_iou(iou_ons, state_probs)
  floors = _factor_floors(state_probs, num_samples)
  flat = {"joint_tvd": scores["joint_tvd"], "joint_tvd_floor": floors["joint_tvd"],
          "mutual_information": scores["mutual_information"],
          "mutual_information_floor": floors["mutual_information"],
          "fidelity": float(np.mean(scores["fidelity"])),
          "object_tvd_max": float(np.max(scores["object_tvd"]))}
  for o in range(len(state_probs)):
    flat[f"object_tvd_{o}"] = scores["object_tvd"][o]
    flat[f"object_tvd_floor_{o}"] = floors["object_tvd"][o]
    flat[f"fidelity_{o}"] = scores["fidelity"][o]
    for s, frequency in enumerate(scores["frequencies"][o]):
      flat[f"frequency_{o}_{s}"] = frequency
  return flat


def _first_examples(batches: Iterable[Mapping[str, Any]], num_examples: Optional[int]):
  """`(index, batch)` of `enumerate(batches)`, cut to the first `num_examples` images.

  The index is the batch's position in `batches` (it keys the batch's PRNG
  stream); the last batch is truncated; None keeps everything.
  """
  seen = 0
  for index, batch in enumerate(batches):
    if num_examples is not None:
      if seen >= num_examples:
        return
      batch = {k: np.asarray(v)[:num_examples - seen] for k, v in batch.items()}
      seen += len(batch["image"])
    yield index, batch


def per_image_scores(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
                     num_samples: int = 100, num_examples: Optional[int] = None,
                     on_batch: Optional[Callable[[int], Any]] = None) -> dict:
  """Scores every image of `batches`.

  Args:
    model: has `sample(params, rng, images, *, num_samples, mean)` -> logits
      `[N, B, H, W, C]` and `reconstruct(params, rng, images, segmentations,
      *, mean)` -> logits `[B, H, W, C]`; foreground is class 1.
    params: the model's parameters.
    batches: dicts of numpy arrays: `image` `[b, H, W, C]`, `masks` binary
      `[b, H, W, M]`, optionally `candidates` binary `[b, K, H, W]` with
      `candidate_probs` `[b, K]`.
    rng: PRNG key; batch `i` uses `fold_in(rng, i)`, so a given key and data
      order always give the same scores.
    num_samples: samples per image.
    num_examples: stop after this many images (all if None).
    on_batch: called after each batch with the number of images scored so
      far (e.g. `summary.Progress.update`).

  Returns:
    dict of per-image numpy arrays, keyed like `evaluate`'s means, plus
    `subset_b` (bool). Exact-score arrays only cover images with candidates.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  device_fn = _device_fn(model, num_samples)
  scores: dict = {}
  add = lambda key, values: scores.setdefault(key, []).append(np.asarray(values, np.float64))
  subset = []
  seen = 0
  for index, batch in _first_examples(batches, num_examples):
    images = np.asarray(batch["image"], np.float32)
    masks = np.asarray(batch["masks"], np.float32)
    if images.shape[0] == 0:
      continue
    has_candidates = "candidates" in batch
    candidates = np.asarray(batch["candidates"], np.float32) if has_candidates else None
    objects = None
    if OBJECT_KEYS[0] in batch:
      objects = (np.asarray(batch["object_regions"], np.float32),
                 np.asarray(batch["object_states"], np.float32))
    out = jax.device_get(device_fn(params, jax.random.fold_in(rng, index), images, masks,
                                   candidates, objects))
    out = {k: np.asarray(v, np.float64) for k, v in out.items()}
    batch_size = images.shape[0]

    for n in GED_SIZES:
      if n <= num_samples:
        add(f"ged_{n}", metrics.ged_from_iou(out["iou_sy"][:, :n], out["iou_ss"][:, :n, :n],
                                             out["iou_yy"]))
    if HM_IOU_SIZE <= num_samples:
      add(f"hm_iou_{HM_IOU_SIZE}", [metrics.hungarian_matched_iou_from_iou(m[:HM_IOU_SIZE])
                                    for m in out["iou_sy"]])
    add("iou_rec", out["iou_rec"])
    add("ncc", out["ncc"])
    add("diversity", (1.0 - out["iou_ss"]).mean(axis=(-2, -1)))
    subset.append(metrics.subset_b(np.moveaxis(masks, -1, 1)))

    if has_candidates:
      probs = np.asarray(batch["candidate_probs"], np.float64)
      for i in range(batch_size):
        exact = metrics.exact_ged_from_iou(out["iou_sc"][i], out["iou_ss"][i], out["iou_cc"][i],
                                           probs[i])
        floor = metrics.exact_ged_floor_from_iou(out["iou_cc"][i], probs[i], num_samples)
        single = metrics.exact_ged_single_guess_from_iou(out["iou_cc"][i], probs[i])
        matches = metrics.match_statistics_from_iou(out["iou_sc"][i], probs[i])
        add("exact_ged", [exact])
        add("exact_ged_floor", [floor])
        add("exact_ged_single_guess", [single])
        # A distribution with one candidate has single guess == floor == 0.
        add("exact_ged_normalised",
            [metrics.normalised_ged(exact, floor, single) if single > floor else np.nan])
        add("match_rate", [matches["match_rate"]])
        add("tvd", [matches["tvd"]])

    if objects is not None:
      state_probs = np.asarray(batch["object_state_probs"], np.float64)
      for i in range(batch_size):
        for key, value in _factor_scores(out["iou_ons"][i], state_probs[i], num_samples).items():
          add(key, [value])
    seen += batch_size
    if on_batch is not None:
      on_batch(seen)

  if not subset:
    raise ValueError("evaluation saw no images")
  result = {k: np.concatenate(v) for k, v in scores.items()}
  result["subset_b"] = np.concatenate(subset)
  return result


def summarise(scores: Mapping[str, np.ndarray], *, num_bootstrap: int = 1000,
              seed: int = 0) -> dict:
  """Aggregates `per_image_scores` into `evaluate`'s flat dict."""
  subset = np.asarray(scores["subset_b"], bool)
  results: dict = {"num_images": int(subset.size), "num_images_subset_b": int(subset.sum())}

  def put(key, stats):
    results[key] = stats["mean"]
    results[f"{key}_std"] = stats["std"]
    results[f"{key}_ci"] = [stats["ci_low"], stats["ci_high"]]

  for key in _ORDER:
    if key not in scores:
      continue
    values = np.asarray(scores[key], np.float64)
    stats = metrics.aggregate(values, num_bootstrap=num_bootstrap, seed=seed)
    put(key, stats)
    if key in NAN_KEYS:
      results[f"{key}_num_nan"] = stats["num_nan"]
    if key in SUBSET_B_KEYS:
      put(f"{key}_subset_b", metrics.aggregate(values, subset=subset, num_bootstrap=num_bootstrap,
                                               seed=seed))
  for key in scores:
    if key.startswith(FACTOR_PREFIXES):
      values = np.asarray(scores[key], np.float64)
      put(key, metrics.aggregate(values, num_bootstrap=num_bootstrap, seed=seed))
  if "exact_ged" in scores:
    results["num_images_exact"] = int(len(scores["exact_ged"]))
  return results


def evaluate(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
             num_samples: int = 100, num_examples: Optional[int] = None,
             num_bootstrap: int = 1000, on_batch: Optional[Callable[[int], Any]] = None) -> dict:
  """Samples `model` on `batches` and returns the split's scores.

  See the module docstring for which samples each score uses, and
  `per_image_scores` for the arguments. Device memory grows with the batch
  size times `num_samples` (the logits of all samples of a batch are held at
  once).

  Returns:
    A flat dict. For each score `<key>` in `ged_16`, `ged_50`, `ged_100`,
    `hm_iou_16`, `iou_rec`, `ncc`, `diversity` and, where batches carry
    candidates, `exact_ged`, `exact_ged_floor`, `exact_ged_single_guess`,
    `exact_ged_normalised`, `match_rate`, `tvd`: `<key>` (mean over images),
    `<key>_std`, `<key>_ci` ([low, high], percentile bootstrap 95%). For the
    GED and HM-IoU scores also `<key>_subset_b`, `<key>_subset_b_std`,
    `<key>_subset_b_ci`. For `ncc` and `exact_ged_normalised` also
    `<key>_num_nan`, the images where it is undefined (left out of the mean).
    Plus `num_images`, `num_images_subset_b` and, with candidates,
    `num_images_exact`.
  """
  scores = per_image_scores(model, params, batches, rng=rng, num_samples=num_samples,
                            num_examples=num_examples, on_batch=on_batch)
  return summarise(scores, num_bootstrap=num_bootstrap)


def _format_number(x) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_table(results: Mapping[str, Any]) -> str:
  """One readable table of `evaluate`'s results.

  Columns: metric | mean ± std | 95% CI | subset B (mean ± std). Below it, where
  exact scores exist, the model's exact GED beside its references (the floor
  of a perfect sampler and the single best guess).
  """
  rows = [("metric", "mean ± std", "95% CI", "subset B")]
  for key in _ORDER:
    if key not in results:
      continue
    low, high = results[f"{key}_ci"]
    subset = "-"
    if f"{key}_subset_b" in results:
      subset = (f"{_format_number(results[f'{key}_subset_b'])} ± "
                f"{_format_number(results[f'{key}_subset_b_std'])}")
    rows.append((key, f"{_format_number(results[key])} ± {_format_number(results[f'{key}_std'])}",
                 f"[{_format_number(low)}, {_format_number(high)}]", subset))
  widths = [max(len(row[c]) for row in rows) for c in range(4)]
  line = lambda row: " | ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip()
  lines = [line(rows[0]), "-+-".join("-" * w for w in widths)] + [line(r) for r in rows[1:]]
  lines.append(f"images: {results.get('num_images', 0)}, subset B: "
               f"{results.get('num_images_subset_b', 0)}")
  for key in NAN_KEYS:
    if results.get(f"{key}_num_nan"):
      lines.append(f"{key}: undefined for {results[f'{key}_num_nan']} images (constant maps), "
                   f"left out of its mean")
  if "exact_ged" in results:
    lines += [
        "",
        f"exact GED (images with a known distribution: {results.get('num_images_exact', 0)})",
        f"  model         {_format_number(results['exact_ged'])}",
        f"  floor         {_format_number(results['exact_ged_floor'])}"
        "  (expected score of samples drawn from the true distribution)",
        f"  single guess  {_format_number(results['exact_ged_single_guess'])}"
        "  (always the most probable candidate)",
        f"  normalised    {_format_number(results['exact_ged_normalised'])}"
        "  (0 = floor, 1 = single guess)",
        f"  match rate    {_format_number(results['match_rate'])}"
        f", TVD {_format_number(results['tvd'])}",
    ]
  if "joint_tvd" in results:
    lines += ["", format_factor_scores(results)]
  return "\n".join(lines)


def format_factor_scores(results: Mapping[str, Any]) -> str:
  """The per-object scores of `evaluate`'s results (data with independent objects)."""
  def cell(key):
    low, high = results[f"{key}_ci"]
    return f"{_format_number(results[key])} [{_format_number(low)}, {_format_number(high)}]"
  num_objects = sum(1 for k in results if k.startswith("fidelity_") and not k.endswith(("_std", "_ci")))
  lines = ["per-object scores (each sample's state per object: highest IoU inside the "
           "object's region)",
           f"  joint TVD           {cell('joint_tvd')}  floor "
           f"{_format_number(results['joint_tvd_floor'])}",
           f"  mutual information  {cell('mutual_information')}  floor "
           f"{_format_number(results['mutual_information_floor'])} nats",
           f"  fidelity (mean)     {cell('fidelity')}"]
  for o in range(num_objects):
    frequencies = []
    s = 0
    while f"frequency_{o}_{s}" in results:
      frequencies.append(_format_number(results[f"frequency_{o}_{s}"]))
      s += 1
    lines.append(f"  object {o}: TVD {cell(f'object_tvd_{o}')} floor "
                 f"{_format_number(results[f'object_tvd_floor_{o}'])}, fidelity "
                 f"{cell(f'fidelity_{o}')}, state frequencies {' / '.join(frequencies)}")
  return "\n".join(lines)


def scale_variants(num_scales):
  """`mean` settings that free all scales, only the coarsest, or only the finest."""
  variants = {"all scales free": False}
  if num_scales > 1:
    variants["coarsest free"] = tuple(i != 0 for i in range(num_scales))
    variants["finest free"] = tuple(i != num_scales - 1 for i in range(num_scales))
  return variants


def factor_statistics(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
                      num_samples: int = 100, num_examples: Optional[int] = None,
                      on_batch: Optional[Callable[[int], Any]] = None) -> dict:
  """Which factor of a known distribution each latent scale carries.

  For data whose candidates are one empty mask (the *global* factor: is there
  a foreground at all) and several non-empty variants (the *local* factor:
  which boundary), each sample is assigned to its nearest candidate (highest
  IoU). Per `scale_variants` setting, averaged over images:

  - `p_foreground`: share of samples that are not the empty candidate (the
    true value is `1 - p(empty)`);
  - `global_tvd`: |p_foreground - true p_foreground|, the total-variation
    distance over the global factor alone;
  - `local_tvd`: total-variation distance between the variants' frequencies
    among foreground samples and the true conditional probabilities (over
    images with foreground samples);
  - `local_entropy`: entropy (nats) of the variants among foreground samples:
    0 when the local factor does not vary;
  - `match_rate`: share of samples within IoU 0.9 of their candidate.

  `on_batch`, if given, is called after each batch with the images done so far.

  Returns:
    `{variant: {statistic: value}}`.
  """
  variants = scale_variants(model.config.num_scales)
  sums = {v: {} for v in variants}
  counts = {v: {} for v in variants}

  def add(variant, key, value):
    sums[variant][key] = sums[variant].get(key, 0.0) + value
    counts[variant][key] = counts[variant].get(key, 0) + 1

  seen = 0
  for index, batch in _first_examples(batches, num_examples):
    if "candidates" not in batch:
      raise ValueError("factor_statistics needs data with candidates (e.g. synthetic_multiscale)")
    images = jnp.asarray(batch["image"], jnp.float32)
    candidates = np.asarray(batch["candidates"]) > 0.5               # [b, K, H, W]
    probs = np.asarray(batch["candidate_probs"], np.float64)
    for v_index, (variant, mean) in enumerate(variants.items()):
      logits = model.sample(params, jax.random.fold_in(jax.random.fold_in(rng, index), v_index),
                            images, num_samples=num_samples, mean=mean)
      samples = jnp.moveaxis(jnp.argmax(logits, -1) == 1, 0, 1)       # [b, N, H, W]
      iou = np.asarray(metrics.batched_pairwise_iou(samples, jnp.asarray(candidates)))
      for i in range(images.shape[0]):
        empty = ~candidates[i].reshape(candidates.shape[1], -1).any(axis=1)
        if empty.sum() != 1:
          raise ValueError("factor_statistics needs exactly one empty candidate per image")
        nearest = np.argmax(iou[i], axis=1)
        is_fg = ~empty[nearest]
        p_fg_true = 1.0 - probs[i][empty].sum()
        add(variant, "p_foreground", is_fg.mean())
        add(variant, "global_tvd", abs(is_fg.mean() - p_fg_true))
        add(variant, "match_rate", (iou[i][np.arange(len(nearest)), nearest] >= 0.9).mean())
        if is_fg.any():
          local = np.bincount(nearest[is_fg], minlength=len(empty))[~empty] / is_fg.sum()
          true_local = probs[i][~empty] / p_fg_true
          add(variant, "local_tvd", 0.5 * np.abs(local - true_local).sum())
          nonzero = local[local > 0]
          add(variant, "local_entropy", float(-(nonzero * np.log(nonzero)).sum()))
    seen += images.shape[0]
    if on_batch is not None:
      on_batch(seen)
  return {v: {k: sums[v][k] / counts[v][k] for k in sums[v]} for v in variants}


def format_factor_table(stats: Mapping[str, Mapping[str, float]], true_p_foreground=None) -> str:
  """A table of `factor_statistics` (one row per setting)."""
  keys = ("p_foreground", "global_tvd", "local_tvd", "local_entropy", "match_rate")
  lines = ["setting          | " + " | ".join(f"{k:>13}" for k in keys),
           "-----------------+-" + "-+-".join("-" * 13 for _ in keys)]
  for variant, values in stats.items():
    lines.append(f"{variant:<16} | " + " | ".join(
        f"{values[k]:13.3f}" if k in values else f"{'-':>13}" for k in keys))
  if true_p_foreground is not None:
    lines.append(f"(true p_foreground {true_p_foreground:.3f})")
  return "\n".join(lines)


def single_scale_variants(model_config, image_size):
  """`mean` settings: all free, none free, and each scale alone free (named by size)."""
  num_scales = model_config.num_scales
  shapes = model_config.latent_shapes(image_size, image_size)
  variants = {"all scales free": False, "none free (all means)": True}
  if num_scales > 1:
    for i, (h, w, _) in enumerate(shapes):
      variants[f"only {h}x{w} free"] = tuple(j != i for j in range(num_scales))
  return variants


def object_factor_statistics(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
                             num_samples: int = 100, num_examples: Optional[int] = None,
                             on_batch: Optional[Callable[[int], Any]] = None) -> dict:
  """Which latent scale carries which object's factor (data with independent objects).

  For each `single_scale_variants` setting, samples are drawn and each
  sample's state of each object assigned as in `metrics.factor_scores`.
  Averaged over images, per object o:

  - `frequency_<o>`: share of samples in the object's state 1 (`present` /
    `loose` in `synthetic_objects`);
  - `entropy_<o>`: entropy (nats) of its state among the samples: 0 when
    the object does not vary under this setting;
  - `moved_<o>`: TVD between its state frequencies under this setting and
    with every scale at its mean: how far freeing these scales moves it;
  - `tvd_<o>`: TVD of its state frequencies to the truth;

  and `joint_tvd`, `mutual_information`, `fidelity` (mean over objects).
  `on_batch`, if given, is called after each batch with the images done so far.

  Returns:
    `{setting: {statistic: value}}`.
  """
  variants = None
  sums: dict = {}
  count = 0
  for index, batch in _first_examples(batches, num_examples):
    if OBJECT_KEYS[0] not in batch:
      raise ValueError("object_factor_statistics needs data with object regions "
                       "(e.g. synthetic_objects)")
    images = jnp.asarray(batch["image"], jnp.float32)
    if variants is None:
      variants = single_scale_variants(model.config, images.shape[1])
      sums = {v: {} for v in variants}
    regions = jnp.asarray(batch["object_regions"])
    state_masks = jnp.asarray(batch["object_states"])
    state_probs = np.asarray(batch["object_state_probs"], np.float64)
    per_variant = {}
    for v_index, (variant, mean) in enumerate(variants.items()):
      logits = model.sample(params, jax.random.fold_in(jax.random.fold_in(rng, index), v_index),
                            images, num_samples=num_samples, mean=mean)
      samples = jnp.moveaxis(jnp.argmax(logits, -1) == 1, 0, 1)        # [b, N, H, W]
      iou = np.asarray(metrics.object_state_iou(samples, regions, state_masks))
      per_variant[variant] = [metrics.factor_scores_from_iou(iou[i], state_probs[i])
                              for i in range(images.shape[0])]
    reference = per_variant["none free (all means)"]
    for variant, scores in per_variant.items():
      for i, score in enumerate(scores):
        values = {"joint_tvd": score["joint_tvd"],
                  "mutual_information": score["mutual_information"],
                  "fidelity": float(np.mean(score["fidelity"]))}
        for o, frequencies in enumerate(score["frequencies"]):
          values[f"frequency_{o}"] = frequencies[1]
          nonzero = frequencies[frequencies > 0]
          values[f"entropy_{o}"] = float(-(nonzero * np.log(nonzero)).sum())
          values[f"moved_{o}"] = 0.5 * float(np.abs(
              frequencies - reference[i]["frequencies"][o]).sum())
          values[f"tvd_{o}"] = score["object_tvd"][o]
        for key, value in values.items():
          sums[variant][key] = sums[variant].get(key, 0.0) + value
    count += images.shape[0]
    if on_batch is not None:
      on_batch(count)
  if not count:
    raise ValueError("object_factor_statistics saw no images")
  return {v: {k: x / count for k, x in sums[v].items()} for v in variants}


def format_object_factor_table(stats: Mapping[str, Mapping[str, float]],
                               state_probs=None) -> str:
  """A table of `object_factor_statistics` (one row per setting)."""
  first = next(iter(stats.values()))
  num_objects = sum(1 for k in first if k.startswith("frequency_"))
  header = ["setting".ljust(22)]
  for o in range(num_objects):
    header += [f"p{o} state 1", f"H{o}", f"moved{o}", f"TVD{o}"]
  header += ["joint TVD", "MI", "fidelity"]
  lines = [" | ".join(f"{h:>10}" if i else h for i, h in enumerate(header))]
  for variant, values in stats.items():
    cells = [variant.ljust(22)]
    for o in range(num_objects):
      cells += [f"{values[f'{k}_{o}']:10.3f}" for k in ("frequency", "entropy", "moved", "tvd")]
    cells += [f"{values[k]:10.3f}" for k in ("joint_tvd", "mutual_information", "fidelity")]
    lines.append(" | ".join(cells))
  if state_probs is not None:
    truth = ", ".join(f"object {o}: {p[1]:.2f}" for o, p in enumerate(np.asarray(state_probs)))
    lines.append(f"(true P(state 1): {truth}; Ho: entropy of object o's state, nats; moved: TVD "
                 "from the all-means setting)")
  return "\n".join(lines)
