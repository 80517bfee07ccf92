"""The LIDC literature's scores against the graders: GED, HM-IoU, IoU_rec, S_NCC, diversity.

Needs the graders (`masks`), which every eval batch has. On the device: the
IoU matrices of samples and graders and the posterior-mean reconstruction
from every grader, and S_NCC from the draws' means (a few hundred floats
per image, whatever the image size); on the host, every score from those.

Which samples each score uses (N = `num_samples`, default 100):
  - `ged_16`, `ged_50`, `ged_100`: the first 16 / 50 / 100 samples against all
    graders (sizes above N are skipped);
  - `hm_iou_16`: the first 16 samples, samples and graders tiled to their
    least common multiple (skipped if N < 16);
  - `ncc` (S_NCC) and `diversity`: all N samples (PHiSeg scores S_NCC on the
    same samples as its GED; more samples estimate its expectations better).
    S_NCC is NaN for an image whose maps are constant; the aggregate leaves
    such images out and counts them in `ncc_num_nan`;
  - `iou_rec`: the posterior-mean reconstruction from each grader in turn
    against that grader, averaged over graders.
That is the `hpunet` protocol; the literature's others (`eval.protocol`,
`hpunet_jax.evaluation.protocols`) change the sample count and which of these
scores are computed, and how. The GED and HM-IoU are also aggregated on
subset B (the images where every grader marked something) where the
protocol asks for it. docs/evaluation.md#metric-conventions.
"""
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.evaluation import metrics
from hpunet_jax.evaluation.scorers import common

GED_SIZES = (16, 50, 100)
HM_IOU_SIZE = 16
KEYS = tuple(f"ged_{n}" for n in GED_SIZES) + (
    f"hm_iou_{HM_IOU_SIZE}", "iou_rec", "ncc", "diversity")
# Scores that LIDC papers also report on subset B (all graders marked something).
SUBSET_B_KEYS = tuple(f"ged_{n}" for n in GED_SIZES) + (f"hm_iou_{HM_IOU_SIZE}",)
NAN_KEYS = ("ncc",)
# The per-image mask of subset B (not a score).
SUBSET_B = "subset_b"


def on_device(model, params, draws, inputs):
  """IoU matrices `iou_ss` `[b, N, N]`, `iou_sy` `[b, N, M]`, `iou_yy` `[b, M, M]`,
  and per image `iou_rec` and `ncc`."""
  images = inputs["image"]
  num_classes = draws.mean_probs.shape[-1]
  graders = jnp.moveaxis(inputs["masks"], -1, 1) > 0.5  # [b, M, H, W]
  batch, num_graders, height, width = graders.shape
  # All graders of all images in one call: image-major, grader-minor. The
  # posterior mean draws nothing, so no key is needed.
  repeated_images = jnp.repeat(images, num_graders, axis=0)
  segmentations = jax.nn.one_hot(
      graders.reshape(batch * num_graders, height, width).astype(jnp.int32), num_classes,
      dtype=jnp.float32)
  reconstruction_logits = model.reconstruct(params, jax.random.key(0), repeated_images,
                                            segmentations, mean=True)
  reconstructions = (jnp.argmax(reconstruction_logits, -1) == 1).reshape(graders.shape)
  samples = draws.samples
  return dict(
      iou_ss=metrics.pairwise_iou(samples, samples),
      iou_sy=metrics.pairwise_iou(samples, graders),
      iou_yy=metrics.pairwise_iou(graders, graders),
      iou_rec=metrics.reconstruction_iou(reconstructions, graders),
      ncc=metrics.ncc_from_means(draws.mean_probs, draws.mean_log_probs, graders),
  )


def per_image(outputs, batch, *, start, num_samples, protocol):
  """The protocol's scores of each image, and its subset-B mask."""
  scores = {}
  for n in protocol.ged_sizes:
    if n <= num_samples:
      scores[f"ged_{n}"] = metrics.ged_from_iou(outputs["iou_sy"][:, :n],
                                                outputs["iou_ss"][:, :n, :n], outputs["iou_yy"])
  hm_size = protocol.hm_iou_size
  if hm_size is not None and hm_size <= num_samples:
    matrices = outputs["iou_sy"]
    if protocol.hm_iou_num_images is not None:   # BerDiff: the first images only
      matrices = matrices[:max(0, protocol.hm_iou_num_images - start)]
    scores[f"hm_iou_{hm_size}"] = [
        metrics.hungarian_matched_iou_from_iou(m[:hm_size], tiling=protocol.hm_iou_tiling)
        for m in matrices]
  if protocol.iou_rec:
    scores["iou_rec"] = outputs["iou_rec"]
  if protocol.ncc:
    scores["ncc"] = outputs["ncc"]
  if protocol.diversity:
    scores["diversity"] = (1.0 - outputs["iou_ss"]).mean(axis=(-2, -1))
  scores[SUBSET_B] = metrics.subset_b(np.moveaxis(np.asarray(batch["masks"], np.float32), -1, 1))
  return scores


def aggregate(scores, *, protocol, num_bootstrap, seed):
  """`num_images`, `num_images_subset_b`, the scores, and on subset B where asked."""
  subset = np.asarray(scores[SUBSET_B], bool)
  results = {"num_images": int(subset.size), "num_images_subset_b": int(subset.sum())}
  results.update(common.aggregate_scores(
      scores, FAMILY.score_keys(scores), num_bootstrap=num_bootstrap, seed=seed,
      nan_keys=NAN_KEYS, subset=subset, subset_keys=SUBSET_B_KEYS if protocol.subset_b else ()))
  return results


FAMILY = common.Family(name="lidc", needs=("masks",), on_device=on_device, per_image=per_image,
                       keys=KEYS, nan_keys=NAN_KEYS, aggregate=aggregate)
