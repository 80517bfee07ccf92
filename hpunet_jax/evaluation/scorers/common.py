"""What every scorer family declares (`Family`), and the aggregation they share.

A family is a set of scores computed from the same draws
(`hpunet_jax.evaluation.sampling.Draws`): what it needs of a batch, what it
computes per image on the device (inside the jitted device function) and on
the host, the aggregate keys it writes with their floors, and the scale
analysis that `experiments.evaluate` runs for it. The driver
(`hpunet_jax.evaluation.driver`) selects the families whose `needs` a batch
provides (`hpunet_jax.evaluation.scorers.select`) and asks them; it knows
no score by name.
"""
import dataclasses
import re
from typing import Any, Callable, Mapping, NamedTuple, Optional

import numpy as np

from hpunet_jax.evaluation import metrics


class ScaleAnalysis(NamedTuple):
  """Which latent scale carries which factor, for a family's data (`experiments.evaluate`).

  Attributes:
    statistics: `(model, params, batches, *, rng, num_samples, num_examples,
      on_batch) -> {setting: {statistic: value}}` (`hpunet_jax.evaluation.scales`).
    key: its key in `evaluation.json`.
    table: `statistics' result -> str`, the printed table.
    heading: the line printed above the table.
    min_scales: run only for models with at least this many latent scales.
  """
  statistics: Callable[..., Mapping[str, Mapping[str, float]]]
  key: str
  table: Callable[[Mapping[str, Mapping[str, float]]], str]
  heading: str
  min_scales: int = 1


# eq=False: families compare and hash by identity, as the device functions'
# cache (`sampling.device_fn`) keys them.
@dataclasses.dataclass(frozen=True, eq=False)
class Family:
  """A family of scores (the driver's unit of scoring).

  Attributes:
    name: the family's name; also the key of its device outputs.
    needs: the batch keys it reads besides `image`. The driver selects the
      family where a batch has them all, and places them on the mesh
      (float32) for `on_device`.
    on_device: `(model, params, draws, inputs) -> {output: [b, ...]}`, run
      inside the jitted device function: `draws` is a `sampling.Draws`,
      `inputs` the batch's `image` and every selected family's `needs`
      arrays on the mesh. Its
      outputs are what comes back to the host (keep them small: matrices,
      not masks). None: no device part.
    per_image: `(outputs, batch, *, start, num_samples, protocol) -> {key:
      [n]}` on the host: `outputs` its device outputs for the batch's b
      images (float64 numpy, padding dropped; {} without a device part),
      `batch` the host batch, `start` the split index of the batch's first
      image, `num_samples` N, `protocol` a `protocols.Protocol`. Usually n =
      b; fewer where a score covers the first images only.
    keys: the aggregate keys it writes, in the order written. `{o}` stands
      for an object's index and `{s}` for a state's (`fidelity_{o}`,
      `frequency_{o}_{s}`). Each key `k` is the mean over images of the
      per-image score `k`, with `k_std` and `k_ci` beside it.
    floors: `{key: floor key}`, the expected score of a perfect sampler
      (exact draws from the truth) against which a score reads; both keys
      are in `keys`.
    nan_keys: keys undefined (NaN) for some images; the mean leaves them
      out and `<key>_num_nan` counts them.
    aggregate: `(scores, *, protocol, num_bootstrap, seed) -> dict` for a
      summary beyond the keys' means (subset B, image counts); None:
      `aggregate_scores` of `keys`.
    scale_analysis: the family's `ScaleAnalysis`, or None.
  """
  name: str
  needs: tuple
  on_device: Optional[Callable[..., Mapping[str, Any]]]
  per_image: Callable[..., Mapping[str, Any]]
  keys: tuple
  floors: Mapping[str, str] = dataclasses.field(default_factory=dict)
  nan_keys: tuple = ()
  aggregate: Optional[Callable[..., dict]] = None
  scale_analysis: Optional[ScaleAnalysis] = None

  def __post_init__(self):
    undeclared = [k for k in (*self.floors, *self.floors.values(), *self.nan_keys)
                  if k not in self.keys]
    if undeclared:
      raise ValueError(f"family {self.name!r}: {undeclared} not in its keys")

  def wants(self, batch_keys) -> bool:
    """Whether data with these batch keys carry everything the family needs."""
    return all(k in batch_keys for k in self.needs)

  def score_keys(self, scores: Mapping[str, Any]) -> list:
    """The keys of `scores` that are the family's, in the order of `keys`.

    The per-object keys (with `{o}`) come after the others, object by
    object: all of object 0's in the order of `keys`, then object 1's.
    """
    patterns = [re.compile(re.escape(k).replace(r"\{o\}", r"(?P<o>\d+)")
                           .replace(r"\{s\}", r"(?P<s>\d+)")) for k in self.keys]
    found = []
    for key in scores:
      for index, pattern in enumerate(patterns):
        match = pattern.fullmatch(key)
        if match is None:
          continue
        groups = match.groupdict()
        if "o" in groups:
          order = (len(patterns), int(groups["o"]), index, int(groups.get("s") or 0))
        else:
          order = (index,)
        found.append((order, key))
        break
    return [key for _, key in sorted(found)]

  def summarise(self, scores: Mapping[str, Any], *, protocol, num_bootstrap: int,
                seed: int) -> dict:
    """The aggregate keys of the family's per-image `scores` (`aggregate`)."""
    if self.aggregate is not None:
      return self.aggregate(scores, protocol=protocol, num_bootstrap=num_bootstrap, seed=seed)
    return aggregate_scores(scores, self.score_keys(scores), nan_keys=self.nan_keys,
                            num_bootstrap=num_bootstrap, seed=seed)


def put(results: dict, key: str, stats: Mapping[str, float]):
  """`results[key]`, `[key_std]` and `[key_ci]` of a `metrics.aggregate`."""
  results[key] = stats["mean"]
  results[f"{key}_std"] = stats["std"]
  results[f"{key}_ci"] = [stats["ci_low"], stats["ci_high"]]


def aggregate_scores(scores: Mapping[str, Any], keys, *, num_bootstrap: int, seed: int,
                     nan_keys=(), subset=None, subset_keys=()) -> dict:
  """Mean, std and bootstrap CI over images of each of `keys` (`metrics.aggregate`).

  Args:
    scores: per-image arrays.
    keys: which, in the order written.
    num_bootstrap: bootstrap resamples of the CI.
    seed: the bootstrap's seed.
    nan_keys: keys that also get `<key>_num_nan`.
    subset: a boolean `[num_images]` mask (subset B), or None.
    subset_keys: keys also aggregated over `subset` (`<key>_subset_b`). A
      key with fewer images than `subset` is not: it gets `<key>_num_images`.
  """
  results: dict = {}
  for key in keys:
    values = np.asarray(scores[key], np.float64)
    stats = metrics.aggregate(values, num_bootstrap=num_bootstrap, seed=seed)
    put(results, key, stats)
    if key in nan_keys:
      results[f"{key}_num_nan"] = stats["num_nan"]
    if subset is not None and values.size != subset.size:
      results[f"{key}_num_images"] = int(values.size)
    elif key in subset_keys:
      put(results, f"{key}_subset_b", metrics.aggregate(
          values, subset=subset, num_bootstrap=num_bootstrap, seed=seed))
  return results
