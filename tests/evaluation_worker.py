"""Scores six fixed images with a tiny HPU-Net, for the evaluation-layout tests.

    python tests/evaluation_worker.py --out=scores.npz [--devices=8] [--batch_size=4]
        [--sample_chunk=16] [--process_id=0 --num_processes=2 --port=12345]

The model is `conftest.tiny_config()`'s network at its seed-0 initialisation;
the images, graders and candidates come from a fixed numpy seed. Every process
passes the same batches to `driver.per_image_scores` on the mesh of all
devices of all processes; process 0 writes the per-image scores to --out.
"""
import argparse

import parallel_worker

NUM_IMAGES = 6
NUM_SAMPLES = 16


def batches(batch_size, size=16, num_graders=4, num_candidates=3):
  """The six images in batches of `batch_size` (the last one smaller)."""
  import numpy as np
  rng = np.random.default_rng(0)
  images = rng.random((NUM_IMAGES, size, size, 1), np.float32)
  masks = (rng.random((NUM_IMAGES, size, size, num_graders)) > 0.6).astype(np.float32)
  candidates = (rng.random((NUM_IMAGES, num_candidates, size, size)) > 0.6).astype(np.float32)
  probs = np.tile(np.asarray([0.5, 0.3, 0.2], np.float32), (NUM_IMAGES, 1))
  return [dict(image=images[i:i + batch_size], masks=masks[i:i + batch_size],
               candidates=candidates[i:i + batch_size], candidate_probs=probs[i:i + batch_size])
          for i in range(0, NUM_IMAGES, batch_size)]


def scores(batch_size, sample_chunk, mesh=None):
  """`driver.per_image_scores` of the tiny model on `batches(batch_size)`."""
  import jax
  import jax.numpy as jnp
  import conftest
  from hpunet_jax import config_lib
  from hpunet_jax.evaluation import driver
  from hpunet_jax.model import make_model

  model = make_model(config_lib.model_config(conftest.tiny_config()))
  params = model.init(jax.random.key(0), jnp.zeros((1, 16, 16, 1)), jnp.zeros((1, 16, 16, 2)))
  return driver.per_image_scores(model, params, batches(batch_size), rng=jax.random.key(1),
                                 num_samples=NUM_SAMPLES, sample_chunk=sample_chunk, mesh=mesh)


def main():
  parser = argparse.ArgumentParser()
  parser.add_argument("--batch_size", type=int, default=4)
  parser.add_argument("--sample_chunk", type=int, default=16)
  args = parallel_worker.start_jax(parser)
  import jax
  import numpy as np
  result = scores(args.batch_size, args.sample_chunk)
  assert jax.device_count() == args.devices * args.num_processes, jax.devices()
  if jax.process_index() == 0:
    np.savez(args.out, **result)


if __name__ == "__main__":
  main()
