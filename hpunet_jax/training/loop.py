"""The training job behind `experiments.train`: train, checkpoint, evaluate, log, draw.

`train_and_evaluate(config, workdir)` resumes by itself from the newest
checkpoint in `workdir/checkpoints` that verifies (parameters, optimiser, GECO
state, RNG and the data iterator's position), so running the same command
again continues a stopped run, and raising `train.num_steps` continues a
finished one. SIGTERM (preemption) saves a checkpoint at the next step and
returns; on several processes, a SIGTERM to any of them stops all at the same
step (jax's preemption service, through orbax). `workdir` and the data dirs
may be local or on an object store (`gs://...`): every path is an
`etils.epath.Path`.

Crash consistency (see README, "What a run leaves"):

* one writer: process 0 holds `workdir/lease.json` (`lease.WorkdirLease`) for
  the whole run; a second run on the same workdir stops at once;
* exactly-once records: on every start, records of `metrics.jsonl` and the
  TensorBoard events after the restored step (all of them when there is no
  checkpoint yet) are dropped, and each step's evaluation and figures are
  written before that step's checkpoint is saved, so whatever a kill
  interrupts is redone once; a finished run that is rerun does not evaluate
  again;
* verified checkpoints: a checkpoint that cannot be read or fails its
  checksums is skipped with a warning for the newest one that verifies, and
  moved to `workdir/checkpoints.corrupt/` (never deleted) so training can
  write that step again;
* a failed asynchronous save stops training at the next step boundary after
  it failed, at the latest before the next evaluation or save.

Every process trains; only process 0 writes metrics, `config.json` and
figures; orbax coordinates the checkpoints.
"""
import json
import os
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpunet_jax import config_lib
from hpunet_jax.data import augment, pipeline
from hpunet_jax.evaluation import driver, figures, report
from hpunet_jax.evaluation.restore import local_copy, restore_params
from hpunet_jax.infra import checkpoint as checkpoint_lib
from hpunet_jax.infra import multihost, parallel
from hpunet_jax.infra import writer as writer_lib
from hpunet_jax.infra.progress import Progress
from hpunet_jax.training import run
from hpunet_jax.training.state import create_train_state, make_train_step

CHECKPOINT_DIR = config_lib.CHECKPOINT_DIR
FIGURE_DIR = config_lib.FIGURE_DIR


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


def _init_params_from(workdir, state, mesh):
  """`state` with the network parameters of the latest checkpoint in `workdir`.

  Fine-tuning (`train.init_from`): the step, optimiser, GECO state and RNG
  stay the fresh ones of this run.
  """
  _, _, params, step = restore_params(workdir)
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


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict:
  """Trains (resuming if `workdir` has checkpoints) and evaluates.

  Returns:
    The last evaluation's results (see `evaluation.evaluate`; for a finished
    run that is rerun, the scalars recorded in metrics.jsonl), or {} if the
    run stopped early on SIGTERM.

  Raises:
    lease.WorkdirBusyError: another live run holds `workdir`.
    checkpoint.CheckpointSaveError: a checkpoint could not be written.
    NonFiniteError: the loss or the gradient norm became NaN or Inf.
  """
  mesh = parallel.make_mesh()
  config_lib.validate(config, num_devices=mesh.devices.size)
  is_main = jax.process_index() == 0
  workdir = epath.Path(workdir)   # local, or gs://... (any etils.epath path)
  workdir.mkdir(parents=True, exist_ok=True)
  held = run.acquire_lease(workdir, is_main)
  try:
    return _train_and_evaluate(config, workdir, mesh, is_main, held)
  finally:
    if held is not None:
      held.release()


