"""Evaluates the latest checkpoint in --workdir and writes DIR/evaluation.json.

    python -m experiments.evaluate --config=configs/synthetic.py --workdir=runs/synthetic \
        [--split=test] [--num_samples=100] [--num_examples=N]
"""
import os

from absl import app, flags
import jax
from ml_collections import config_flags

from hpunet_jax import evaluation, summary, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "The config the run was trained with (e.g. configs/synthetic.py).",
    lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Training workdir holding checkpoints/.")
_SPLIT = flags.DEFINE_string("split", "test", "Split to evaluate: train, validation or test.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 100, "Samples per image (>= 100 for GED100).",
                                    lower_bound=1)
_NUM_EXAMPLES = flags.DEFINE_integer("num_examples", None, "Only the first N images of the split "
                                     "(default: all).",
                                     lower_bound=1)
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  trainer.quiet_library_logs()
  config, model, params, step = trainer.restore_params(_WORKDIR.value, _CONFIG.value)
  config.eval.num_examples = _NUM_EXAMPLES.value   # None: the whole split
  results = trainer.run_evaluation(model, params, config, _SPLIT.value,
                                   num_samples=_NUM_SAMPLES.value,
                                   num_examples=_NUM_EXAMPLES.value)
  results.update(step=step, split=_SPLIT.value, num_samples=_NUM_SAMPLES.value)
  factors = None
  if "exact_ged" in results and model.config.num_scales > 1:
    # Which factor of the known distribution each latent scale carries.
    factors = evaluation.factor_statistics(
        model, params, trainer.eval_batches(config, _SPLIT.value, _NUM_EXAMPLES.value),
        rng=jax.random.key(config.train.seed + 2), num_samples=_NUM_SAMPLES.value,
        num_examples=_NUM_EXAMPLES.value)
    results["scales"] = factors
  path = os.path.join(_WORKDIR.value, "evaluation.json")
  summary.write_json(path, results)
  print(f"{config.data.name} {_SPLIT.value}, checkpoint step {step}, "
        f"{results['num_images']} images, {_NUM_SAMPLES.value} samples each:")
  print(evaluation.format_table(results))
  if factors is not None:
    print("\nWhat each latent scale carries (samples assigned to their nearest candidate):")
    print(evaluation.format_factor_table(factors))
  print(f"Written to {path}")


if __name__ == "__main__":
  app.run(main)
