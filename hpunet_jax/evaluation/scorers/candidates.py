"""Exact scores against a known distribution of K candidate masks (`candidates`).

For data whose batches carry the candidates `[b, K, H, W]` and their
probabilities `candidate_probs` `[b, K]` (`synthetic_multiscale`,
`synthetic_objects`): the exact GED of all N samples against the weighted
candidates, its floor for N samples (so that `exact_ged_normalised` compares
like with like), the single best guess, the normalised exact GED, the match
rate and the TVD of the candidates' frequencies (`hpunet_jax.evaluation.exact`;
docs/evaluation.md#exact-scores). On the device: the IoU matrices of samples
and candidates; on the host, the scores from those.

Scale analysis (models with more than one latent scale): which factor each
scale carries, every sample assigned to its nearest candidate
(`scales.factor_statistics`, `evaluation.json`'s `scales`).
"""
import numpy as np

from hpunet_jax.evaluation import exact, metrics, scales
from hpunet_jax.evaluation.scorers import common

KEYS = ("exact_ged", "exact_ged_floor", "exact_ged_single_guess", "exact_ged_normalised",
        "match_rate", "tvd")
FLOORS = {"exact_ged": "exact_ged_floor"}
NAN_KEYS = ("exact_ged_normalised",)


def on_device(model, params, draws, inputs):
  """IoU matrices `iou_ss` `[b, N, N]`, `iou_sc` `[b, N, K]` and `iou_cc` `[b, K, K]`."""
  del model, params
  samples, candidates = draws.samples, inputs["candidates"]
  return dict(iou_ss=metrics.pairwise_iou(samples, samples),
              iou_sc=metrics.pairwise_iou(samples, candidates),
              iou_cc=metrics.pairwise_iou(candidates, candidates))


def per_image(outputs, batch, *, start, num_samples, protocol):
  """Each image's exact scores (the protocol does not change them)."""
  del start, protocol
  probs = np.asarray(batch["candidate_probs"], np.float64)
  scores = {key: [] for key in KEYS}
  for i in range(len(probs)):
    iou_sc, iou_ss, iou_cc = outputs["iou_sc"][i], outputs["iou_ss"][i], outputs["iou_cc"][i]
    ged = exact.exact_ged_from_iou(iou_sc, iou_ss, iou_cc, probs[i])
    floor = exact.exact_ged_floor_from_iou(iou_cc, probs[i], num_samples)
    single = exact.exact_ged_single_guess_from_iou(iou_cc, probs[i])
    matches = exact.match_statistics_from_iou(iou_sc, probs[i])
    scores["exact_ged"].append(ged)
    scores["exact_ged_floor"].append(floor)
    scores["exact_ged_single_guess"].append(single)
    # A distribution with one candidate has single guess == floor == 0.
    scores["exact_ged_normalised"].append(
        exact.normalised_ged(ged, floor, single) if single > floor else np.nan)
    scores["match_rate"].append(matches["match_rate"])
    scores["tvd"].append(matches["tvd"])
  return scores


def aggregate(scores, *, protocol, num_bootstrap, seed):
  """The exact scores' means, and `num_images_exact`."""
  del protocol
  keys = FAMILY.score_keys(scores)
  results = common.aggregate_scores(scores, keys, nan_keys=NAN_KEYS,
                                    num_bootstrap=num_bootstrap, seed=seed)
  if keys:
    results["num_images_exact"] = int(len(scores[keys[0]]))
  return results


FAMILY = common.Family(
    name="candidates", needs=("candidates", "candidate_probs"), on_device=on_device,
    per_image=per_image, keys=KEYS, floors=FLOORS, nan_keys=NAN_KEYS,
    aggregate=aggregate,
    scale_analysis=common.ScaleAnalysis(
        statistics=scales.factor_statistics, key="scales", table=scales.format_factor_table,
        heading="What each latent scale carries (samples assigned to their nearest candidate):",
        min_scales=2))
