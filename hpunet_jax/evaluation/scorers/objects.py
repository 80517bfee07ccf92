"""Per-object scores, for data that declares independent objects (`synthetic_objects`, `_grid`).

For batches with a region and state masks per object (`object_regions`
`[b, O, H, W]`, `object_states` `[b, O, S, H, W]`, `object_state_probs`
`[b, O, S]`): each sample's state of each object is the state of highest IoU
inside that object's region (`exact.factor_scores`); the scores are the
per-object and joint TVDs, the total correlation and the mean pairwise
mutual information of the assigned states, the fidelity and the clean rate,
each TVD and information beside its floor for N exact draws from the truth
(`exact.factor_score_floors`, Monte Carlo, once per distinct `(state_probs,
N)`); docs/evaluation.md#per-object-scores. On the device: the IoU of every
sample with every object's states inside its region; on the host, the scores
from those.

Scale analysis: which latent scale carries which object
(`scales.object_factor_statistics`, `evaluation.json`'s `object_scales`).
"""
import numpy as np

from hpunet_jax.evaluation import exact, scales
from hpunet_jax.evaluation.scorers import common

NEEDS = ("object_regions", "object_states", "object_state_probs")
FLOORS = {"joint_tvd": "joint_tvd_floor", "mutual_information": "mutual_information_floor",
          "pairwise_mutual_information": "pairwise_mutual_information_floor",
          "object_tvd_mean": "object_tvd_mean_floor", "object_tvd_{o}": "object_tvd_floor_{o}"}
KEYS = ("joint_tvd", "joint_tvd_floor", "mutual_information", "mutual_information_floor",
        "pairwise_mutual_information", "pairwise_mutual_information_floor", "fidelity",
        "clean_rate", "object_tvd_mean", "object_tvd_mean_floor", "object_tvd_max",
        "object_tvd_{o}", "object_tvd_floor_{o}", "fidelity_{o}", "clean_rate_{o}",
        "frequency_{o}_{s}")

_FLOORS: dict = {}


def _floors(state_probs, num_samples):
  """`exact.factor_score_floors`, cached per distinct `(state_probs, N)`."""
  key = (np.asarray(state_probs, np.float32).tobytes(), np.shape(state_probs), num_samples)
  if key not in _FLOORS:
    _FLOORS[key] = exact.factor_score_floors(state_probs, num_samples, num_draws=1000)
  return _FLOORS[key]


def on_device(model, params, draws, inputs):
  """`iou_ons` `[b, O, N, S]`: each sample's IoU with each object's states in its region."""
  del model, params
  return dict(iou_ons=exact.object_state_iou(draws.samples, inputs["object_regions"],
                                             inputs["object_states"]))


def _image_scores(iou_ons, state_probs, num_samples) -> dict:
  """One image's per-object scores and their floors, as flat scalar entries."""
  scores = exact.factor_scores_from_iou(iou_ons, state_probs)
  floors = _floors(state_probs, num_samples)
  flat = {"joint_tvd": scores["joint_tvd"], "joint_tvd_floor": floors["joint_tvd"],
          "mutual_information": scores["mutual_information"],
          "mutual_information_floor": floors["mutual_information"],
          "pairwise_mutual_information": scores["pairwise_mutual_information"],
          "pairwise_mutual_information_floor": floors["pairwise_mutual_information"],
          "fidelity": float(np.mean(scores["fidelity"])),
          "clean_rate": float(np.mean(scores["clean_rate"])),
          "object_tvd_mean": float(np.mean(scores["object_tvd"])),
          "object_tvd_mean_floor": float(np.mean(floors["object_tvd"])),
          "object_tvd_max": float(np.max(scores["object_tvd"]))}
  for o in range(len(state_probs)):
    flat[f"object_tvd_{o}"] = scores["object_tvd"][o]
    flat[f"object_tvd_floor_{o}"] = floors["object_tvd"][o]
    flat[f"fidelity_{o}"] = scores["fidelity"][o]
    flat[f"clean_rate_{o}"] = scores["clean_rate"][o]
    for s, frequency in enumerate(scores["frequencies"][o]):
      flat[f"frequency_{o}_{s}"] = frequency
  return flat


def per_image(outputs, batch, *, start, num_samples, protocol):
  """Each image's per-object scores and floors (the protocol does not change them)."""
  del start, protocol
  state_probs = np.asarray(batch["object_state_probs"], np.float64)
  scores: dict = {}
  for i in range(len(state_probs)):
    for key, value in _image_scores(outputs["iou_ons"][i], state_probs[i], num_samples).items():
      scores.setdefault(key, []).append(value)
  return scores


FAMILY = common.Family(
    name="objects", needs=NEEDS, on_device=on_device, per_image=per_image, keys=KEYS,
    floors=FLOORS,
    scale_analysis=common.ScaleAnalysis(
        statistics=scales.object_factor_statistics, key="object_scales",
        table=scales.format_object_factor_table,
        heading="What each latent scale carries, per object (the others at their means):"))
