"""Runs two train steps of a tiny config and saves the parameters, for the parallelism tests.

Twice: on fixed 16x16 crops, and with on-device augmentation of 24x24
examples to 16x16 crops (keys `augmented/...`).

    python tests/parallel_worker.py --out=params.npz [--devices=8]
        [--process_id=0 --num_processes=2 --port=12345]

Every process feeds only its contiguous slice of the fixed global batch; the
(process 0) parameters after the steps are written to --out.
"""
import argparse
import os


def start_jax(parser):
  """Parses the workers' common flags (and `parser`'s own), then starts JAX on them.

  `--devices` host-platform CPU devices (set before JAX starts its backend);
  with `--num_processes` > 1, `jax.distributed` on localhost:`--port` over gloo.
  Returns the parsed arguments.
  """
  parser.add_argument("--out", required=True)
  parser.add_argument("--devices", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--port", type=int, default=0)
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={args.devices}"
  import jax
  if args.num_processes > 1:
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator_address=f"localhost:{args.port}",
                               num_processes=args.num_processes, process_id=args.process_id)
  return args


def main():
  args = start_jax(argparse.ArgumentParser())
  import jax
  import numpy as np
  import hpunet_jax

  import conftest

  def tiny_config(augment):
    config = conftest.tiny_config()
    config.loss.top_k_percentage = 0.1   # Gumbel top-k over the global batch
    config.data.augment.enabled = augment
    config.data.augment.elastic_spacing = 8
    return config

  from jax.experimental import multihost_utils
  results = {}
  for augment, prefix, size in [(False, "", 16), (True, "augmented/", 24)]:
    config = tiny_config(augment)
    rng = np.random.default_rng(0)
    images = rng.random((8, size, size, 1)).astype(np.float32)
    labels = (rng.random((8, size, size)) > 0.7).astype(np.int64)
    batch = dict(image=images, segmentation=np.eye(2, dtype=np.float32)[labels])
    local = 8 // jax.process_count()
    start = jax.process_index() * local
    local_batch = {k: v[start:start + local] for k, v in batch.items()}

    state = hpunet_jax.create_train_state(config, jax.random.key(0), local_batch)
    step = hpunet_jax.make_train_step(config)
    assert step.mesh.devices.size == args.devices * args.num_processes
    for _ in range(2):
      state, metrics = step(state, local_batch)
    params = multihost_utils.process_allgather(state.params, tiled=True)
    for path, leaf in jax.tree_util.tree_leaves_with_path(params):
      results[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    for key in ("loss", "rec_mean") + (("augment_valid_fraction",) if augment else ()):
      results[prefix + key] = np.asarray(
          multihost_utils.process_allgather(metrics[key], tiled=True))
  if jax.process_index() == 0:
    np.savez(args.out, **results)

if __name__ == "__main__":
  main()
