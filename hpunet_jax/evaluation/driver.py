"""Evaluation driver: samples a model on eval batches and scores the samples.

Shared by `experiments.evaluate` and the training loop's periodic evaluation.

Per batch, one jitted device function (`sampling.device_fn`), sharded over
the images on every device of every process, draws the samples (in chunks of
`eval.sample_chunk` per image, so that memory does not grow with the number
of samples),
reconstructs from every grader and returns only IoU matrices and per-image
S_NCC / IoU_rec (a few hundred floats per image, whatever the image size) to
every process; every score is then derived from those on the host, the
Hungarian matching with scipy per image. Each image's samples are drawn with
keys derived from its index in the split, so its scores do not depend on the
batch size, the chunk size or the devices. Per-image scores are aggregated
over the split with `metrics.aggregate`.

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
That is the `hpunet` protocol; the literature's others (`eval.protocol`,
`hpunet_jax.evaluation.protocols`) change the sample count and which of these
scores are computed, and how.
"""
from typing import Any, Callable, Iterable, Mapping, Optional

from absl import logging
import jax
import numpy as np

from hpunet_jax.data import pipeline
from hpunet_jax.evaluation import exact, metrics, protocols, sampling
from hpunet_jax.infra import parallel
from hpunet_jax.infra.progress import Progress

GED_SIZES = (16, 50, 100)
HM_IOU_SIZE = 16
# Scores that LIDC papers also report on subset B (all graders marked something).
SUBSET_B_KEYS = tuple(f"ged_{n}" for n in GED_SIZES) + (f"hm_iou_{HM_IOU_SIZE}",)
EXACT_KEYS = ("exact_ged", "exact_ged_floor", "exact_ged_single_guess", "exact_ged_normalised",
              "match_rate", "tvd")
# Scores that are undefined (NaN) for some images; `<key>_num_nan` counts them.
NAN_KEYS = ("ncc", "exact_ged_normalised")
ORDER = tuple(f"ged_{n}" for n in GED_SIZES) + (
    f"hm_iou_{HM_IOU_SIZE}", "iou_rec", "ncc", "diversity") + EXACT_KEYS

# Per-image keys of the per-object scores (`_factor_scores`), suffixed `_<o>`
# per object where they are per object.
FACTOR_PREFIXES = ("object_tvd", "joint_tvd", "mutual_information", "pairwise_mutual_information",
                   "fidelity", "clean_rate", "frequency")

_FLOORS: dict = {}


def _factor_floors(state_probs, num_samples):
  """`exact.factor_score_floors`, cached per distinct `(state_probs, N)`."""
  key = (np.asarray(state_probs, np.float32).tobytes(), np.shape(state_probs), num_samples)
  if key not in _FLOORS:
    _FLOORS[key] = exact.factor_score_floors(state_probs, num_samples, num_draws=1000)
  return _FLOORS[key]


def _factor_scores(iou_ons, state_probs, num_samples) -> dict:
  """One image's per-object scores and their floors, as flat scalar entries."""
  scores = exact.factor_scores_from_iou(iou_ons, state_probs)
  floors = _factor_floors(state_probs, num_samples)
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


