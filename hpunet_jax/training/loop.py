"""The training loop behind `experiments.train`: train, and every so often log, evaluate, save.

`train_and_evaluate(config, workdir)` resumes by itself from the newest
checkpoint in `workdir/checkpoints` that verifies (parameters, optimiser,
GECO state, RNG and the data iterator's position): running the same command
again continues a stopped run, and raising `train.num_steps` continues a
finished one. The run's resources (lease, checkpointer, metric writer,
preemption) belong to `run.RunContext`; the loop below is the steps and
their periodic actions. What a run leaves: docs/training.md; what it
guarantees when killed (evaluation before each checkpoint, records exactly
once): docs/fault_tolerance.md.

Every process trains and evaluates (the evaluation images are sharded over
all devices, as the training batches are); only process 0 writes metrics,
`config.json` and figures; orbax coordinates the checkpoints.
"""
import os
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpunet_jax import config_lib
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.data import augment, pipeline
from hpunet_jax.evaluation import driver, figures, report
from hpunet_jax.infra import checkpoint as checkpoint_lib
from hpunet_jax.infra import logs, multihost, parallel
from hpunet_jax.infra import writer as writer_lib
from hpunet_jax.infra.progress import Progress
from hpunet_jax.model.config import latent_placement
from hpunet_jax.training import run
from hpunet_jax.training.state import create_train_state, make_train_step



class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or Inf."""


def _check_model_accepts_data(model, example, config):
  try:
    model.check_inputs(jax.ShapeDtypeStruct(example["image"].shape, jnp.float32),
                       jax.ShapeDtypeStruct(example["segmentation"].shape, jnp.float32))
  except ValueError as e:
    field = "data.crop_size" if config.data.crop_size is not None else "data.image_size"
    raise ValueError(f"{field}: the data's {example['image'].shape[1:3]} images do not fit the "
                     f"model: {e}") from None


def _report_latent_placement(model, example, is_main):
  """Prints where the latents sit for the data's images, and warns if there is no 1x1 one."""
  height, width = example["image"].shape[1:3]
  description, warning = latent_placement(model.config, height, width)
  if is_main:
    _print_and_log(f"Model: {description}.")
  if warning:
    logging.warning("%s", warning)
    if is_main:
      print(f"WARNING: {warning}")


def _init_params_from(workdir, state, mesh):
  """`state` with the network parameters of the latest checkpoint in `workdir`.

  Fine-tuning (`train.init_from`): the step, optimiser, GECO state and RNG
  stay the fresh ones of this run.
  """
  _, _, params, step = workdir_lib.Run(workdir).params()
  ours = jax.tree.map(lambda x: x.shape, state.params["net"])
  theirs = jax.tree.map(lambda x: x.shape, params)
  if ours != theirs:
    raise ValueError(f"train.init_from={workdir}: its parameters do not fit this run's model "
                     "group; use the model config it was trained with")
  logging.info("Initialised the network from step %d of %s.", step, workdir)
  return state._replace(params={**state.params, "net": parallel.replicate(params, mesh)})


def _fetch(pending):
  """Fetches pending step metrics; raises on the first non-finite loss/gradient."""
  fetched = jax.device_get([m for _, m in pending])
  for (step, _), metrics in zip(pending, fetched):
    if not (np.isfinite(metrics["loss"]) and np.isfinite(metrics["grad_norm"])):
      bad = [k for k in ("loss", "grad_norm") if not np.isfinite(metrics[k])]
      raise NonFiniteError(f"non-finite {' and '.join(bad)} at step {step}")
  return [(step, m) for (step, _), m in zip(pending, fetched)]


def _scalar_results(results):
  return {k: v for k, v in results.items() if isinstance(v, (int, float)) and
          not isinstance(v, bool)}


def _due(step, every, last):
  """Whether a periodic action runs at `step`: every `every` steps and at the last one."""
  return step % every == 0 or last


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (resuming if `workdir` has checkpoints) and evaluates.

  Returns:
    The last evaluation's results (see `evaluation.driver.evaluate`; for a
    finished run that is rerun, the scalars recorded in metrics.jsonl), or {}
    if the run stopped early on SIGTERM.

  Raises:
    lease.WorkdirBusyError: another live run holds `workdir`.
    run.RunMismatchError: a resumed run changes a model or loss field.
    checkpoint.CheckpointSaveError: a checkpoint could not be written.
    NonFiniteError: the loss or the gradient norm became NaN or Inf.
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, num_devices=mesh.devices.size)
  workdir = epath.Path(workdir)   # local, or gs://... (any etils.epath path)
  with run.RunContext(config, workdir) as context:
    results, step = _train(config, context, mesh)
  if results and context.is_main and step is not None:
    _print_and_log(f"Evaluation on {config.eval.split} at step {step} "
                   f"({results['num_images']} images, {config.eval.num_samples} samples each):\n"
                   + report.format_table(results))
    _print_and_log(f"Figures are in {workdir / workdir_lib.FIGURE_DIR}; metrics in "
                   f"{workdir / writer_lib.METRICS_FILE}; TensorBoard: "
                   f"tensorboard --logdir {workdir}")
  return results


