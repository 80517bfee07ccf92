"""Text reports of the evaluation: the metric table of `driver.evaluate`'s results.

The scale analyses' tables are beside their statistics, in `scales`.
"""
import math
from typing import Any, Mapping

from hpunet_jax.evaluation import exact
from hpunet_jax.evaluation.scales import MAX_OBJECTS_PRINTED
from hpunet_jax.evaluation.scorers import candidates, lidc, objects

# The table's rows: the scores against the graders, then the exact scores.
ORDER = lidc.KEYS + candidates.KEYS
NAN_KEYS = lidc.NAN_KEYS + candidates.NAN_KEYS


def _format_number(x) -> str:
  return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def format_table(results: Mapping[str, Any]) -> str:
  """One readable table of `evaluate`'s results.

  Columns: metric | mean ± std | 95% CI | subset B (mean ± std). Below it, where
  exact scores exist, the model's exact GED beside its references (the floor
  of a perfect sampler and the single best guess).
  """
  rows = [("metric", "mean ± std", "95% CI", "subset B")]
  for key in ORDER:
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
  for key in ORDER:
    if f"{key}_num_images" in results:   # a protocol's score on the first images only
      lines.append(f"{key}: on the first {results[f'{key}_num_images']} images only")
  for key in NAN_KEYS:
    if results.get(f"{key}_num_nan"):
      lines.append(f"{key}: undefined for {results[f'{key}_num_nan']} images (constant maps), "
                   f"left out of its mean")
  if "exact_ged" in results:
    lines += [
        "",
        f"exact GED (images with a known distribution: {results.get('num_images_exact', 0)})",
        f"  model         {_format_number(results['exact_ged'])}",
        f"  floor         {_format_number(results[candidates.FLOORS['exact_ged']])}"
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


def _num_objects(results) -> int:
  return sum(1 for k in results if k.startswith("fidelity_") and not k.endswith(("_std", "_ci")))


def format_factor_scores(results: Mapping[str, Any]) -> str:
  """The per-object scores of `evaluate`'s results (data with independent objects).

  The summary over objects first (mean per-object TVD, total correlation,
  mean pairwise mutual information, mean fidelity, each beside the floor of a
  perfect sampler where it has one); then one line per object if there are at
  most `MAX_OBJECTS_PRINTED`.
  """
  def cell(key):
    low, high = results[f"{key}_ci"]
    return f"{_format_number(results[key])} [{_format_number(low)}, {_format_number(high)}]"

  def floor(key, unit=""):   # the floor of score `key` (`objects.FLOORS`), where written
    floor_key = objects.FLOORS[key]
    return f"  floor {_format_number(results[floor_key])}{unit}" if floor_key in results else ""

  num_objects = _num_objects(results)
  lines = ["per-object scores (each sample's state per object: highest IoU inside the "
           f"object's region; {num_objects} objects)"]
  if "object_tvd_mean" in results:
    lines.append(f"  mean object TVD     {cell('object_tvd_mean')}"
                 f"{floor('object_tvd_mean')}")
  lines += [f"  joint TVD           {cell('joint_tvd')}{floor('joint_tvd')}",
            f"  total correlation   {cell('mutual_information')}"
            f"{floor('mutual_information', ' nats')}"]
  if "pairwise_mutual_information" in results:
    lines.append(f"  pairwise MI (mean)  {cell('pairwise_mutual_information')}"
                 f"{floor('pairwise_mutual_information', ' nats')}")
  lines.append(f"  fidelity (mean)     {cell('fidelity')}")
  if "clean_rate" in results:
    lines.append(f"  clean rate (mean)   {cell('clean_rate')}  (IoU >= {exact.CLEAN_IOU} with the "
                 "assigned state)")
  if num_objects > MAX_OBJECTS_PRINTED:
    lines.append(f"  (per-object values of the {num_objects} objects: object_tvd_<o>, "
                 "fidelity_<o>, clean_rate_<o>, frequency_<o>_<s> in evaluation.json)")
    return "\n".join(lines)
  for o in range(num_objects):
    frequencies = []
    s = 0
    while f"frequency_{o}_{s}" in results:
      frequencies.append(_format_number(results[f"frequency_{o}_{s}"]))
      s += 1
    tvd_floor = results[objects.FLOORS["object_tvd_{o}"].format(o=o)]
    lines.append(f"  object {o}: TVD {cell(f'object_tvd_{o}')} floor {_format_number(tvd_floor)}, "
                 f"fidelity {cell(f'fidelity_{o}')}, state frequencies {' / '.join(frequencies)}")
  return "\n".join(lines)