def per_image_scores(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
                     num_samples: int = 100, num_examples: Optional[int] = None,
                     on_batch: Optional[Callable[[int], Any]] = None,
                     protocol: Optional[protocols.Protocol] = None,
                     sample_chunk: int = sampling.DEFAULT_SAMPLE_CHUNK, mesh=None) -> dict:
  """Scores every image of `batches`, on every device of every process.

  Each batch is padded to a multiple of the devices, sharded over the
  `('data',)` mesh, and its padding dropped; the per-image matrices come
  back to every process, which all compute the same scores (process 0 alone
  writes them, in the callers). Image `i` of the split (counted over
  `batches`) samples with `fold_in(rng, i)` and its sample `j` with
  `fold_in(fold_in(rng, i), j)`, so its scores are the same for any batch
  size, chunk size, number of devices and of processes.

  Args:
    model: has `sample(params, rng, images, *, num_samples, mean)` -> logits
      `[N, B, H, W, C]` and `reconstruct(params, rng, images, segmentations,
      *, mean)` -> logits `[B, H, W, C]`; foreground is class 1. Both are
      called inside `jit`.
    params: the model's parameters (on one device, or replicated over
      `mesh`, as the training state's are).
    batches: dicts of numpy arrays: `image` `[b, H, W, C]`, `masks` binary
      `[b, H, W, M]`, optionally `candidates` binary `[b, K, H, W]` with
      `candidate_probs` `[b, K]`, and object fields (`sampling.OBJECT_KEYS`). Every
      process passes the same batches.
    rng: PRNG key.
    num_samples: samples per image.
    num_examples: stop after this many images (all if None).
    on_batch: called after each batch with the number of images scored so
      far (e.g. `hpunet_jax.infra.progress.Progress.update`).
    protocol: which scores, on how many samples and images
      (`protocols.Protocol`); None: `hpunet`. Its `num_samples` is not read
      here: `num_samples` is.
    sample_chunk: samples drawn at once per image (`sampling.sample_chunked`):
      peak memory grows with it, not with `num_samples`; the scores do not
      change.
    mesh: the devices; None: `parallel.make_mesh()`, all of every process.

  Returns:
    dict of per-image numpy arrays, keyed like `evaluate`'s means, plus
    `subset_b` (bool). Exact-score arrays only cover images with candidates.
  """
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if sample_chunk < 1:
    raise ValueError(f"sample_chunk must be >= 1, got {sample_chunk}")
  protocol = protocol or protocols.hpunet()
  mesh = parallel.make_mesh() if mesh is None else mesh
  scoring_fn = sampling.device_fn(model, num_samples, min(sample_chunk, num_samples), mesh)
  params = sampling.on_mesh(params, mesh)
  rng = sampling.on_mesh(rng, mesh)
  scores: dict = {}
  add = lambda key, values: scores.setdefault(key, []).append(np.asarray(values, np.float64))
  subset = []
  seen = 0
  padded_size = None
  for _, batch in sampling.first_examples(batches, num_examples):
    images = np.asarray(batch["image"], np.float32)
    masks = np.asarray(batch["masks"], np.float32)
    if images.shape[0] == 0:
      continue
    if padded_size is None:   # the first (full) batch sets the shape of every call
      padded_size = sampling.padded_batch_size(images.shape[0], mesh.devices.size)
    has_candidates = "candidates" in batch
    objects = sampling.OBJECT_KEYS[0] in batch
    out = sampling.batch_outputs(scoring_fn, params, rng, batch, seen, mesh, padded_size)
    batch_size = images.shape[0]

    for n in protocol.ged_sizes:
      if n <= num_samples:
        add(f"ged_{n}", metrics.ged_from_iou(out["iou_sy"][:, :n], out["iou_ss"][:, :n, :n],
                                             out["iou_yy"]))
    hm_size = protocol.hm_iou_size
    if hm_size is not None and hm_size <= num_samples:
      matrices = out["iou_sy"]
      if protocol.hm_iou_num_images is not None:   # BerDiff: the first images only
        matrices = matrices[:max(0, protocol.hm_iou_num_images - seen)]
      add(f"hm_iou_{hm_size}", [
          metrics.hungarian_matched_iou_from_iou(m[:hm_size], tiling=protocol.hm_iou_tiling)
          for m in matrices])
    if protocol.iou_rec:
      add("iou_rec", out["iou_rec"])
    if protocol.ncc:
      add("ncc", out["ncc"])
    if protocol.diversity:
      add("diversity", (1.0 - out["iou_ss"]).mean(axis=(-2, -1)))
    subset.append(metrics.subset_b(np.moveaxis(masks, -1, 1)))

    if has_candidates:
      probs = np.asarray(batch["candidate_probs"], np.float64)
      for i in range(batch_size):
        ged = exact.exact_ged_from_iou(out["iou_sc"][i], out["iou_ss"][i], out["iou_cc"][i],
                                       probs[i])
        floor = exact.exact_ged_floor_from_iou(out["iou_cc"][i], probs[i], num_samples)
        single = exact.exact_ged_single_guess_from_iou(out["iou_cc"][i], probs[i])
        matches = exact.match_statistics_from_iou(out["iou_sc"][i], probs[i])
        add("exact_ged", [ged])
        add("exact_ged_floor", [floor])
        add("exact_ged_single_guess", [single])
        # A distribution with one candidate has single guess == floor == 0.
        add("exact_ged_normalised",
            [exact.normalised_ged(ged, floor, single) if single > floor else np.nan])
        add("match_rate", [matches["match_rate"]])
        add("tvd", [matches["tvd"]])

    if objects:
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
              seed: int = 0, protocol: Optional[protocols.Protocol] = None) -> dict:
  """Aggregates `per_image_scores` into `evaluate`'s flat dict.

  Subset B scores where `protocol` (None: `hpunet`) asks for them; a score
  computed on fewer images than the split (BerDiff's HM-IoU) gets
  `<key>_num_images`.
  """
  protocol = protocol or protocols.hpunet()
  subset = np.asarray(scores["subset_b"], bool)
  results: dict = {"num_images": int(subset.size), "num_images_subset_b": int(subset.sum())}

  def put(key, stats):
    results[key] = stats["mean"]
    results[f"{key}_std"] = stats["std"]
    results[f"{key}_ci"] = [stats["ci_low"], stats["ci_high"]]

  for key in ORDER:
    if key not in scores:
      continue
    values = np.asarray(scores[key], np.float64)
    stats = metrics.aggregate(values, num_bootstrap=num_bootstrap, seed=seed)
    put(key, stats)
    if key in NAN_KEYS:
      results[f"{key}_num_nan"] = stats["num_nan"]
    if key.startswith("hm_iou") and values.size != subset.size:
      results[f"{key}_num_images"] = int(values.size)
    elif key in SUBSET_B_KEYS and protocol.subset_b:
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
             num_bootstrap: int = 1000, on_batch: Optional[Callable[[int], Any]] = None,
             protocol: Optional[protocols.Protocol] = None,
             sample_chunk: int = sampling.DEFAULT_SAMPLE_CHUNK, mesh=None) -> dict:
  """Samples `model` on `batches` and returns the split's scores.

  See the module docstring for which samples each score uses, and
  `per_image_scores` for the arguments. Device memory grows with the
  images per device times `sample_chunk`, not with `num_samples`.

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
    `num_images_exact`. That is for the `hpunet` protocol (`protocol`
    None); another protocol keeps the keys of the scores it computes.
  """
  scores = per_image_scores(model, params, batches, rng=rng, num_samples=num_samples,
                            num_examples=num_examples, on_batch=on_batch, protocol=protocol,
                            sample_chunk=sample_chunk, mesh=mesh)
  return summarise(scores, num_bootstrap=num_bootstrap, protocol=protocol)


