"""The evaluation's samples: per-image keys, chunks, and batches over the `('data',)` mesh.

One jitted device function per model and setting (`device_fn`) draws every
image's samples in chunks of `eval.sample_chunk` (`sample_chunked`, so that
memory does not grow with the number of samples), reconstructs from every
grader and returns the IoU matrices and per-image S_NCC / IoU_rec, replicated
to every process. A batch is padded to a multiple of the devices with copies
of its first image and sharded over the mesh (`global_inputs`); the padding
is dropped from the outputs (`batch_outputs`). Each image's samples are
drawn with keys derived from its index in the split (`image_keys`), so
nothing depends on the batch size, the chunk size or the devices.
docs/evaluation.md#on-every-device-keys-chunks-and-memory.
"""
from typing import Any, Iterable, Mapping, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.evaluation import exact, metrics
from hpunet_jax.infra import parallel

# Samples drawn at once per image (`eval.sample_chunk`; docs/evaluation.md).
DEFAULT_SAMPLE_CHUNK = 10
# Batch keys of data that declares independent objects (`synthetic_objects`).
OBJECT_KEYS = ("object_regions", "object_states", "object_state_probs")

# Jitted device functions, keyed by (id(model), num_samples, sample_chunk, mesh). The
# model is kept in the value so that its id cannot be reused by another object
# while cached.
_DEVICE_FNS: dict = {}


