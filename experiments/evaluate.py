"""Evaluates the latest checkpoint in --workdir and writes DIR/evaluation.json.

    python -m experiments.evaluate --workdir=runs/synthetic \
        [--config.eval.split=test] [--config.eval.num_samples=100] [--config.eval.num_examples=N]

Uses the run's `config.json` (its `eval` group: split, samples per image,
number of images, batch size) unless `--config=FILE` is given; any field can
be overridden with `--config.<group>.<field>=value` (see
`experiments/run_flags.py`). Prints progress lines while it runs, then one
table.
"""
from absl import app
from etils import epath
import jax

from experiments import run_flags
from hpunet_jax import config_lib, evaluation, summary, trainer

EVALUATION_FILE = "evaluation.json"


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  trainer.quiet_library_logs()
  workdir = run_flags.WORKDIR.value
  config = run_flags.config()
  config, model, params, step = trainer.restore_params(workdir, config)
  split, num_samples = config.eval.split, config.eval.num_samples
  num_examples = config.eval.num_examples   # None: the whole split
  results = trainer.run_evaluation(model, params, config, split, print_fn=print)
  results.update(step=step, split=split, num_samples=num_samples)
  factors = objects = None
  if "joint_tvd" in results:
    # Data with independent objects: which scale carries which object's factor.
    progress = trainer.evaluation_progress(config, split, num_examples, print_fn=print)
    objects = evaluation.object_factor_statistics(
        model, params, trainer.eval_batches(config, split, num_examples),
        rng=jax.random.key(config.train.seed + 2), num_samples=num_samples,
        num_examples=num_examples, on_batch=progress.update)
    results["object_scales"] = objects
  elif "exact_ged" in results and model.config.num_scales > 1:
    # Which factor of the known distribution each latent scale carries.
    progress = trainer.evaluation_progress(config, split, num_examples, print_fn=print)
    factors = evaluation.factor_statistics(
        model, params, trainer.eval_batches(config, split, num_examples),
        rng=jax.random.key(config.train.seed + 2), num_samples=num_samples,
        num_examples=num_examples, on_batch=progress.update)
    results["scales"] = factors
  path = epath.Path(workdir) / EVALUATION_FILE
  summary.write_json(path, results)
  print(f"{config.data.name} {split}, checkpoint step {step}, "
        f"{results['num_images']} images, {num_samples} samples each:")
  print(evaluation.format_table(results))
  if factors is not None:
    print("\nWhat each latent scale carries (samples assigned to their nearest candidate):")
    print(evaluation.format_factor_table(factors))
  if objects is not None:
    print("\nWhat each latent scale carries, per object (the others at their means):")
    print(evaluation.format_object_factor_table(objects))
  print(f"Written to {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=config_lib.parse_flags)
