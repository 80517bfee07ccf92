"""The evaluation's samples: per-image keys, chunks, and batches over the `('data',)` mesh.

One jitted device function per model and setting (`device_fn`) draws every
image's samples in chunks of `eval.sample_chunk` (`sample_chunked`, so that
memory does not grow with the number of samples) and hands them to each
scorer family's device function (`hpunet_jax.evaluation.scorers`), whose
outputs come back replicated to every process. A batch is padded to a
multiple of the devices with copies of its first image and sharded over the
mesh (`global_inputs`); the padding is dropped from the outputs
(`batch_outputs`). Each image's samples are drawn with keys derived from its
index in the split (`image_keys`), so nothing depends on the batch size, the
chunk size or the devices. docs/evaluation.md#on-every-device-keys-chunks-and-memory.
"""
from typing import Any, Iterable, Mapping, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.evaluation import metrics
from hpunet_jax.infra import parallel

# Samples drawn at once per image (`eval.sample_chunk`; docs/evaluation.md).
DEFAULT_SAMPLE_CHUNK = 10
# The batch key the samples are drawn from; every eval batch has it.
IMAGE_KEY = "image"

# Jitted device functions, keyed by (id(model), num_samples, sample_chunk, mesh,
# ids of the families). The model and the families are kept in the value so
# that their ids cannot be reused by other objects while cached.
_DEVICE_FNS: dict = {}


class Draws(NamedTuple):
  """What the device function draws for a batch of b images, N samples each.

  Attributes:
    samples: binary foreground `[b, N, H, W]`.
    mean_probs: the mean class probabilities over the N samples `[b, H, W, C]`.
    mean_log_probs: the mean `log(p + metrics.LOG_EPSILON)` over the N
      samples `[b, H, W, C]` (what S_NCC needs of them).
  """
  samples: jax.Array
  mean_probs: jax.Array
  mean_log_probs: jax.Array


def image_keys(rng, indices):
  """Each image's sampling key: `fold_in(rng, index)` of its index in the split."""
  return jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.asarray(indices, jnp.uint32))


def sample_chunked(model, params, keys, images, *, num_samples, sample_chunk,
                   mean=False) -> Draws:
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
    `Draws`: the binary samples and the two means over them.
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

  return Draws(*jax.vmap(one_image)(keys, images))


def input_keys(families) -> tuple:
  """The batch keys the device function takes: `image` and every family's `needs`."""
  keys = [IMAGE_KEY]
  for family in families:
    keys += [k for k in family.needs if k not in keys]
  return tuple(keys)


def device_fn(model, num_samples, sample_chunk, mesh, families):
  """The jitted function that samples `model` and runs each family's device part (built once).

  Called as `fn(params, rng, *global_inputs(batch, start, mesh, padded_size,
  families))`; returns `{family.name: family.on_device(model, params, draws,
  inputs)}` for the families that have a device part. Its inputs are global
  arrays sharded over the images of `mesh`; its outputs are replicated, so
  that every process holds every image's outputs.
  """
  families = tuple(families)
  key = (id(model), num_samples, sample_chunk, mesh, tuple(id(f) for f in families))
  cached = _DEVICE_FNS.get(key)
  if cached is not None and cached[0] is model and all(
      a is b for a, b in zip(cached[1], families)):
    return cached[2]

  def on_device(params, rng, indices, inputs):
    draws = sample_chunked(model, params, image_keys(rng, indices), inputs[IMAGE_KEY],
                           num_samples=num_samples, sample_chunk=sample_chunk)
    return {f.name: f.on_device(model, params, draws, inputs)
            for f in families if f.on_device is not None}

  jitted = jax.jit(on_device, out_shardings=parallel.replicated(mesh))
  _DEVICE_FNS[key] = (model, families, jitted)
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


def global_inputs(batch, start, mesh, padded_size, families):
  """The device function's batch arguments: global arrays sharded over `mesh`.

  `(indices, inputs)`: the batch's images get the indices `start, start + 1,
  ...` (their keys); `inputs` holds the batch's arrays of `input_keys(families)`
  as float32. Every array is padded to `padded_size` images with copies of
  the first (dropped from the outputs).
  """
  sharding = parallel.batch_sharding(mesh)
  put = lambda x: jax.make_array_from_callback(
      (padded_size,) + x.shape[1:], sharding,
      lambda index, x=_pad(x, padded_size): x[index])
  indices = np.arange(start, start + padded_size, dtype=np.uint32)
  inputs = {k: put(np.asarray(batch[k], np.float32)) for k in input_keys(families)}
  return put(indices), inputs


def batch_outputs(scoring_fn, params, rng, batch, start, mesh, padded_size, families):
  """One eval batch through `scoring_fn` (`device_fn`) on every device of `mesh`.

  Returns `{family name: {output: float64 host array}}` of the batch's images
  (`global_inputs`), the padding dropped.
  """
  size = np.shape(batch[IMAGE_KEY])[0]
  out = scoring_fn(params, rng, *global_inputs(batch, start, mesh, padded_size, families))
  # Replicated outputs: every process reads every image's outputs.
  return {name: {k: np.asarray(v, np.float64)[:size] for k, v in outputs.items()}
          for name, outputs in out.items()}


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
      seen += len(batch[IMAGE_KEY])
    yield index, batch