def _train_and_evaluate(config, workdir, mesh, is_main, held):
  run.check_config_matches(workdir, config)
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
  state = create_train_state(config, jax.random.key(config.train.seed), example, mesh=mesh)
  # Shapes, dtypes and shardings of the state: the target for verifying
  # checkpoints after `state` has been donated.
  state_target = jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding)
      if isinstance(x, jax.Array) else x, state)

  checkpointer = checkpoint_lib.Checkpointer(workdir / CHECKPOINT_DIR,
                                             max_to_keep=config.train.keep_checkpoints)
  try:
    start_step, state, extra = run.restore(checkpointer, state)
  except BaseException:
    checkpointer.close()
    raise
  if extra is None:
    if config.train.get("init_from"):
      state = _init_params_from(config.train.init_from, state, mesh)
  elif "data_iterator" in extra:  # an imported workdir (release.py) starts the data afresh
    train_iter.set_state(extra["data_iterator"])
  if is_main:
    writer_lib.write_json(workdir / config_lib.RUN_CONFIG_FILE, json.loads(config.to_json_best_effort()))
  # Always resume at `start_step`: records after it (all, without a checkpoint)
  # come from steps that will run again.
  writer = writer_lib.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  writer.write_text(start_step, {"config": f"```json\n{config.to_json_best_effort(indent=2)}\n```"})
  num_steps = config.train.num_steps
  progress = Progress(num_steps, batch_size=config.train.batch_size,
                              start_step=start_step, print_fn=logging.info if not is_main
                              else _print_and_log)
  figure_dir = workdir / FIGURE_DIR
  results = {}
  recorded = False

  def evaluate_and_draw(step):
    params = local_copy(state.params["net"])
    t = time.time()
    res = driver.run_evaluation(model, params, config, config.eval.split)
    writer.write(step, _scalar_results(res), prefix="eval/")
    logging.info("Evaluation at step %d on %s took %.1fs.", step, config.eval.split,
                 time.time() - t)
    if is_main:
      paths, _ = figures.draw_figures(model, params, config, config.eval.split,
                              os.fspath(figure_dir / f"step_{step:07d}"),
                              title=f"step {step}, {config.eval.split}: ", writer=writer, step=step)
      logging.info("Figures: %s", ", ".join(paths))
    return res

  def save(step):
    checkpointer.save(step, state, {"data_iterator": train_iter.get_state()})

  def step_boundary(wait=False):
    """Stops soon after a failed save or a lost lease, before more work is done.

    A save still in flight is not waited for (`wait=False`: training steps go
    on while it writes), except before an evaluation, which takes longer than
    the save and must not start after a failed one.
    """
    if wait:
      checkpointer.wait_until_finished()
    else:
      checkpointer.check_for_errors()
    if held is not None:
      held.check()

  pending = []
  step = start_step
  stopped_early = False
  try:
    with run.Preemption(checkpointer) as preemption:
      while step < num_steps:
        step_boundary()
        batch = next(train_iter)
        state, metrics = train_step(state, batch)
        step += 1
        pending.append((step, metrics))
        last = step == num_steps
        log_now = step % config.train.log_every == 0 or last or step == start_step + 1
        checkpoint_now = step % config.train.checkpoint_every == 0 or last
        evaluate_now = step % config.train.eval_every == 0 or last
        preempted = preemption.reached(step, at_sync_step=log_now or checkpoint_now)
        if log_now or checkpoint_now or preempted:
          fetched = _fetch(pending)   # raises NonFiniteError before anything is saved
          pending = []
          if log_now:
            s, m = fetched[-1]
            rate = progress.steps_per_second(s)  # since the first logged step: no compilation
            if rate is not None:
              m = {**m, "steps_per_s": rate, "images_per_s": rate * config.train.batch_size}
            writer.write(s, m)
            progress.update(s, {"loss": m["loss"], "rec_sum": m["rec_sum"],
                                "kl_sum": m["kl_sum"],
                                **({"lambda": m["lagmul"]} if "lagmul" in m else {})})
        # Evaluation and figures before the checkpoint: a kill in between
        # resumes from the previous checkpoint and redoes both.
        if evaluate_now:
          step_boundary(wait=True)
          results = evaluate_and_draw(step)
        if checkpoint_now or preempted:
          save(step)
        if preempted and not last:
          stopped_early = True
          logging.warning("Stopped at step %d after SIGTERM; the checkpoint is saved. Run the "
                          "same command again to resume.", step)
          break
      if not stopped_early and step == start_step:  # nothing left to train
        found = run.recorded_evaluation(workdir, step) if is_main else None
        if multihost.broadcast_flag(found is not None):
          logging.info("Already trained to step %d (train.num_steps=%d) and evaluated: the "
                       "evaluation is in %s.", step, num_steps,
                       workdir / writer_lib.METRICS_FILE)
          results, recorded = found or {}, True
        else:
          logging.info("Already trained to step %d (train.num_steps=%d).", step, num_steps)
          results = evaluate_and_draw(step)
  except NonFiniteError as e:
    writer.close()
    try:
      checkpointer.wait_until_finished()
    except checkpoint_lib.CheckpointSaveError as save_error:
      logging.error("%s", save_error)
    good = checkpointer.newest_verified_step(state_target)
    _close_quietly(checkpointer)
    raise NonFiniteError(f"{e}; stopped. The last good checkpoint is step {good} in "
                         f"{checkpointer.directory}") from None
  except BaseException:
    _close_quietly(checkpointer)   # the error at hand matters more than a failed save
    writer.close()
    raise
  try:
    checkpointer.close()            # raises CheckpointSaveError if the last save failed
  finally:
    writer.close()

  if results and is_main and not recorded:
    _print_and_log(f"Evaluation on {config.eval.split} at step {step} "
                   f"({results['num_images']} images, {config.eval.num_samples} samples each):\n"
                   + report.format_table(results))
    _print_and_log(f"Figures are in {figure_dir}; metrics in "
                   f"{workdir / writer_lib.METRICS_FILE}; TensorBoard: "
                   f"tensorboard --logdir {workdir}")
  return results


def _close_quietly(checkpointer):
  try:
    checkpointer.close()
  except checkpoint_lib.CheckpointSaveError as e:
    logging.error("%s", e)


def _print_and_log(line):
  print(line, flush=True)


