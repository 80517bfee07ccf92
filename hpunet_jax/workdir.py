"""A run's folder: its paths, its config, its metric records, its network and its evaluation.

    run = workdir.Run("runs/synthetic")        # any etils.epath path: local, gs://, ...
    config = run.config()                       # config.json (older files migrated)
    config, model, params, step = run.params()  # the newest checkpoint that verifies
    run.records(); run.recorded_evaluation(step); run.evaluation()

Training (`training/run.py`), the tools (`experiments/`) and the release
importer reach a run's files through `Run` alone. What a run leaves:
docs/training.md.
"""
import json

from etils import epath
import jax
import jax.numpy as jnp
import ml_collections

from hpunet_jax import config_lib
from hpunet_jax.infra import checkpoint as checkpoint_lib
from hpunet_jax.infra import writer as writer_lib
from hpunet_jax.model import make_model

CONFIG_FILE = "config.json"
CHECKPOINT_DIR = "checkpoints"
FIGURE_DIR = "figures"
EVALUATION_FILE = "evaluation.json"
METRICS_FILE = writer_lib.METRICS_FILE
# Where the network's parameters sit in a checkpoint's train state.
NET_PARAMS = ("params", "net")
# The data fields that say which data a model saw (not where it is stored or how
# fast it is read): a config that differs in these evaluates on other data.
DATA_IDENTITY_FIELDS = ("name", "image_size", "crop_size", "num_channels", "num_graders")


class Run:
  """The folder of one run (`workdir`), and what is in it."""

  def __init__(self, workdir):
    self.path = epath.Path(workdir)

  def __repr__(self):
    return f"Run({self.path})"

  config_file = property(lambda self: self.path / CONFIG_FILE)
  checkpoint_dir = property(lambda self: self.path / CHECKPOINT_DIR)
  figure_dir = property(lambda self: self.path / FIGURE_DIR)
  metrics_file = property(lambda self: self.path / METRICS_FILE)
  evaluation_file = property(lambda self: self.path / EVALUATION_FILE)

  def has_config(self) -> bool:
    return self.config_file.exists()

  def config(self) -> ml_collections.ConfigDict:
    """The run's config from its `config.json` (`config_lib.config_from_json` migrates old ones).

    Raises:
      FileNotFoundError: the folder has no `config.json`.
    """
    if not self.has_config():
      raise FileNotFoundError(f"{self.config_file} not found: is {self.path} a training workdir?")
    return config_lib.config_from_json(json.loads(self.config_file.read_text()))

  def write_config(self, config):
    """Writes `config.json` (atomically): the config as the run uses it."""
    writer_lib.write_json(self.config_file, json.loads(config.to_json_best_effort()))

  def records(self) -> list[dict]:
    """The records of `metrics.jsonl`, in order ([] if there is none yet)."""
    return writer_lib.read_jsonl(self.metrics_file) if self.metrics_file.exists() else []

  def recorded_evaluation(self, step):
    """The scalars of the `eval/` record at `step` in metrics.jsonl (None if there is none)."""
    for record in reversed(self.records()):
      if record.get("step") == step and any(k.startswith("eval/") for k in record):
        return {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
    return None

  def evaluation(self):
    """What `experiments.evaluate` last wrote (`evaluation.json`), or None."""
    if not self.evaluation_file.exists():
      return None
    return json.loads(self.evaluation_file.read_text())

  def write_evaluation(self, results):
    writer_lib.write_json(self.evaluation_file, results)

  def params(self, config=None, *, step=None):
    """The config (the run's unless given) and the network's parameters, alone.

    Only the model config and the checkpoint are needed: the network
    parameters are read alone from the checkpoint (no optimiser, loss, train
    state or data example is built), verified, and checked against the model
    the config describes.

    Args:
      config: the config to use; None reads the run's `config.json`.
      step: a checkpoint step; None takes the newest that verifies (warning
        about newer ones that do not).

    Returns:
      `(config, model, params, step)`; params are single-device arrays.

    Raises:
      FileNotFoundError: no config.json, no checkpoint or no such step.
      ValueError: the parameters do not fit the config's model group.
    """
    if config is None:
      config = self.config()
    model = make_model(config_lib.validate(config))
    # Read-only: creates nothing in the workdir, leaves a running job's saves alone.
    checkpointer = checkpoint_lib.Checkpointer(self.checkpoint_dir, read_only=True)
    try:
      restored = checkpointer.restore_subtree(NET_PARAMS, step)
    finally:
      checkpointer.close()
    check_params_fit(model, restored.state, f"{checkpointer.directory} step {restored.step}")
    return config, model, restored.state, restored.step


def local_copy(tree):
  """This process's replica of a replicated global pytree, on one local device."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def check_params_fit(model, params, where):
  """Raises a ValueError naming the first parameter of `params` that `model` does not have."""
  try:
    channels = model.input_channels(params)
  except ValueError as e:
    raise ValueError(f"{where}: {e} (model.name of the config); use the model config it was "
                     "trained with") from None
  size = model.config.size_multiple
  images = jax.ShapeDtypeStruct((1, size, size, channels), jnp.float32)
  segs = jax.ShapeDtypeStruct((1, size, size, model.config.num_classes), jnp.float32)
  wanted = jax.eval_shape(model.init, jax.random.key(0), images, segs)
  shapes = lambda tree: {f"{m}/{n}": tuple(v.shape) for m, vs in tree.items() for n, v in vs.items()}
  ours, theirs = shapes(wanted), shapes(params)
  for name in sorted(set(ours) | set(theirs)):
    if ours.get(name) != theirs.get(name):
      raise ValueError(
          f"{where}: its parameters do not fit the model group of the config "
          f"({name}: checkpoint {theirs.get(name)}, model {ours.get(name)}); use the model "
          "config it was trained with")


def _normalised(value):
  return list(value) if isinstance(value, tuple) else value


def tool_config(workdir, config=None, overrides=None, *, allow_other_data=False):
  """The config a tool (evaluate, sample, the benchmarks) uses for the run in `workdir`.

  Args:
    workdir: the run's folder (any `epath` path), or None (then `config` is used,
      or `base_config()` with the overrides).
    config: a config given on the command line (`--config=...`, its overrides
      already applied), or None for the run's own `config.json`.
    overrides: `{"group.field": value}` (`config_flags.get_override_values`),
      applied to the run's `config.json` when `config` is None.
    allow_other_data: accept a `config` whose data (`DATA_IDENTITY_FIELDS`)
      differ from the run's.

  Returns:
    The ConfigDict, not yet validated.

  Raises:
    FileNotFoundError: `workdir` has no `config.json` and no `config` is given.
    ValueError: naming the `data.<field>` where `config` differs from the run,
      unless `allow_other_data`.
  """
  run = None if workdir is None else Run(workdir)
  if config is None:
    config = run.config() if run is not None else config_lib.base_config()
    return config_lib.apply_overrides(config, overrides or {})
  if run is not None and run.has_config() and not allow_other_data:
    trained = run.config().data
    for field in DATA_IDENTITY_FIELDS:
      ours, theirs = config.data.get(field), trained.get(field)
      if _normalised(ours) != _normalised(theirs):
        raise ValueError(
            f"data.{field}={ours!r} differs from the run in {workdir}, which was trained with "
            f"data.{field}={theirs!r}; leave out --config to use the run's config, or pass "
            f"--allow_other_data to evaluate on other data")
  return config
