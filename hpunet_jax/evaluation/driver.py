"""Evaluation driver: samples a model on eval batches and hands the samples to the scorers.

Shared by `experiments.evaluate` and the training loop's periodic evaluation.

Per batch, one jitted device function, sharded over the images on every
device of every process (`sampling.device_fn`), draws the samples in chunks
and runs the device part of every selected scorer family
(`hpunet_jax.evaluation.scorers`): IoU matrices and per-image values, a few
hundred floats per image whatever the image size, which come back to every
process. Each family then derives its per-image scores from those on the
host, and aggregates them over the split (`summarise`). The families are
those whose needs the first batch provides (`scorers.select`); which samples
each score uses is in each family's module (`scorers.lidc`,
`scorers.candidates`, `scorers.objects`). Each image's samples are drawn
with keys derived from its index in the split, so its scores do not depend on
the batch size, the chunk size or the devices.
"""
from typing import Any, Callable, Iterable, Mapping, Optional

from absl import logging
import jax
import numpy as np

from hpunet_jax.data import pipeline
from hpunet_jax.evaluation import protocols, sampling, scorers
from hpunet_jax.infra import parallel
from hpunet_jax.infra.progress import Progress


def per_image_scores(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
                     num_samples: int = 100, num_examples: Optional[int] = None,
                     on_batch: Optional[Callable[[int], Any]] = None,
                     protocol: Optional[protocols.Protocol] = None,
                     sample_chunk: int = sampling.DEFAULT_SAMPLE_CHUNK, mesh=None,
                     families: Optional[Iterable[scorers.Family]] = None) -> dict:
  """Scores every image of `batches`, on every device of every process.

  Each batch is padded to a multiple of the devices, sharded over the
  `('data',)` mesh, and its padding dropped; the per-image outputs come
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
    batches: dicts of numpy arrays: `image` `[b, H, W, C]`, and what the
      families need: `masks` binary `[b, H, W, M]`, optionally `candidates`
      binary `[b, K, H, W]` with `candidate_probs` `[b, K]`, and object fields
      (`scorers.objects.NEEDS`). Every process passes the same batches.
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
    families: the scorer families; None: `scorers.select` of the first
      batch's keys. Every batch must carry what they need.

  Returns:
    dict of per-image numpy arrays, keyed like `evaluate`'s means, plus
    `subset_b` (bool).
  """
  return _scores(model, params, batches, rng=rng, num_samples=num_samples,
                 num_examples=num_examples, on_batch=on_batch, protocol=protocol,
                 sample_chunk=sample_chunk, mesh=mesh, families=families)[1]


def _scores(model, params, batches, *, rng, num_samples, num_examples, on_batch, protocol,
            sample_chunk, mesh, families):
  """`(families, per_image_scores(...))`: the families scored, and the per-image scores."""
  if num_samples < 1:
    raise ValueError(f"num_samples must be >= 1, got {num_samples}")
  if sample_chunk < 1:
    raise ValueError(f"sample_chunk must be >= 1, got {sample_chunk}")
  protocol = protocol or protocols.hpunet()
  mesh = parallel.make_mesh() if mesh is None else mesh
  params = sampling.on_mesh(params, mesh)
  rng = sampling.on_mesh(rng, mesh)
  scores: dict = {}
  seen = 0
  padded_size = scoring_fn = None
  for _, batch in sampling.first_examples(batches, num_examples):
    batch_size = np.shape(batch[sampling.IMAGE_KEY])[0]
    if batch_size == 0:
      continue
    if scoring_fn is None:   # the first (full) batch sets the families and every call's shape
      families = scorers.select(batch) if families is None else tuple(families)
      padded_size = sampling.padded_batch_size(batch_size, mesh.devices.size)
      scoring_fn = sampling.device_fn(model, num_samples, min(sample_chunk, num_samples), mesh,
                                      families)
    missing = [k for k in sampling.input_keys(families) if k not in batch]
    if missing:
      raise ValueError(f"the eval batch of images {seen}.. lacks {missing}, which the scorer "
                       f"families {[f.name for f in families]} need")
    outputs = sampling.batch_outputs(scoring_fn, params, rng, batch, seen, mesh, padded_size,
                                     families)
    for family in families:
      per_image = family.per_image(outputs.get(family.name, {}), batch, start=seen,
                                   num_samples=num_samples, protocol=protocol)
      for key, values in per_image.items():
        values = np.asarray(values)
        scores.setdefault(key, []).append(
            values if values.dtype == bool else values.astype(np.float64))
    seen += batch_size
    if on_batch is not None:
      on_batch(seen)

  if not seen:
    raise ValueError("evaluation saw no images")
  return families, {k: np.concatenate(v) for k, v in scores.items()}


