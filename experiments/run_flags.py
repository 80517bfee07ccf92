"""The flags of every tool that reads a run: --workdir, --config (+ overrides), --allow_other_data.

    python -m experiments.evaluate --workdir=DIR [--config.eval.num_samples=16]
    python -m experiments.evaluate --workdir=DIR --config=configs/synthetic.py [--allow_other_data]

Without `--config`, a tool uses the run's own `DIR/config.json`;
`--config.<group>.<field>=value` overrides any field of it (checked against
the field's type, as for training). With `--config=FILE`, that config is used
instead, and if its data differ from the run's the tool stops unless
`--allow_other_data` is given (`workdir.tool_config`).
"""
import copy
import sys

from absl import app
from absl import flags
from ml_collections import config_flags

from experiments import cli
from hpunet_jax import config_lib, workdir

WORKDIR = flags.DEFINE_string("workdir", None, "The run's folder (config.json, checkpoints/).")
# The default is config_lib's `get_config` (= base_config()): overrides of any
# field parse without --config, and are then applied to the run's config.json.
# With a default file, ml_collections applies the command line's overrides
# already here, at definition: an unknown field fails now, not at parsing.
try:
  CONFIG = config_flags.DEFINE_config_file(
      "config", config_lib.__file__,
      "A config file (e.g. configs/synthetic.py) to use instead of the run's config.json. "
      "Override any field with --config.<group>.<field>=value, with or without it.",
      lock_config=True)
except (AttributeError, KeyError) as e:
  cli.exit_on_unknown_field(e, sys.argv)
ALLOW_OTHER_DATA = flags.DEFINE_bool(
    "allow_other_data", False,
    "Accept a --config whose data (name, sizes, graders) differ from those the run was "
    "trained on.")


def config(*, workdir_required=True):
  """The config the flags select (see `workdir.tool_config`); not yet validated."""
  if workdir_required and WORKDIR.value is None:
    raise app.UsageError("--workdir is required: the run's folder")
  given = flags.FLAGS["config"].present
  try:
    return workdir.tool_config(
        # A copy: callers (benchmarks.paired) change one config per variant.
        WORKDIR.value, copy.deepcopy(CONFIG.value) if given else None,
        config_flags.get_override_values(flags.FLAGS["config"]),
        allow_other_data=ALLOW_OTHER_DATA.value)
  except (FileNotFoundError, ValueError) as e:
    raise app.UsageError(str(e)) from None
