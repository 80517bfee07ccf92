"""Imports DeepMind's pretrained LIDC HPU-Net (TF1 checkpoint) into a workdir.

    python -m experiments.import_release \
      --checkpoint=https://storage.googleapis.com/hpunet-data/model_checkpoint/checkpoint.tar.gz \
      --workdir=runs/deepmind [--config.data.manual_dir=/path/to/lidc_crops]

--checkpoint may be the tarball, the folder it extracts to or a checkpoint
prefix (`.../tf_graph_data.ckpt`); local, gs:// or http(s). No TensorFlow is
needed. The workdir gets `config.json` (the LIDC defaults with any
--config.* overrides), `checkpoints/0/` (the release's weights, a fresh
optimiser) and `release_import.json` (the name map used, what was skipped);
`experiments.sample` and `experiments.evaluate` then use it like a trained
run. To fine-tune, start a new run from it:

    python -m experiments.train --config=configs/lidc.py --workdir=runs/finetune \
      --config.train.init_from=runs/deepmind [--config.loss.kappa=...]

Runtime: after the download, about a minute of CPU time (measured on a
checkpoint of the release's LIDC sizes written by the fixture generator).
"""
from absl import app, flags
from ml_collections import config_flags

from experiments import cli
from hpunet_jax import release
from hpunet_jax.infra import logs

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", release.RELEASE_URL,
    "The release's checkpoint: tarball, extracted folder or prefix; local, gs:// or URL.")
_WORKDIR = flags.DEFINE_string("workdir", None, "New workdir to write (config.json, checkpoints/).")
_CONFIG = config_flags.DEFINE_config_dict(
    "config", release.lidc_config(),
    "The workdir's config: the LIDC defaults; override fields with --config.<group>.<field>= "
    "(e.g. data.manual_dir). The model group must stay the release's sizes.")
flags.mark_flags_as_required(["workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  logs.quiet_library_logs()
  converted = release.import_release(_CHECKPOINT.value, _WORKDIR.value, _CONFIG.value)
  num_params = sum(int(v.size) for values in converted.params.values() for v in values.values())
  print(f"Imported {len(converted.mapping)} tensors ({num_params:,} parameters) from "
        f"{_CHECKPOINT.value} (scope {converted.scope}, release step "
        f"{converted.release_step}) into {_WORKDIR.value}.")
  for reason, names in sorted(converted.skipped.items()):
    print(f"  {reason}: {len(names)} tensor(s)")
  print(f"Sample: python -m experiments.sample --workdir={_WORKDIR.value} --style=colab "
        f"--output={_WORKDIR.value}/colab.png --config.eval.split=test")


if __name__ == "__main__":
  app.run(main, flags_parser=cli.parse_flags)