def summarise(scores: Mapping[str, np.ndarray], *, num_bootstrap: int = 1000,
              seed: int = 0, protocol: Optional[protocols.Protocol] = None,
              families: Optional[Iterable[scorers.Family]] = None) -> dict:
  """Aggregates `per_image_scores` into `evaluate`'s flat dict: each family's summary.

  `families` (None: `scorers.FAMILIES`) each aggregate their own keys of
  `scores` (`Family.summarise`), in order. Subset B scores where `protocol`
  (None: `hpunet`) asks for them; a score computed on fewer images than the
  split (BerDiff's HM-IoU) gets `<key>_num_images`.
  """
  protocol = protocol or protocols.hpunet()
  results: dict = {}
  for family in scorers.FAMILIES if families is None else families:
    results.update(family.summarise(scores, protocol=protocol, num_bootstrap=num_bootstrap,
                                    seed=seed))
  return results


def evaluate(model, params, batches: Iterable[Mapping[str, Any]], *, rng,
             num_samples: int = 100, num_examples: Optional[int] = None,
             num_bootstrap: int = 1000, on_batch: Optional[Callable[[int], Any]] = None,
             protocol: Optional[protocols.Protocol] = None,
             sample_chunk: int = sampling.DEFAULT_SAMPLE_CHUNK, mesh=None,
             families: Optional[Iterable[scorers.Family]] = None) -> dict:
  """Samples `model` on `batches` and returns the split's scores.

  See `per_image_scores` for the arguments, and each family's module for
  which samples its scores use. Device memory grows with the images per
  device times `sample_chunk`, not with `num_samples`.

  Returns:
    A flat dict. For each score `<key>` in `ged_16`, `ged_50`, `ged_100`,
    `hm_iou_16`, `iou_rec`, `ncc`, `diversity` and, where batches carry
    candidates, `exact_ged`, `exact_ged_floor`, `exact_ged_single_guess`,
    `exact_ged_normalised`, `match_rate`, `tvd`, and where they carry objects
    the per-object scores (`scorers.objects.KEYS`): `<key>` (mean over
    images), `<key>_std`, `<key>_ci` ([low, high], percentile bootstrap 95%).
    For the GED and HM-IoU scores also `<key>_subset_b`,
    `<key>_subset_b_std`, `<key>_subset_b_ci`. For `ncc` and
    `exact_ged_normalised` also `<key>_num_nan`, the images where it is
    undefined (left out of the mean). Plus `num_images`,
    `num_images_subset_b` and, with candidates, `num_images_exact`. That is
    for the `hpunet` protocol (`protocol` None); another protocol keeps the
    keys of the scores it computes.
  """
  families, scores = _scores(model, params, batches, rng=rng, num_samples=num_samples,
                             num_examples=num_examples, on_batch=on_batch, protocol=protocol,
                             sample_chunk=sample_chunk, mesh=mesh, families=families)
  return summarise(scores, num_bootstrap=num_bootstrap, protocol=protocol, families=families)


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


def select_families(config, split) -> tuple:
  """The scorer families of `split`'s data: `scorers.select` of its first eval batch's keys."""
  return scorers.select(select_examples(config, split, 1, None))


def evaluation_progress(config, split, num_examples, *, print_fn=logging.info):
  """A `Progress` over the images of `split` that an evaluation will see."""
  total = pipeline.num_examples(config.data, split)
  if num_examples is not None:
    total = min(total, num_examples)
  return Progress(total, unit="image", every_s=30, print_fn=print_fn)


def run_evaluation(model, params, config, split, *, num_samples=None, num_examples=None,
                   rng=None, print_fn=logging.info, mesh=None, families=None):
  """Evaluates `params` on `split` with the config's eval settings, with progress lines.

  `eval.protocol` says the scores, and with the papers' presets the sample
  count and the images (`protocols.num_samples`, `protocols.num_examples`);
  `num_samples` / `num_examples`, when given, override those. Runs on every
  device of `mesh` (None: all devices of all processes) with the config's
  `eval.sample_chunk`. `families`: the scorer families (None: those the
  data's batches provide for, `scorers.select`).
  """
  protocol = protocols.of_config(config.eval)
  num_samples = num_samples or protocols.num_samples(config.eval)
  num_examples = num_examples if num_examples is not None else protocols.num_examples(config.eval)
  rng = jax.random.key(config.train.seed + 1) if rng is None else rng
  progress = evaluation_progress(config, split, num_examples, print_fn=print_fn)
  return evaluate(model, params, eval_batches(config, split, num_examples), rng=rng,
                  num_samples=num_samples, num_examples=num_examples,
                  on_batch=progress.update, protocol=protocol,
                  sample_chunk=config.eval.sample_chunk, mesh=mesh, families=families)