def _train(config, context, mesh):
  """The loop: `(results, step)`; `step` is None when the results were already recorded."""
  # Process 0 prepares; every process then checks it sees the data (a data_dir
  # local to each host stops here, before training, naming data.data_dir).
  pipeline.prepare_on_all_processes(config.data)
  train_iter = pipeline.make_train_iterator(config.data, global_batch_size=config.train.batch_size,
                                            seed=config.train.seed)
  start_position = train_iter.get_state()
  example = next(train_iter)
  train_iter.set_state(start_position)
  example = augment.output_spec(config.data, example)   # the crops the model sees

  train_step = make_train_step(config, mesh=mesh)
  model = train_step.model
  _check_model_accepts_data(model, example, config)
  _report_latent_placement(model, example, context.is_main)
  state = create_train_state(config, jax.random.key(config.train.seed), example, mesh=mesh)
  # Shapes, dtypes and shardings of the state: the target for verifying
  # checkpoints after `state` has been donated.
  state_target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, jax.Array) else x, state)
  start_step, state, extra = context.restore(state)
  if extra is None:
    if config.train.get("init_from"):
      state = _init_params_from(config.train.init_from, state, mesh)
  elif "data_iterator" in extra:  # an imported workdir (release.py) starts the data afresh
    train_iter.set_state(extra["data_iterator"])

  workdir, writer, train = context.workdir, context.writer, config.train
  progress = Progress(train.num_steps, batch_size=train.batch_size, start_step=start_step,
                      print_fn=_print_and_log if context.is_main else logging.info)

  def log(fetched):
    step, metrics = fetched[-1]
    rate = progress.steps_per_second(step)  # since the first logged step: no compilation
    if rate is not None:
      metrics = {**metrics, "steps_per_s": rate, "images_per_s": rate * train.batch_size}
    writer.write(step, metrics)
    progress.update(step, {"loss": metrics["loss"], "rec_sum": metrics["rec_sum"],
                           "kl_sum": metrics["kl_sum"],
                           **({"lambda": metrics["lagmul"]} if "lagmul" in metrics else {})})

  def evaluate_and_draw(step):
    t = time.time()
    # The fixed slice of eval.num_examples images, whatever eval.protocol, on
    # every device of every process (the parameters are already there).
    results = driver.run_evaluation(model, state.params["net"], config, config.eval.split,
                                    num_examples=config.eval.num_examples, mesh=mesh,
                                    print_fn=logging.info)
    writer.write(step, _scalar_results(results), prefix="eval/")
    logging.info("Evaluation at step %d on %s took %.1fs.", step, config.eval.split,
                 time.time() - t)
    if context.is_main:
      paths, _ = figures.draw_figures(model, workdir_lib.local_copy(state.params["net"]), config, config.eval.split,
                                      os.fspath(workdir / workdir_lib.FIGURE_DIR / f"step_{step:07d}"),
                                      title=f"step {step}, {config.eval.split}: ",
                                      writer=writer, step=step)
      logging.info("Figures: %s", ", ".join(paths))
    return results

  results, pending, step = {}, [], start_step
  try:
    while step < train.num_steps:
      context.boundary()
      state, metrics = train_step(state, next(train_iter))
      step += 1
      pending.append((step, metrics))
      last = step == train.num_steps
      log_now = _due(step, train.log_every, last) or step == start_step + 1
      save_now = _due(step, train.checkpoint_every, last)
      preempted = context.reached_preemption(step, at_sync_step=log_now or save_now)
      if log_now or save_now or preempted:
        fetched, pending = _fetch(pending), []   # raises NonFiniteError before anything is saved
        if log_now:
          log(fetched)
      # Evaluation and figures before the checkpoint: a kill in between
      # resumes from the previous checkpoint and redoes both.
      if _due(step, train.eval_every, last):
        context.boundary(wait=True)
        results = evaluate_and_draw(step)
      if save_now or preempted:
        context.save(step, state, {"data_iterator": train_iter.get_state()})
      if preempted and not last:
        logging.warning("Stopped at step %d after SIGTERM; the checkpoint is saved. Run the "
                        "same command again to resume.", step)
        return {}, step
    if step == start_step:  # nothing left to train
      found = workdir_lib.Run(workdir).recorded_evaluation(step) if context.is_main else None
      if multihost.broadcast_flag(found is not None):
        logging.info("Already trained to step %d (train.num_steps=%d) and evaluated: the "
                     "evaluation is in %s.", step, train.num_steps,
                     workdir / writer_lib.METRICS_FILE)
        return found or {}, None
      logging.info("Already trained to step %d (train.num_steps=%d).", step, train.num_steps)
      results = evaluate_and_draw(step)
  except NonFiniteError as e:
    checkpointer = context.checkpointer
    try:
      checkpointer.wait_until_finished()
    except checkpoint_lib.CheckpointSaveError as save_error:
      logging.error("%s", save_error)
    good = checkpointer.newest_verified_step(state_target)
    raise NonFiniteError(f"{e}; stopped. The last good checkpoint is step {good} in "
                         f"{checkpointer.directory}") from None
  except BaseException as e:
    logs.at_step(e, step)          # the one-line stop of a failed store names it
    raise
  return results, step


def _print_and_log(line):
  print(line, flush=True)