def image_keys(rng, indices):
  """Each image's sampling key: `fold_in(rng, index)` of its index in the split."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(indices, jnp.uint32))


def sample_chunked(model, params, keys, images, *, num_samples, sample_chunk, mean=False):
  """Draws `num_samples` per image in chunks; a function to call inside `jit`.

  Sample `j` of image `i` comes from `fold_in(keys[i], j)` alone, so it does
  not depend on the other images of the batch, on the batch size or on
  `sample_chunk`. The chunks run one after the other (`lax.scan`), so the
  decoder's activations of only `b * sample_chunk` samples are alive at once.

  Args:
    model: the model (`model.sample`).
    params: its parameters.
    keys: `[b]` PRNG keys, one per image (`image_keys`).
    images: `[b, H, W, C]`.
    num_samples: N.
    sample_chunk: samples drawn at once per image (the last chunk is padded,
      and its extra samples dropped).
    mean: `model.sample`'s `mean`.

  Returns:
    `(samples, mean_probs, mean_log_probs)`: binary foreground `[b, N, H, W]`,
    and over the N samples the mean class probabilities `[b, H, W, C]` and
    the mean `log(p + eps)` `[b, H, W, C]` (what S_NCC needs of them).
  """
  chunk = max(1, min(int(sample_chunk), int(num_samples)))
  num_chunks = -(-num_samples // chunk)

  def one_image(key, image):
    def one_sample(j):
      return model.sample(params, jax.random.fold_in(key, j), image[None], num_samples=1,
                          mean=mean)[0, 0]                          # [H, W, C]

    def body(carry, c):
      sample_ids = c * chunk + jnp.arange(chunk)
      logits = jax.vmap(one_sample)(sample_ids).astype(jnp.float32)   # [chunk, H, W, C]
      probs = jax.nn.softmax(logits, -1)
      valid = (sample_ids < num_samples).astype(jnp.float32)[:, None, None, None]
      sum_probs, sum_log = carry
      carry = (sum_probs + (probs * valid).sum(0),
               sum_log + (jnp.log(probs + metrics.LOG_EPSILON) * valid).sum(0))
      return carry, jnp.argmax(logits, -1) == 1

    height, width, _ = image.shape
    num_classes = jax.eval_shape(one_sample, 0).shape[-1]
    zeros = jnp.zeros((height, width, num_classes), jnp.float32)
    (sum_probs, sum_log), samples = jax.lax.scan(body, (zeros, zeros), jnp.arange(num_chunks))
    samples = samples.reshape((num_chunks * chunk, height, width))[:num_samples]
    return samples, sum_probs / num_samples, sum_log / num_samples

  return jax.vmap(one_image)(keys, images)


def device_fn(model, num_samples, sample_chunk, mesh):
  """The jitted sample-reconstruct-score function of `model` (built once).

  Called as `fn(params, rng, *global_inputs(...))`. Its inputs are global
  arrays sharded over the images of `mesh`; its outputs are replicated, so
  that every process holds every image's matrices.
  """
  key = (id(model), num_samples, sample_chunk, mesh)
  cached = _DEVICE_FNS.get(key)
  if cached is not None and cached[0] is model:
    return cached[1]

  def scores_on_device(params, rng, indices, images, masks, candidates, objects=None):
    keys = image_keys(rng, indices)
    samples, mean_probs, mean_log = sample_chunked(model, params, keys, images,
                                                   num_samples=num_samples,
                                                   sample_chunk=sample_chunk)
    num_classes = mean_probs.shape[-1]
    graders = jnp.moveaxis(masks, -1, 1) > 0.5  # [b, M, H, W]
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
    out = dict(
        iou_ss=metrics.pairwise_iou(samples, samples),
        iou_sy=metrics.pairwise_iou(samples, graders),
        iou_yy=metrics.pairwise_iou(graders, graders),
        iou_rec=metrics.reconstruction_iou(reconstructions, graders),
        ncc=metrics.ncc_from_means(mean_probs, mean_log, graders),
    )
    if candidates is not None:
      out["iou_sc"] = metrics.pairwise_iou(samples, candidates)
      out["iou_cc"] = metrics.pairwise_iou(candidates, candidates)
    if objects is not None:
      regions, state_masks = objects
      out["iou_ons"] = exact.object_state_iou(samples, regions, state_masks)  # [b, O, N, S]
    return out

  jitted = jax.jit(scores_on_device, out_shardings=parallel.replicated(mesh))
  _DEVICE_FNS[key] = (model, jitted)
  return jitted


def on_mesh(tree, mesh):
  """`tree` replicated over `mesh`: as it is where it already is, else placed there."""
  wanted = parallel.replicated(mesh)
  leaves = jax.tree.leaves(tree)
  if all(isinstance(x, jax.Array) and x.sharding == wanted for x in leaves):
    return tree
  return parallel.replicate(tree, mesh)


def padded_batch_size(batch_size, num_devices):
  """The eval batch rounded up to a multiple of the devices (the padding is dropped)."""
  return -(-batch_size // num_devices) * num_devices


def _pad(x, size):
  """`x` padded along axis 0 to `size` rows with copies of its first row."""
  x = np.asarray(x)
  if x.shape[0] == size:
    return x
  return np.concatenate([x, np.repeat(x[:1], size - x.shape[0], axis=0)])


def global_inputs(batch, start, mesh, padded_size):
  """The device function's batch arguments: global arrays sharded over `mesh`.

  `(indices, images, masks, candidates, objects)`; the batch's images get the
  indices `start, start + 1, ...` (their keys), and every array is padded to
  `padded_size` images with copies of the first (dropped from the outputs).
  """
  sharding = parallel.batch_sharding(mesh)
  put = lambda x: jax.make_array_from_callback(
      (padded_size,) + x.shape[1:], sharding,
      lambda index, x=_pad(x, padded_size): x[index])
  indices = np.arange(start, start + padded_size, dtype=np.uint32)
  candidates = None
  if "candidates" in batch:
    candidates = put(np.asarray(batch["candidates"], np.float32))
  objects = None
  if OBJECT_KEYS[0] in batch:
    objects = (put(np.asarray(batch["object_regions"], np.float32)),
               put(np.asarray(batch["object_states"], np.float32)))
  return (put(indices), put(np.asarray(batch["image"], np.float32)),
          put(np.asarray(batch["masks"], np.float32)), candidates, objects)


def batch_outputs(scoring_fn, params, rng, batch, start, mesh, padded_size):
  """One eval batch through `scoring_fn` (`device_fn`) on every device of `mesh`: host arrays
  of the batch's images (`global_inputs`), the padding dropped."""
  size = np.shape(batch["image"])[0]
  out = scoring_fn(params, rng, *global_inputs(batch, start, mesh, padded_size))
  # Replicated outputs: every process reads every image's matrices.
  return {k: np.asarray(v, np.float64)[:size] for k, v in out.items()}


def first_examples(batches: Iterable[Mapping[str, Any]], num_examples: Optional[int]):
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
