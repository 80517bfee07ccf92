"""The train state and the data-parallel optax step.

One `TrainState` pytree carries everything a run needs to continue: the step,
the trainable parameters (the network's and GECO's multiplier `w`), the
optimiser state, GECO's moving average and the base RNG key.

Random streams: the key of step `t` is `fold_in(state.rng, t)`, split into
one key for the latent samples and one for top-k's Gumbel noise. Both are
drawn with the *global* batch shape inside `jit`, and JAX's partitionable
threefry makes the values independent of how the batch is sharded, so a
given global batch and seed give the same step on any number of devices and
processes (up to the order of floating-point reductions). With
`data.augment.enabled` the step first augments the global batch on device
(`hpunet_jax.data.augment`) with the key `fold_in(step_key, AUGMENT_STREAM)`,
drawn with global shapes too, and the validity mask it returns reaches the
loss.
"""
import copy
import json
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from hpunet_jax import config_lib, objective
from hpunet_jax.infra import parallel
from hpunet_jax.data import augment
from hpunet_jax.model import make_model


class TrainState(NamedTuple):
  step: jax.Array            # int32 scalar: number of updates applied
  params: Any                # {'net': haiku params, 'lagrange_raw': scalar (GECO only)}
  opt_state: Any
  geco: objective.GecoState
  rng: jax.Array             # base key; never advanced, folded with the step


def make_schedule(optim_config):
  """The learning-rate schedule of the `optim` group."""
  lr = optim_config.learning_rate
  if optim_config.schedule == "constant":
    return optax.constant_schedule(lr)
  if optim_config.schedule == "piecewise":
    factors = optim_config.get("decay_factors")
    if factors is None:
      factors = (optim_config.decay_factor,) * len(optim_config.boundaries)
    return optax.piecewise_constant_schedule(
        lr, {int(b): float(f) for b, f in zip(optim_config.boundaries, factors)})
  raise ValueError(f"optim.schedule must be one of {config_lib.SCHEDULES}, "
                   f"got {optim_config.schedule!r}")


def make_optimizer(optim_config):
  """Adam with the config's schedule; optional clipping by global norm first."""
  schedule = make_schedule(optim_config)
  parts = []
  if optim_config.clip_global_norm is not None:
    parts.append(optax.clip_by_global_norm(optim_config.clip_global_norm))
  parts.append(optax.adam(schedule))
  return optax.chain(*parts), schedule


def _as_key(rng):
  if isinstance(rng, int):
    return jax.random.key(rng)
  return rng


def create_train_state(config, rng, example_batch, *, mesh=None) -> TrainState:
  """Initialises the train state, replicated over the mesh.

  Args:
    config: the experiment `ConfigDict` (groups model, loss, optim, train, ...),
      checked once by `config_lib.validate` before (as the trainer does); only
      the model group is turned into its typed, self-checking config here.
    rng: a JAX key (or an int seed).
    example_batch: a batch dict (only the shapes of `image` and
      `segmentation` past the batch axis are used; with augmentation on, the
      pipeline's uncropped examples or the model's crops alike).
    mesh: defaults to `parallel.make_mesh()` over all devices.
  """
  model_cfg = config_lib.model_config(config)
  model = make_model(model_cfg)
  mesh = mesh or parallel.make_mesh()
  optimizer, _ = make_optimizer(config.optim)
  example_batch = augment.output_spec(config.data, example_batch)
  image_shape = (1,) + tuple(example_batch["image"].shape[1:])
  seg_shape = (1,) + tuple(example_batch["segmentation"].shape[1:])
  model.check_inputs(jax.ShapeDtypeStruct(image_shape, jnp.float32),
                     jax.ShapeDtypeStruct(seg_shape, jnp.float32))
  init_rng, train_rng = jax.random.split(_as_key(rng))
  use_geco = config.loss.type == "geco"

  # Parameters are drawn on the host (identically on every process), then
  # replicated over the mesh.
  params = {"net": model.init(init_rng, jnp.zeros(image_shape), jnp.zeros(seg_shape))}
  if use_geco:
    params["lagrange_raw"] = objective.initial_lagrange_raw(1.0)
  state = TrainState(step=jnp.zeros((), jnp.int32), params=params,
                     opt_state=optimizer.init(params), geco=objective.init_geco_state(),
                     rng=train_rng)
  return parallel.replicate(state, mesh)


