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
import signal
import time

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from hpunet_jax import checkpoint as checkpoint_lib
from hpunet_jax import config_lib, evaluation, figures, lease, parallel, summary
from hpunet_jax.data import augment, pipeline
from hpunet_jax.train import create_train_state, make_train_step

CHECKPOINT_DIR = "checkpoints"
FIGURE_DIR = "figures"
CONFIG_FILE = config_lib.RUN_CONFIG_FILE


class NonFiniteError(FloatingPointError):
  """A loss or gradient became NaN or Inf."""


def _local_copy(tree):
  """This process's replica of a replicated global pytree, on one local device."""
  return jax.tree.map(lambda x: x.addressable_data(0) if isinstance(x, jax.Array) else x, tree)


def _check_model_accepts_data(model, example, config):
  try:
    model.check_inputs(jax.ShapeDtypeStruct(example["image"].shape, jnp.float32),
                       jax.ShapeDtypeStruct(example["segmentation"].shape, jnp.float32))
  except ValueError as e:
    field = "data.crop_size" if config.data.crop_size is not None else "data.image_size"
    raise ValueError(f"{field}: the data's {example['image'].shape[1:3]} images do not fit the "
                     f"model: {e}") from None


def _check_config_matches(workdir, config):
  """A resumed run must use the model and loss it was started with."""
  path = epath.Path(workdir) / CONFIG_FILE
  if not path.exists():
    return
  previous = json.loads(path.read_text())
  current = json.loads(config.to_json_best_effort())
  for group in ("model", "loss"):
    for key, value in current.get(group, {}).items():
      old = previous.get(group, {}).get(key)
      if old != value:
        raise ValueError(
            f"{group}.{key}={value!r} differs from the run in {workdir} ({old!r}); use a new "
            f"--workdir or the original value")


class _Preemption:
  """Turns SIGTERM on any process into the same stopping step on every process.

  One process: a SIGTERM handler sets a flag the loop reads after each step.
  Several: jax's preemption service (started by `jax.distributed.initialize`)
  catches SIGTERM on any host and agrees with the others on a step, which
  orbax's `reached_preemption` reports on every host; it must be asked at
  every step. Without that service (`jax_enable_preemption_service=False`)
  the flags of all processes are gathered at logging and checkpoint steps.
  """

  def __init__(self, checkpointer):
    self.requested = False
    self._previous = None
    self._checkpointer = checkpointer
    self._service = jax.process_count() > 1 and jax.config.jax_enable_preemption_service

  def __enter__(self):
    if self._service:   # a Python handler would take SIGTERM away from jax's service
      return self
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, nothing to restore
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del signum, frame
    logging.warning("SIGTERM received: saving a checkpoint at the next step, then stopping.")
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def reached(self, step, at_sync_step):
    """Whether to save and stop at `step`; call it on every process at every step.

    `at_sync_step` (the same on every process) says whether the fallback may
    gather the processes' flags at this step.
    """
    if jax.process_count() == 1:
      return self.requested
    if self._service:
      reached = self._checkpointer.reached_preemption(step)
      if reached:
        logging.warning("Preemption noticed by the processes: saving step %d, then stopping.",
                        step)
      return reached
    if not at_sync_step:
      return False
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    flags = multihost_utils.process_allgather(np.asarray(self.requested))
    return bool(np.any(flags))


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


def eval_batches(config, split, num_examples=None):
  return pipeline.make_eval_iterator(config.data, split, batch_size=config.eval.batch_size,
                                     num_examples=num_examples)


# `evaluation.scale_variants` name -> (file suffix, figure title).
_FIGURE_VARIANTS = {"all scales free": ("", "all scales free"),
                    "coarsest free": ("_coarsest_free", "only the coarsest scale free"),
                    "finest free": ("_finest_free", "only the finest scale free")}


