"""The release's variable names: Sonnet 1's TF1 names mapped to this package's Haiku parameters.

DeepMind's release (`deepmind-research/hierarchical_probabilistic_unet`)
comes with a model trained on LIDC, a TF1 `tf.train.Saver` checkpoint of
`HierarchicalProbUNet(name='model/HPUNet')` with all defaults (this
package's LIDC defaults):

    https://storage.googleapis.com/hpunet-data/model_checkpoint/checkpoint.tar.gz

`import_release(source, workdir)` reads it (`tf_checkpoint`, no TensorFlow
needed), renames every tensor to its Haiku parameter (`name_map`) and writes a
normal workdir: `config.json` and an orbax checkpoint at step 0 with the
imported parameters and a fresh optimiser, which `experiments.sample`,
`experiments.evaluate` and `workdir.Run(...).params()` read like any run.

The name map follows the release's code and Sonnet 1's naming, not guesses:

* Sonnet 1 gives an unnamed module the default name `conv_2d`, made unique
  within the enclosing module's variable scope by creation order: `conv_2d`,
  `conv_2d_1`, `conv_2d_2`, ... Modules built inside `_build` are rebuilt at
  every connection, but re-entering the parent's scope resets the counter,
  so every connection reuses the same names (and variables).
* `model.py` builds `prior`, `posterior` (`_HierarchicalCore`) and `f_comb`
  (`_StitchingDecoder`) under `model/HPUNet`. In a core the encoder's blocks
  come first, level by level; then for each latent scale its 1x1 head
  (`2 * latent_dim` channels, `mu` first) followed by that decoder level's
  blocks. f_comb's blocks are followed by a 1x1 conv named `logits`.
* `unet_utils.res_block` creates its `convs_per_block` 3x3 convs, then the
  1x1 skip (only if the input channels differ from the output channels),
  then the 1x1 projection (only if the inner channels differ from the
  output channels). Kernels are HWIO `[kh, kw, in, out]` in both libraries.

`hpunet_jax.model` builds the same modules in the same order (`ResBlock`'s
`conv_i`, `skip`, `project`; `latent_i`; f_comb's `level_j_block_b` and
`logits`), so the map is a walk over the config that counts channels to know
which 1x1 convs exist. Every tensor of the checkpoint must be either mapped,
with its shape checked, or recognised as training state: Adam's slots
(`.../Adam`, `.../Adam_1`) and `beta1_power`/`beta2_power`, `global_step`,
and GECO's variables. GECO's Lagrange multiplier (Sonnet's
`snt_lagrange_multiplier/lagrange_multiplier/w`, parametrised as
`softplus(w)**2` exactly as this package's `lagrange_raw`) is imported into
the train state; the moving average of GECO is a local variable in the
release and is skipped if present. Anything else, and any parameter the
model needs that the file lacks, stops the import with a `ReleaseImportError`
listing the names.

Tested against a fixture written by the release's own code with Sonnet 1 and
TensorFlow (`tests/fixtures/make_release_fixture.py`), not against the real
file, which the development machines cannot download.
"""
import dataclasses
import re

import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.model import HPUNetConfig, make_model

RELEASE_URL = ("https://storage.googleapis.com/hpunet-data/model_checkpoint/"
               "checkpoint.tar.gz")
RELEASE_SCOPE = "model/HPUNet"
RELEASE_PREFIX_NAME = "tf_graph_data.ckpt"
HAIKU_ROOT = "hpunet/~"
LAGRANGE_MULTIPLIER = "snt_lagrange_multiplier/lagrange_multiplier/w"
IMPORT_FILE = "release_import.json"

# Training state a TF1 run leaves in its checkpoint, which the model does not use.
OPTIMIZER_SLOT = re.compile(r"/(Adam|Adam_\d+|Momentum|RMSProp|RMSProp_\d+|Adagrad)$")
OPTIMIZER_GLOBAL = re.compile(r"(^|/)(beta1_power|beta2_power)(_\d+)?$")
GLOBAL_STEP = re.compile(r"(^|/)global_step$")
GECO_MOVING_AVERAGE = re.compile(r"(^|/)(ma_test|snt_moving_average|moving_average)(/|$)")


class ReleaseImportError(ValueError):
  """The checkpoint's tensors do not match the model: the message lists them."""


