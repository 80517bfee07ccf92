"""Evaluates the latest checkpoint in --workdir and writes DIR/evaluation.json.

    python -m experiments.evaluate --workdir=runs/synthetic \
        [--config.eval.split=test] [--config.eval.num_samples=100] [--config.eval.num_examples=N] \
        [--config.eval.protocol=hpunet|phiseg|ssn|car|ccdm|mose|berdiff] [--distributed]

Uses the run's `config.json` (its `eval` group: split, samples per image,
number of images, batch size) unless `--config=FILE` is given; any field can
be overridden with `--config.<group>.<field>=value` (see
`experiments/run_flags.py`). `eval.protocol` scores the run as a paper's code
does (`hpunet_jax/evaluation/protocols.py`, docs/literature.md); the papers'
presets fix the samples per image and take the whole split. Prints the
devices it runs on, progress lines while it runs, then one table.

The images are sharded over every device of every process (with
`--distributed` on each process of a multi-host job: experiments/distributed.py);
process 0 alone prints the table and writes the file.
"""
from absl import app
import jax

from experiments import cli, distributed, run_flags
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.evaluation import driver, protocols, report, scorers
from hpunet_jax.infra import logs


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_library_logs()
  distributed.initialize_if_asked()
  is_main = jax.process_index() == 0
  say = print if is_main else (lambda *args, **kwargs: None)
  workdir = run_flags.WORKDIR.value
  config = run_flags.config()
  config, model, params, step = workdir_lib.Run(workdir).params(config)
  split, num_samples = config.eval.split, protocols.num_samples(config.eval)
  num_examples = protocols.num_examples(config.eval)   # None: the whole split
  say(f"Evaluating on {distributed.describe_devices()}, {config.eval.batch_size} images per "
      f"batch, {config.eval.sample_chunk} samples per image at once.")
  families = driver.select_families(config, split)
  results = driver.run_evaluation(model, params, config, split, print_fn=say, families=families)
  results.update(step=step, split=split, num_samples=num_samples,
                 protocol=protocols.of_config(config.eval).name)
  # Which latent scale carries which factor of a known distribution, as the
  # data's most specific scorer family says (or None).
  scale_analysis = scorers.scale_analysis(families, model.config.num_scales)
  if scale_analysis:
    # On one device per process (each process computes the same statistics).
    progress = driver.evaluation_progress(config, split, num_examples, print_fn=say)
    results[scale_analysis.key] = scale_analysis.statistics(
        model, params, driver.eval_batches(config, split, num_examples),
        rng=jax.random.key(config.train.seed + 2), num_samples=num_samples,
        num_examples=num_examples, on_batch=progress.update)
  if not is_main:
    return
  run = workdir_lib.Run(workdir)
  run.write_evaluation(results)
  print(f"{config.data.name} {split}, checkpoint step {step}, "
        f"{results['num_images']} images, {num_samples} samples each, "
        f"protocol {results['protocol']}:")
  print(report.format_table(results))
  if scale_analysis:
    print(f"\n{scale_analysis.heading}")
    print(scale_analysis.table(results[scale_analysis.key]))
  print(f"Written to {run.evaluation_file}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