def draw_figures(model, params, config, split, path_prefix, *, num_examples=None, rng=None,
                 num_samples=16, indices=None, title="", writer=None, step=None, print_fn=None):
  """Writes the sample figures (all scales free, coarsest only, finest only).

  With a `writer` (`summary.MetricWriter`), the figures also go to TensorBoard
  at `step`, tagged `figures/all_scales_free` etc. With a `print_fn`, a
  progress line per figure goes to it.

  Returns the paths written and the arrays drawn (for `experiments.sample`).
  """
  num_examples = num_examples or config.eval.num_figure_examples
  rng = jax.random.key(0) if rng is None else rng
  batch = _select_examples(config, split, num_examples, indices)
  images = jnp.asarray(batch["image"])
  masks = np.moveaxis(np.asarray(batch["masks"]), -1, 1)          # [b, M, H, W]
  first_grader = jax.nn.one_hot(jnp.asarray(masks[:, 0] > 0.5, jnp.int32), 2)
  recon = model.reconstruct(params, rng, images, first_grader, mean=True)
  recon = np.asarray(jnp.argmax(recon, -1) == 1)
  written, arrays = [], {"image": np.asarray(batch["image"]), "masks": masks,
                         "reconstruction": recon}
  variants = evaluation.scale_variants(model.config.num_scales)
  progress = summary.Progress(len(variants), unit="figure", print_fn=print_fn)
  for name, mean in variants.items():
    suffix, which = _FIGURE_VARIANTS[name]
    logits = model.sample(params, jax.random.fold_in(rng, len(written)), images,
                          num_samples=num_samples, mean=mean)
    probs = np.asarray(jax.nn.softmax(logits, -1)[..., 1])          # [N, b, H, W]
    samples = probs > 0.5
    panels = [figures.example_panel(arrays["image"][i], masks[i], recon[i], samples[:, i],
                                    labels=(i == 0)) for i in range(images.shape[0])]
    path = f"{path_prefix}{suffix}.png"
    figure = figures.figure(panels, title=f"{title}{which}")
    figures.save_figure(path, figure)
    if writer is not None:
      writer.write_images(step, {f"figures/{name.replace(' ', '_')}": figure})
    written.append(path)
    progress.update(len(written))
    arrays[f"samples{suffix}"] = samples
    arrays[f"probabilities{suffix}"] = probs.astype(np.float16)
  return written, arrays


def _select_examples(config, split, num_examples, indices):
  if indices is None:
    return next(iter(eval_batches(config, split, num_examples)))
  indices = list(indices)
  needed = max(indices) + 1
  total = pipeline.num_examples(config.data, split)
  if needed > total:
    raise ValueError(f"--indices: index {max(indices)} is out of range for {split} "
                     f"({total} examples)")
  collected = []
  for batch in eval_batches(config, split, needed):
    collected.append(batch)
  merged = {k: np.concatenate([b[k] for b in collected]) for k in collected[0]}
  return {k: v[indices] for k, v in merged.items()}


def evaluation_progress(config, split, num_examples, *, print_fn=logging.info):
  """A `summary.Progress` over the images of `split` that an evaluation will see."""
  total = pipeline.num_examples(config.data, split)
  if num_examples is not None:
    total = min(total, num_examples)
  return summary.Progress(total, unit="image", every_s=30, print_fn=print_fn)


def run_evaluation(model, params, config, split, *, num_samples=None, num_examples=None,
                   rng=None, print_fn=logging.info):
  """Evaluates `params` on `split` with the config's eval settings, with progress lines."""
  num_samples = num_samples or config.eval.num_samples
  num_examples = num_examples if num_examples is not None else config.eval.num_examples
  rng = jax.random.key(config.train.seed + 1) if rng is None else rng
  progress = evaluation_progress(config, split, num_examples, print_fn=print_fn)
  return evaluation.evaluate(model, params, eval_batches(config, split, num_examples), rng=rng,
                             num_samples=num_samples, num_examples=num_examples,
                             on_batch=progress.update)


def _scalar_results(results):
  return {k: v for k, v in results.items() if isinstance(v, (int, float)) and
          not isinstance(v, bool)}


def _broadcast_flag(flag: bool) -> bool:
  """Process 0's `flag` on every process."""
  if jax.process_count() == 1:
    return bool(flag)
  from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(flag, np.int32)))


def _acquire_lease(workdir, is_main):
  """Process 0 takes the workdir's lease; every process stops if it cannot."""
  held, error = None, None
  if is_main:
    try:
      held = lease.WorkdirLease(workdir).acquire()
    except lease.WorkdirBusyError as e:
      error = e
  if not _broadcast_flag(error is None):
    raise error if error is not None else lease.WorkdirBusyError(
        f"process 0 could not take the lease on {workdir}")
  return held


def _recorded_evaluation(workdir, step):
  """The scalars of the `eval/` record at `step` in metrics.jsonl (None if there is none)."""
  path = epath.Path(workdir) / summary.METRICS_FILE
  if not path.exists():
    return None
  for record in reversed(summary.read_jsonl(path)):
    if record.get("step") == step and any(k.startswith("eval/") for k in record):
      return {k[len("eval/"):]: v for k, v in record.items() if k.startswith("eval/")}
  return None


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
  held = _acquire_lease(workdir, is_main)
  try:
    return _train_and_evaluate(config, workdir, mesh, is_main, held)
  finally:
    if held is not None:
      held.release()