def _sonnet_conv_names():
  """`conv_2d`, `conv_2d_1`, `conv_2d_2`, ...: Sonnet 1's unique names by creation order."""
  yield "conv_2d"
  n = 1
  while True:
    yield f"conv_2d_{n}"
    n += 1


def _res_stack(convs, names, config, level, haiku_prefix, in_channels):
  """Appends `(sonnet conv, haiku module)` for one level's blocks; returns the output channels."""
  out, down = config.channels_per_block[level], config.down_channels_per_block[level]
  for b in range(config.blocks_per_level):
    block = f"{haiku_prefix}_block_{b}"
    modules = [f"conv_{i}" for i in range(config.convs_per_block)]
    if in_channels != out:
      modules.append("skip")
    if down != out:
      modules.append("project")
    convs.extend((next(names), f"{block}/{m}") for m in modules)
    in_channels = out
  return in_channels


def _core_convs(config, in_channels):
  """`[(sonnet conv name, haiku module)]` of `_HierarchicalCore`, in creation order."""
  convs, names = [], _sonnet_conv_names()
  channels = in_channels
  for level in range(config.num_levels):
    channels = _res_stack(convs, names, config, level, f"encoder_level_{level}", channels)
  for i, latent_dim in enumerate(config.latent_dims):
    convs.append((next(names), f"latent_{i}"))
    level = config.num_levels - i - 2
    channels = latent_dim + channels + config.channels_per_block[level]
    channels = _res_stack(convs, names, config, level, f"decoder_level_{i}", channels)
  return convs, channels


def _stitching_convs(config, in_channels):
  """`[(sonnet conv name, haiku module)]` of `_StitchingDecoder`, in creation order."""
  convs, names = [], _sonnet_conv_names()
  channels = in_channels
  for j in range(config.num_scales + 1, config.num_levels):
    level = config.num_levels - j - 1
    channels = _res_stack(convs, names, config, level, f"level_{j}",
                          channels + config.channels_per_block[level])
  convs.append(("logits", "logits"))
  return convs


def name_map(config: HPUNetConfig, image_channels: int, scope: str = RELEASE_SCOPE) -> dict:
  """`{release variable name: (haiku module, parameter)}` for a model config.

  Args:
    config: the model's sizes (the release's LIDC defaults: `HPUNetConfig()`).
    image_channels: channels of the input image (1 for LIDC). The posterior
      sees `num_classes + image_channels` (segmentation first).
    scope: the release module's name (`model/HPUNet` in the colab).
  """
  prior, prior_out = _core_convs(config, image_channels)
  posterior, _ = _core_convs(config, config.num_classes + image_channels)
  f_comb = _stitching_convs(config, prior_out)
  mapping = {}
  for core, convs in (("prior", prior), ("posterior", posterior), ("f_comb", f_comb)):
    for sonnet, haiku in convs:
      for param in ("w", "b"):
        mapping[f"{scope}/{core}/{sonnet}/{param}"] = (f"{HAIKU_ROOT}/{core}/{haiku}", param)
  return mapping


def find_scope(names) -> str:
  """The release module's scope in a checkpoint (`model/HPUNet` in the colab)."""
  scopes = sorted({m.group(1) for m in map(re.compile(r"^(.*)/prior/conv_2d/w$").match, names)
                   if m})
  if len(scopes) == 1:
    return scopes[0]
  if not scopes:
    raise ReleaseImportError("no '<scope>/prior/conv_2d/w' in the checkpoint: is it the "
                             "release's HierarchicalProbUNet? Its first names: "
                             + ", ".join(sorted(names)[:10]))
  raise ReleaseImportError(f"several HPU-Nets in the checkpoint ({', '.join(scopes)}); "
                           "pass the scope to import")


@dataclasses.dataclass
class Converted:
  """The result of `convert`."""
  params: dict               # Haiku parameters of `make_model(config)`
  lagrange_raw: np.ndarray | None   # GECO's multiplier, as `TrainState.params['lagrange_raw']`
  release_step: int | None   # the release run's `global_step`
  scope: str
  mapping: dict              # {release name: 'haiku module/param'}
  skipped: dict              # {reason: [release names]}


