r"""Paired comparison of model variants: one training step of each in turn.

    python -m benchmarks.paired --rounds=6 \
        --variants='execution.gemm_weight_grad_sizes=();execution.gemm_weight_grad_sizes=(64,)'

`--batch`, `--size`, `--seed`, `--workdir`, `--config` and its
`--config.<group>.<field>=` overrides are those of benchmarks.throughput.

Each variant is a `;`-separated entry of `,`-separated `<group>.<field>=value`
overrides, named as the `--config.<group>.<field>=` ones (a bare `field` is
`model.field`; values are Python literals; an empty entry is the config
itself). Augmentation on vs off at the LIDC setting (the on-device
augmentation of 180x180 examples against plain 128x128 crops):

    python -m benchmarks.paired --batch=8 --size=128 --augment_from=180 \
        --rounds=6 --variants='data.augment.enabled=False;'

All variants are compiled in one process on
the same fake batch (of `--augment_from` pixels where a variant augments), then each runs one step per round, round-robin, so the
machine's drift over minutes (large on shared or virtual machines) hits them
all alike. Prints one JSON line per variant: best and median step time, the
process's CPU seconds per step, XLA's FLOP count and temporary memory, and
the loss of its first step (equal across variants that only change how a
value is computed).
"""
import ast
import json
import time

from absl import app
from absl import flags
import jax
import numpy as np

import hpunet_jax
from experiments import cli
from hpunet_jax import config_lib
from hpunet_jax.training import state as train

# --batch, --size, --seed, --workdir and --config are benchmarks.throughput's
# flags, with the same meaning.
from benchmarks import throughput

flags.DEFINE_string("variants", ";execution.gemm_weight_grad_sizes=()",
                    "';'-separated variants, each ','-separated overrides <group>.<field>=value.")
flags.DEFINE_integer("rounds", 6, "Rounds; each variant runs one step per round.")
FLAGS = flags.FLAGS


def parse_variants(text):
  """'m.a=1,m.b=(2,);' -> [('m.a=1,m.b=(2,)', {'m.a': 1, 'm.b': (2,)}), ('default', {})]."""
  variants = []
  for entry in text.split(";"):
    entry = entry.strip()
    overrides = {}
    for item in filter(None, (i.strip() for i in _split_top_level(entry))):
      if "=" not in item:
        raise app.UsageError(f"--variants: {item!r} is not field=value")
      key, value = item.split("=", 1)
      try:
        overrides[key.strip()] = ast.literal_eval(value.strip())
      except (ValueError, SyntaxError) as e:
        raise app.UsageError(f"--variants: {value!r} (for {key}) is not a Python literal") from e
    variants.append((entry or "default", overrides))
  return variants


def _split_top_level(entry):
  """Splits on commas outside brackets: 'a=(1, 2),b=3' -> ['a=(1, 2)', 'b=3']."""
  parts, depth, start = [], 0, 0
  for i, ch in enumerate(entry):
    depth += ch in "([{"
    depth -= ch in ")]}"
    if ch == "," and depth == 0:
      parts.append(entry[start:i])
      start = i + 1
  parts.append(entry[start:])
  return parts


def make_config(overrides):
  config = throughput.make_config()
  # A bare field is a model or execution field, as before dotted paths were accepted.
  overrides = {key if "." in key else
               f"{'execution' if key in config_lib.EXECUTION_FIELDS else 'model'}.{key}": value
               for key, value in overrides.items()}
  try:
    config_lib.apply_overrides(config, overrides)
  except ValueError as e:
    raise app.UsageError(f"--variants: {e}") from None
  config_lib.validate(config)
  return config


def main(argv):
  del argv
  runs = []
  for name, overrides in parse_variants(FLAGS.variants):
    config = make_config(overrides)
    batch = throughput.fake_batch(config, FLAGS.batch, throughput.input_size(config), FLAGS.seed)
    state = hpunet_jax.create_train_state(config, FLAGS.seed, batch)
    step = train.make_train_step(config)
    global_batch = hpunet_jax.parallel.global_batch(batch, step.mesh)
    compiled, stats = throughput.compile_stats(step.jitted, state, global_batch)
    state, metrics = compiled(state, global_batch)
    runs.append(dict(name=name, compiled=compiled, state=state, batch=global_batch,
                     loss=float(metrics["loss"]), stats=stats, times=[], cpu=[]))
    print(f"# compiled {name} in {stats['compile_s']:.1f} s", flush=True)
  for r in range(FLAGS.rounds):
    for run in runs:
      c0, t0 = time.process_time(), time.perf_counter()
      run["state"], metrics = run["compiled"](run["state"], run["batch"])
      jax.block_until_ready(metrics["loss"])
      run["times"].append(time.perf_counter() - t0)
      run["cpu"].append(time.process_time() - c0)
    print(f"# round {r + 1}/{FLAGS.rounds} done", flush=True)
  for run in runs:
    print(json.dumps(dict(
        variant=run["name"], batch=FLAGS.batch, size=FLAGS.size, rounds=FLAGS.rounds,
        step_s_min=round(min(run["times"]), 4),
        step_s_median=round(float(np.median(run["times"])), 4),
        cpu_s_per_step_min=round(min(run["cpu"]), 3), **run["stats"],
        first_loss=run["loss"])), flush=True)


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