def _restore(checkpointer, state):
  """The newest checkpoint that verifies: `(step, state, extra)`, or `(0, state, None)`.

  Newer checkpoints that fail are moved aside (process 0 moves them), so that
  training can write those steps again.
  """
  restored = checkpointer.restore_newest_valid(state)
  if restored is None:
    return 0, state, None
  for bad_step, reason in restored.bad_steps:
    if jax.process_index() == 0:
      moved = checkpointer.set_aside(bad_step)
      logging.warning("Resuming from step %d instead of step %d (%s); step %d is kept in %s.",
                      restored.step, bad_step, reason, bad_step, moved)
  if restored.bad_steps and jax.process_count() > 1:
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    multihost_utils.sync_global_devices("bad checkpoints set aside")
    checkpointer.reload()
  logging.info("Resumed from the checkpoint at step %d in %s.", restored.step,
               checkpointer.directory)
  return restored.step, restored.state, restored.extra


def _train_and_evaluate(config, workdir, mesh, is_main, held):
  _check_config_matches(workdir, config)
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
    start_step, state, extra = _restore(checkpointer, state)
  except BaseException:
    checkpointer.close()
    raise
  if extra is None:
    if config.train.get("init_from"):
      state = _init_params_from(config.train.init_from, state, mesh)
  elif "data_iterator" in extra:  # an imported workdir (release.py) starts the data afresh
    train_iter.set_state(extra["data_iterator"])
  if is_main:
    summary.write_json(workdir / CONFIG_FILE, json.loads(config.to_json_best_effort()))
  # Always resume at `start_step`: records after it (all, without a checkpoint)
  # come from steps that will run again.
  writer = summary.MetricWriter(workdir, enabled=is_main, resume_step=start_step)
  writer.write_text(start_step, {"config": f"```json\n{config.to_json_best_effort(indent=2)}\n```"})
  num_steps = config.train.num_steps
  progress = summary.Progress(num_steps, batch_size=config.train.batch_size,
                              start_step=start_step, print_fn=logging.info if not is_main
                              else _print_and_log)
  figure_dir = workdir / FIGURE_DIR
  results = {}
  recorded = False

  def evaluate_and_draw(step):
    params = _local_copy(state.params["net"])
    t = time.time()
    res = run_evaluation(model, params, config, config.eval.split)
    writer.write(step, _scalar_results(res), prefix="eval/")
    logging.info("Evaluation at step %d on %s took %.1fs.", step, config.eval.split,
                 time.time() - t)
    if is_main:
      paths, _ = draw_figures(model, params, config, config.eval.split,
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
    with _Preemption(checkpointer) as preemption:
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
        found = _recorded_evaluation(workdir, step) if is_main else None
        if _broadcast_flag(found is not None):
          logging.info("Already trained to step %d (train.num_steps=%d) and evaluated: the "
                       "evaluation is in %s.", step, num_steps,
                       workdir / summary.METRICS_FILE)
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
                   + evaluation.format_table(results))
    _print_and_log(f"Figures are in {figure_dir}; metrics in "
                   f"{workdir / summary.METRICS_FILE}; TensorBoard: "
                   f"tensorboard --logdir {workdir}")
  return results


def _close_quietly(checkpointer):
  try:
    checkpointer.close()
  except checkpoint_lib.CheckpointSaveError as e:
    logging.error("%s", e)


class _QuietLibraries:
  """Drops INFO lines from orbax/grain/tfds, which log every file they touch."""

  _NOISY = (os.sep + "orbax" + os.sep, os.sep + "grain" + os.sep,
            os.sep + "tensorflow_datasets" + os.sep, os.sep + "etils" + os.sep)

  def filter(self, record):
    return record.levelno >= 30 or not any(  # 30: Python's WARNING (absl's constants differ)
        part in record.pathname for part in self._NOISY)


def quiet_library_logs():
  """Keeps the command-line tools' output to their own progress and results."""
  import logging as python_logging  # pylint: disable=g-import-not-at-top
  # Every absl.logging call goes through the 'absl' logger, whatever handler prints it.
  python_logging.getLogger("absl").addFilter(_QuietLibraries())


def _print_and_log(line):
  print(line, flush=True)


def restore_params(workdir, config=None, *, step=None):
  """Loads the config (from `workdir/config.json` unless given) and the network parameters.

  Returns:
    `(config, model, params, step)`; params are local (single-device) arrays.
  """
  if config is None:
    config = config_lib.load_run_config(workdir)
  config_lib.validate(config)
  # Read-only: creates nothing in the workdir, leaves a running job's saves alone.
  checkpointer = checkpoint_lib.Checkpointer(epath.Path(workdir) / CHECKPOINT_DIR,
                                             read_only=True)
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
  return config, train_step.model, _local_copy(state.params["net"]), step


def _example_batch(config, image_size):
  if image_size is None:
    info = pipeline.make_eval_iterator(config.data, "train", batch_size=1, num_examples=1)
    image = next(iter(info))["image"]
  else:
    size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    image = np.zeros((1,) + size + (config.data.num_channels,), np.float32)
  return {"image": image,
          "segmentation": np.zeros(image.shape[:3] + (config.model.num_classes,), np.float32)}