def make_loss_fn(config, model=None):
  """`(params, geco_state, batch, rng) -> (loss, (geco_state, metrics))`, L2 included."""
  model = model or make_model(config_lib.model_config(config))
  loss_config = config.loss

  def loss_fn(params, geco_state, batch, rng):
    latent_rng, top_k_rng = jax.random.split(rng)
    outputs = model.forward(params["net"], latent_rng, batch["image"], batch["segmentation"])
    loss, (geco_state, metrics) = objective.objective(
        outputs, batch["segmentation"], loss_config=loss_config, geco_state=geco_state,
        lagrange_raw=params.get("lagrange_raw"), rng=top_k_rng, mask=batch.get("mask"))
    # Each model's own release rule (the HPU-Net's every weight and bias, the
    # Prob. U-Net's weights only, halved).
    l2 = model.l2_penalty(params["net"], loss_config.l2_weight)
    metrics["l2"] = l2
    return loss + l2, (geco_state, metrics)

  return loss_fn


def make_train_step(config, *, mesh=None):
  """Builds the jitted, data-parallel `(state, batch) -> (state, metrics)`.

  The state is replicated and donated; the batch is sharded along its leading
  axis over the `('data',)` mesh of all devices of all processes. The batch
  may be given as a dict of global `jax.Array`s or, per process, as numpy
  arrays holding that process's contiguous slice of the global batch (they
  are assembled with `jax.make_array_from_process_local_data`). Check the
  config once with `config_lib.validate` first (as the trainer does).
  """
  model_cfg = config_lib.model_config(config)
  mesh = mesh or parallel.make_mesh()
  # Only these groups enter the traced step; a cache keyed on them lets
  # repeated calls (resumed runs in one process, tests, notebooks) share one
  # compilation.
  groups = {g: config[g].to_dict() for g in ("model", "execution", "loss", "optim")}
  groups["augment"] = (config.data.crop_size, config.data.augment.to_dict()
                       if augment.enabled(config.data) else None)
  key = (json.dumps(groups, sort_keys=True, default=str), mesh)
  if key not in _TRAIN_STEPS:
    _TRAIN_STEPS[key] = _build_train_step(config, model_cfg, mesh)
  return _TRAIN_STEPS[key]


_TRAIN_STEPS = {}


def _build_train_step(config, model_cfg, mesh):
  model = make_model(model_cfg)
  optimizer, schedule = make_optimizer(config.optim)
  loss_fn = make_loss_fn(config, model)

  augment_on = augment.enabled(config.data)
  data_config = copy.deepcopy(config.data)   # later edits of `config` must not leak in

  def step(state: TrainState, batch):
    rng = jax.random.fold_in(state.rng, state.step)
    if augment_on:
      batch = augment.augment_batch(jax.random.fold_in(rng, augment.AUGMENT_STREAM), batch,
                                    data_config)
    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
    (loss, (geco_state, metrics)), grads = grad_fn(state.params, state.geco, batch, rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics.update(loss=loss, grad_norm=optax.tree.norm(grads["net"]),
                   learning_rate=schedule(state.step))
    if augment_on:   # share of the crops' pixels that came from inside the source
      metrics["augment_valid_fraction"] = jnp.mean(batch["mask"])
    new_state = TrainState(state.step + 1, params, opt_state, geco_state, state.rng)
    return new_state, metrics

  jitted = jax.jit(step, in_shardings=(parallel.replicated(mesh), parallel.batch_sharding(mesh)),
                   out_shardings=parallel.replicated(mesh), donate_argnums=0)

  def train_step(state, batch):
    if not all(isinstance(x, jax.Array) for x in jax.tree.leaves(batch)):
      batch = parallel.global_batch(batch, mesh)
    return jitted(state, batch)

  train_step.jitted = jitted
  train_step.mesh = mesh
  train_step.model = model
  return train_step
