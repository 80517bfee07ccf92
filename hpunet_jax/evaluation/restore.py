"""A trained model for evaluation and sampling: a run's config and its network parameters."""
from etils import epath
import jax
import numpy as np

from hpunet_jax import config_lib
from hpunet_jax.data import pipeline
from hpunet_jax.infra import checkpoint as checkpoint_lib


def local_copy(tree):
  """This process's replica of a replicated global pytree, on one local device."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def restore_params(workdir, config=None, *, step=None):
  """Loads the config (from `workdir/config.json` unless given) and the network parameters.

  Returns:
    `(config, model, params, step)`; params are local (single-device) arrays.
  """
  if config is None:
    config = config_lib.load_run_config(workdir)
  config_lib.validate(config)
  # Read-only: creates nothing in the workdir, leaves a running job's saves alone.
  checkpointer = checkpoint_lib.Checkpointer(epath.Path(workdir) / config_lib.CHECKPOINT_DIR,
                                             read_only=True)
  from hpunet_jax.training.state import create_train_state, make_train_step  # TODO light
  try:
    train_step = make_train_step(config)
    image_size = config.data.crop_size or config.data.image_size
    example = _example_batch(config, image_size)
    target = create_train_state(config, jax.random.key(0), example, mesh=train_step.mesh)
    if step is None:   # the newest that verifies; warns about newer ones that do not
      restored = checkpointer.restore_newest_valid(target)
      if restored is None:
        raise FileNotFoundError(f"no checkpoint in {checkpointer.directory}")
      state, step = restored.state, restored.step
    else:
      state, _ = checkpointer.restore(target, step)
  finally:
    checkpointer.close()
  return config, train_step.model, local_copy(state.params["net"]), step


def _example_batch(config, image_size):
  if image_size is None:
    info = pipeline.make_eval_iterator(config.data, "train", batch_size=1, num_examples=1)
    image = next(iter(info))["image"]
  else:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    image = np.zeros((1,) + size + (config.data.num_channels,), np.float32)
  return {"image": image,
          "segmentation": np.zeros(image.shape[:3] + (config.model.num_classes,), np.float32)}
