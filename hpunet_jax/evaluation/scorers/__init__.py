"""The scorer families (`common.Family`): one module per family, and their registry.

`FAMILIES`, from the most general data to the most specific:
  - `lidc`: the LIDC literature's scores against the graders (`masks`);
  - `candidates`: exact scores against a known distribution of candidate
    masks (`candidates`, `candidate_probs`);
  - `objects`: per-object scores, for data with independent objects
    (`object_regions`, `object_states`, `object_state_probs`).
The driver scores a split with the families whose needs its batches provide
(`select`, from the first batch's keys); their aggregate keys are written in
this order. A new score is a new field of a family's `per_image` and `keys`,
or a new family added here.
"""
from typing import Iterable, Optional

from hpunet_jax.evaluation.scorers import candidates, common, lidc, objects
from hpunet_jax.evaluation.scorers.common import Family, ScaleAnalysis

FAMILIES = (lidc.FAMILY, candidates.FAMILY, objects.FAMILY)


def select(batch_keys: Iterable[str], families: Optional[Iterable[Family]] = None) -> tuple:
  """The `families` (None: `FAMILIES`) whose needs data with `batch_keys` provide.

  `batch_keys`: a batch, or its keys.
  """
  batch_keys = set(batch_keys)
  return tuple(f for f in (FAMILIES if families is None else families) if f.wants(batch_keys))


def scale_analysis(families, num_scales: int) -> Optional[ScaleAnalysis]:
  """The scale analysis of the most specific of `families` that has one for the model.

  The last family in `families` whose `scale_analysis` applies to a model of
  `num_scales` latent scales; None if none does. One analysis per run: the
  data of a more specific family (independent objects) also carry a more
  general one's keys (candidates), whose analysis (one object's global and
  local factor) does not describe them.
  """
  for family in reversed(tuple(families)):
    analysis = family.scale_analysis
    if analysis is not None and num_scales >= analysis.min_scales:
      return analysis
  return None


__all__ = ["FAMILIES", "Family", "ScaleAnalysis", "candidates", "common", "lidc", "objects",
           "scale_analysis", "select"]
