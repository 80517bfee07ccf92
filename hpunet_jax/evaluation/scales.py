"""Which latent scale carries which factor: sampling with some scales at their means.

`VARIANTS` is the one table of the sampling variants that free all scales,
only the coarsest or only the finest (the release's colab draws these three),
used by the figures, the colab figure and the scale analyses alike.
`factor_statistics` (one object, a global and a local factor) and
`object_factor_statistics` (independent objects, each scale freed alone)
measure what each setting changes in the samples.
"""
from typing import Any, Callable, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import entropy

from hpunet_jax.evaluation import exact, metrics
from hpunet_jax.evaluation.sampling import first_examples


class Variant(NamedTuple):
  """A sampling variant: its name, the file suffix of its figure and its title."""
  name: str
  suffix: str
  title: str


# The three variants, in drawing order; `scale_variants` gives their `mean`.
VARIANTS = (Variant("all scales free", "", "all scales free"),
            Variant("coarsest free", "_coarsest_free", "only the coarsest (global) scale free"),
            Variant("finest free", "_finest_free", "only the finest (local) scale free"))


def scale_variants(num_scales):
  """`mean` settings that free all scales, only the coarsest, or only the finest."""
  variants = {VARIANTS[0].name: False}
  if num_scales > 1:
    variants[VARIANTS[1].name] = tuple(i != 0 for i in range(num_scales))
    variants[VARIANTS[2].name] = tuple(i != num_scales - 1 for i in range(num_scales))
  return variants


def figure_variants(num_scales):
  """`[(Variant, mean)]` of `scale_variants`, with each variant's file suffix and title."""
  means = scale_variants(num_scales)
  return [(v, means[v.name]) for v in VARIANTS if v.name in means]


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
  for index, batch in first_examples(batches, num_examples):
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
          add(variant, "local_entropy", float(entropy(local)))
    seen += images.shape[0]
    if on_batch is not None:
      on_batch(seen)
  return {v: {k: sums[v][k] / counts[v][k] for k in sums[v]} for v in variants}


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
  for index, batch in first_examples(batches, num_examples):
    if "object_regions" not in batch:
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
      iou = np.asarray(exact.object_state_iou(samples, regions, state_masks))
      per_variant[variant] = [exact.factor_scores_from_iou(iou[i], state_probs[i])
                              for i in range(images.shape[0])]
    reference = per_variant["none free (all means)"]
    for variant, scores in per_variant.items():
      for i, score in enumerate(scores):
        values = {"joint_tvd": score["joint_tvd"],
                  "mutual_information": score["mutual_information"],
                  "fidelity": float(np.mean(score["fidelity"]))}
        for o, frequencies in enumerate(score["frequencies"]):
          values[f"frequency_{o}"] = frequencies[1]
          values[f"entropy_{o}"] = float(entropy(frequencies))
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


# More objects than this: the tables print summaries over objects, and the
# per-object values stay in evaluation.json.
MAX_OBJECTS_PRINTED = 4


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


def format_object_factor_table(stats: Mapping[str, Mapping[str, float]],
                               state_probs=None) -> str:
  """A table of `object_factor_statistics` (one row per setting).

  Per object columns for at most `MAX_OBJECTS_PRINTED` objects; beyond that,
  the means over objects of the same statistics (per-object values stay in
  evaluation.json).
  """
  first = next(iter(stats.values()))
  num_objects = sum(1 for k in first if k.startswith("frequency_"))
  per_object = num_objects <= MAX_OBJECTS_PRINTED
  header = ["setting".ljust(22)]
  if per_object:
    for o in range(num_objects):
      header += [f"p{o} state 1", f"H{o}", f"moved{o}", f"TVD{o}"]
  else:
    header += ["mean H", "mean moved", "mean TVD"]
  header += ["joint TVD", "MI", "fidelity"]
  lines = [" | ".join(f"{h:>10}" if i else h for i, h in enumerate(header))]
  for variant, values in stats.items():
    cells = [variant.ljust(22)]
    if per_object:
      for o in range(num_objects):
        cells += [f"{values[f'{k}_{o}']:10.3f}" for k in ("frequency", "entropy", "moved", "tvd")]
    else:
      cells += [f"{np.mean([values[f'{k}_{o}'] for o in range(num_objects)]):10.3f}"
                for k in ("entropy", "moved", "tvd")]
    cells += [f"{values[k]:10.3f}" for k in ("joint_tvd", "mutual_information", "fidelity")]
    lines.append(" | ".join(cells))
  if not per_object:
    lines.append(f"(means over the {num_objects} objects: H entropy of an object's state, "
                 "nats; moved: TVD from the all-means setting; MI: total correlation)")
  elif state_probs is not None:
    truth = ", ".join(f"object {o}: {p[1]:.2f}" for o, p in enumerate(np.asarray(state_probs)))
    lines.append(f"(true P(state 1): {truth}; Ho: entropy of object o's state, nats; moved: TVD "
                 "from the all-means setting)")
  return "\n".join(lines)