# ---------------------------------------------------------------------------
# The evaluation a run's config asks for: its eval batches, with progress lines.

def eval_batches(config, split, num_examples=None):
  """The eval iterator of `split` with the config's `eval.batch_size`."""
  return pipeline.make_eval_iterator(config.data, split, batch_size=config.eval.batch_size,
                                     num_examples=num_examples)


def select_examples(config, split, num_examples, indices):
  """One batch of `split`: its first `num_examples` images, or those at `indices`."""
  if indices is None:
    return next(iter(eval_batches(config, split, num_examples)))
  indices = list(indices)
  needed = max(indices) + 1
  total = pipeline.num_examples(config.data, split)
  if needed > total:
    raise ValueError(f"--indices: index {max(indices)} is out of range for {split} "
                     f"({total} examples)")
  collected = []
  for batch in eval_batches(config, split, needed):
    collected.append(batch)
  merged = {k: np.concatenate([b[k] for b in collected]) for k in collected[0]}
  return {k: v[indices] for k, v in merged.items()}


def evaluation_progress(config, split, num_examples, *, print_fn=logging.info):
  """A `Progress` over the images of `split` that an evaluation will see."""
  total = pipeline.num_examples(config.data, split)
  if num_examples is not None:
    total = min(total, num_examples)
  return Progress(total, unit="image", every_s=30, print_fn=print_fn)


def run_evaluation(model, params, config, split, *, num_samples=None, num_examples=None,
                   rng=None, print_fn=logging.info, mesh=None):
  """Evaluates `params` on `split` with the config's eval settings, with progress lines.

  `eval.protocol` says the scores, and with the papers' presets the sample
  count and the images (`protocols.num_samples`, `protocols.num_examples`);
  `num_samples` / `num_examples`, when given, override those. Runs on every
  device of `mesh` (None: all devices of all processes) with the config's
  `eval.sample_chunk`.
  """
  protocol = protocols.of_config(config.eval)
  num_samples = num_samples or protocols.num_samples(config.eval)
  num_examples = num_examples if num_examples is not None else protocols.num_examples(config.eval)
  rng = jax.random.key(config.train.seed + 1) if rng is None else rng
  progress = evaluation_progress(config, split, num_examples, print_fn=print_fn)
  return evaluate(model, params, eval_batches(config, split, num_examples), rng=rng,
                  num_samples=num_samples, num_examples=num_examples,
                  on_batch=progress.update, protocol=protocol,
                  sample_chunk=config.eval.sample_chunk, mesh=mesh)
