"""A trained model for evaluation and sampling: a run's config and its network parameters.

`restore_params` needs only the run's model config and its checkpoint: the
network parameters are read alone from the checkpoint (no optimiser, loss,
train state or data example is built), verified, and checked against the
model the config describes.
"""
from etils import epath
import jax
import jax.numpy as jnp

from hpunet_jax import config_lib
from hpunet_jax.infra import checkpoint as checkpoint_lib
from hpunet_jax.model import make_model

# Where the network's parameters sit in a checkpoint's train state.
NET_PARAMS = ("params", "net")


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


def restore_params(workdir, config=None, *, step=None):
  """Loads the config (from `workdir/config.json` unless given) and the network parameters.

  Args:
    workdir: the run's folder (any `etils.epath` path).
    config: the config to use; None reads the run's `config.json`.
    step: a checkpoint step; None takes the newest that verifies (warning
      about newer ones that do not).

  Returns:
    `(config, model, params, step)`; params are single-device arrays.

  Raises:
    FileNotFoundError: no checkpoint (or no such step) in the workdir.
    ValueError: the parameters do not fit the config's model group.
  """
  if config is None:
    config = config_lib.load_run_config(workdir)
  model = make_model(config_lib.validate(config))
  # Read-only: creates nothing in the workdir, leaves a running job's saves alone.
  checkpointer = checkpoint_lib.Checkpointer(epath.Path(workdir) / config_lib.CHECKPOINT_DIR,
                                             read_only=True)
  try:
    restored = checkpointer.restore_subtree(NET_PARAMS, step)
  finally:
    checkpointer.close()
  check_params_fit(model, restored.state, f"{checkpointer.directory} step {restored.step}")
  return config, model, restored.state, restored.step