SKIP_OPTIMIZER = "optimiser state (a fresh optimiser is used)"
SKIP_GLOBAL_STEP = "global_step (the import starts at step 0)"
SKIP_MOVING_AVERAGE = "GECO moving average (restarts with the first fine-tuning step)"
SKIP_LAGRANGE = "GECO Lagrange multiplier (imported into the train state)"


def _classify_unmapped(name, scope):
  """Why a tensor that is no model parameter may be left out, or None if it may not."""
  if OPTIMIZER_SLOT.search(name) or OPTIMIZER_GLOBAL.search(name):
    return SKIP_OPTIMIZER
  if GLOBAL_STEP.search(name):
    return SKIP_GLOBAL_STEP
  if GECO_MOVING_AVERAGE.search(name):
    return SKIP_MOVING_AVERAGE
  if name == f"{scope}/{LAGRANGE_MULTIPLIER}":
    return SKIP_LAGRANGE
  return None


def convert(tensors: dict, config: HPUNetConfig, *, image_channels: int = 1,
            scope: str | None = None) -> Converted:
  """Renames the release's tensors into this package's Haiku parameters.

  Args:
    tensors: `{name: array}` as `tf_checkpoint.read` returns.
    config: the model config the parameters are for.
    image_channels: input image channels.
    scope: the release module's scope; None finds it (`find_scope`).

  Raises:
    ReleaseImportError: listing every tensor that is neither mapped nor
      recognised training state, every parameter the file lacks, and every
      shape that differs.
  """
  scope = scope or find_scope(tensors)
  mapping = name_map(config, image_channels, scope)
  model = make_model(config)
  height = config.size_multiple
  abstract = jax.eval_shape(
      model.init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, height, height, image_channels), jnp.float32),
      jax.ShapeDtypeStruct((1, height, height, config.num_classes), jnp.float32))
  wanted = {(module, param): value for module, params in abstract.items()
            for param, value in params.items()}

  targets = set(mapping.values())
  not_in_model = sorted(f"{m}/{p}" for m, p in targets - set(wanted))
  not_mapped = sorted(f"{m}/{p}" for m, p in set(wanted) - targets)
  if not_in_model or not_mapped:   # the map and the model disagree: a bug here, not in the file
    raise ReleaseImportError(
        "the name map does not cover the model exactly; map targets missing from the "
        f"model: {', '.join(not_in_model) or 'none'}; model parameters the map misses: "
        f"{', '.join(not_mapped) or 'none'}")

  params, shapes, skipped, unknown = {}, [], {}, []
  for name in sorted(tensors):
    value = np.asarray(tensors[name])
    if name in mapping:
      module, param = mapping[name]
      expected = wanted[(module, param)].shape
      if tuple(value.shape) != tuple(expected):
        shapes.append(f"{name} {tuple(value.shape)} -> {module}/{param} {tuple(expected)}")
        continue
      params.setdefault(module, {})[param] = value.astype(np.float32)
      continue
    reason = _classify_unmapped(name, scope)
    if reason is None:
      unknown.append(f"{name} {tuple(value.shape)}")
    else:
      skipped.setdefault(reason, []).append(name)
  missing = sorted(name for name in mapping if name not in tensors)

  if unknown or missing or shapes:
    lines = [f"cannot import the checkpoint into {config}:"]
    for title, items in (
        ("tensors in the checkpoint that map to no parameter", unknown),
        ("parameters the model needs that the checkpoint lacks", missing),
        ("shapes that differ (is the model config the release's?)", shapes)):
      if items:
        lines.append(f"  {title} ({len(items)}):")
        lines.extend(f"    {item}" for item in items)
    raise ReleaseImportError("\n".join(lines))

  lagrange_name = f"{scope}/{LAGRANGE_MULTIPLIER}"
  lagrange_raw = None
  if lagrange_name in tensors:
    lagrange_raw = np.asarray(tensors[lagrange_name], np.float32).reshape(())
  step_names = skipped.get(SKIP_GLOBAL_STEP, [])
  release_step = int(np.asarray(tensors[step_names[0]])) if len(step_names) == 1 else None
  return Converted(params=params, lagrange_raw=lagrange_raw, release_step=release_step,
                   scope=scope, mapping={k: f"{m}/{p}" for k, (m, p) in mapping.items()},
                   skipped=skipped)


