"""Draws samples from the latest checkpoint in --workdir: figures and an .npz.

    python -m experiments.sample --workdir=runs/synthetic --output=samples.png \
        [--num_samples=16] [--indices=0,1,2] [--config.eval.split=test]

Writes OUTPUT (all scales free), OUTPUT with `_coarsest_free` / `_finest_free`
before the extension (only that latent scale sampled, the others at their
means), and OUTPUT with `.npz` holding the images, graders, reconstructions,
binary samples `[N, b, H, W]` and their foreground probabilities. Images come
from the split `eval.split` of the run's `config.json` (or of `--config=FILE`);
`--config.<group>.<field>=value` overrides any field (`experiments/run_flags.py`).

`--style=colab` draws what DeepMind's colab (HPU_Net.ipynb) draws, e.g. for
the imported release (`experiments.import_release`): the first image of each
of the first 10 patients of `eval.split`, grader 3 reconstructed from a
posterior sample, 16 samples per variant (--indices and --num_samples are
ignored).

With `--distributed` (on every process of a multi-host job:
experiments/distributed.py) every process restores the run and process 0
alone draws and writes.
"""
from absl import app, flags
from etils import epath
import jax
import numpy as np

from experiments import cli, distributed, run_flags
from hpunet_jax import release, workdir
from hpunet_jax.evaluation import figures
from hpunet_jax.infra import logs

_OUTPUT = flags.DEFINE_string("output", None, "Output PNG path.")
_NUM_SAMPLES = flags.DEFINE_integer("num_samples", 16, "Samples per image (as the training "
                                    "figures).", lower_bound=1)
_INDICES = flags.DEFINE_list("indices", ["0", "1", "2"], "Indices of the images in the split.")
_SEED = flags.DEFINE_integer("seed", 0, "Sampling seed.")
_STYLE = flags.DEFINE_enum("style", "grid", ["grid", "colab"],
                           "grid: --indices with --num_samples; colab: the release colab's figure.")
flags.mark_flags_as_required(["output"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_library_logs()
  distributed.initialize_if_asked()
  try:
    indices = [int(i) for i in _INDICES.value]
  except ValueError:
    raise app.UsageError(f"--indices must be integers, got {','.join(_INDICES.value)}") from None
  if not indices or min(indices) < 0:
    raise app.UsageError("--indices must be non-negative integers")
  if not _OUTPUT.value.endswith(".png"):
    raise app.UsageError(f"--output must end in .png, got {_OUTPUT.value}")
  config = run_flags.config()
  config, model, params, step = workdir.Run(run_flags.WORKDIR.value).params(config)
  if jax.process_index() != 0:
    return
  split = config.eval.split
  prefix = _OUTPUT.value[:-len(".png")]
  if _STYLE.value == "colab":
    paths, arrays = release.draw_colab_figures(
        model, params, config, split, prefix, rng=jax.random.key(_SEED.value),
        title=f"step {step}, {split}: ")
    indices = arrays.pop("indices")
  else:
    paths, arrays = figures.draw_figures(
        model, params, config, split, prefix, rng=jax.random.key(_SEED.value),
        num_samples=_NUM_SAMPLES.value, indices=indices,
        title=f"step {step}, {split} {','.join(map(str, indices))}: ", print_fn=print)
  npz = epath.Path(prefix + ".npz")
  tmp = epath.Path(prefix + ".tmp.npz")
  with tmp.open("wb") as f:
    np.savez_compressed(f, indices=np.asarray(indices), **arrays)
  tmp.replace(npz)
  for path in paths + [npz]:
    print(f"Wrote {path}")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
