"""A shortened synthetic schedule must improve the exact scores (guards issue-7 results)."""
import jax
import pytest

from configs import synthetic
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.evaluation import driver
from hpunet_jax.training import loop
from hpunet_jax.training.state import create_train_state

pytestmark = pytest.mark.slow   # 150 training steps and two evaluations


def test_exact_scores_improve_with_training(tmp_path, synthetic_data_dir):
  config = synthetic.get_config("tiny")
  config.data.data_dir = synthetic_data_dir
  config.train.num_steps = 150
  config.train.log_every = 50
  config.train.eval_every = 150
  config.train.checkpoint_every = 150
  config.optim.learning_rate = 3e-3
  config.eval.num_examples = 16
  config.eval.num_samples = 16
  config.eval.batch_size = 16
  workdir = str(tmp_path / "run")
  trained = loop.train_and_evaluate(config, workdir)

  # The same evaluation of the untrained network.
  _, model, _, _ = workdir_lib.Run(workdir).params(config)
  example = next(iter(driver.eval_batches(config, "train", 1)))
  example = {"image": example["image"],
             "segmentation": jax.nn.one_hot(example["masks"][..., 0].astype(int), 2)}
  initial = create_train_state(config, jax.random.key(config.train.seed), example)
  untrained = driver.run_evaluation(model, workdir_lib.local_copy(initial.params["net"]), config,
                                     config.eval.split)

  assert trained["exact_ged"] < 0.7 * untrained["exact_ged"], (trained, untrained)
  assert trained["exact_ged_normalised"] < untrained["exact_ged_normalised"] - 0.2
  assert trained["iou_rec"] > untrained["iou_rec"] + 0.2
