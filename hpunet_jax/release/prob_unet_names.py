"""The Prob. U-Net release's variable names mapped to this package's Haiku parameters.

SimonKohl/probabilistic_unet builds `ProbUNet(name='prob_unet')` with Sonnet 1
in TF1 (`model/probabilistic_unet.py`). Its names, as its code and Sonnet 1
make them (checked against `tests/fixtures/prob_unet_release_small/`):

* every convolution is an unnamed `snt.Conv2D`, named `conv_2d`, `conv_2d_1`,
  ... by creation order within the enclosing scope; connecting a module again
  reuses the same names;
* the U-Net's encoder is `unet/vgg_enc/down_block_{i}/conv_2d{_j}`, its
  decoder `unet/vgg_dec/up_block_{i}/conv_2d{_j}` (`i` the level it ends
  at, finest 0);
* the prior and posterior are `prior/...` and `posterior/...`: their encoder
  `vgg_enc/down_block_{i}/conv_2d{_j}`, then the 1x1 head `conv_2d`;
* f_comb is `conv_decoder/conv_2d{_j}`: the `num_1x1_convs` hidden 1x1 convs,
  then the logits conv.

Kernels are HWIO `[kh, kw, in, out]` in both libraries whatever the release's
data format (NCHW), and every concatenation is in the same order, so a tensor
maps unchanged. There is no released checkpoint of this model; the map lets
a TF run of the release be read (`convert`) and is what the parity test
uses.
"""
import jax
import jax.numpy as jnp
import numpy as np

from hpunet_jax.model import ProbUNetConfig, make_model
from hpunet_jax.release.names import ReleaseImportError

RELEASE_SCOPE = "prob_unet"
HAIKU_SCOPE = "prob_unet"


def _sonnet_conv(j):
  return "conv_2d" if j == 0 else f"conv_2d_{j}"


def name_map(config: ProbUNetConfig, scope: str = RELEASE_SCOPE) -> dict:
  """`{release variable name: (haiku module, param)}` for every parameter of `config`'s net."""
  pairs = []

  def encoder(release, haiku):
    for i in range(config.num_levels):
      for j in range(config.convs_per_block):
        pairs.append((f"{release}/vgg_enc/down_block_{i}/{_sonnet_conv(j)}",
                      f"{haiku}/~/encoder/down_block_{i}/conv_{j}"))

  encoder(f"{scope}/unet", f"{HAIKU_SCOPE}/~/unet")
  for i in range(config.num_levels - 1):
    for j in range(config.convs_per_block):
      pairs.append((f"{scope}/unet/vgg_dec/up_block_{i}/{_sonnet_conv(j)}",
                    f"{HAIKU_SCOPE}/~/unet/up_block_{i}/conv_{j}"))
  for dist in ("prior", "posterior"):
    encoder(f"{scope}/{dist}", f"{HAIKU_SCOPE}/~/{dist}")
    pairs.append((f"{scope}/{dist}/conv_2d", f"{HAIKU_SCOPE}/~/{dist}/mu_log_sigma"))
  for j in range(config.num_1x1_convs + 1):
    haiku = f"conv_{j}" if j < config.num_1x1_convs else "logits"
    pairs.append((f"{scope}/conv_decoder/{_sonnet_conv(j)}", f"{HAIKU_SCOPE}/~/f_comb/{haiku}"))
  return {f"{release}/{p}": (haiku, p) for release, haiku in pairs for p in ("w", "b")}


def convert(tensors: dict, config: ProbUNetConfig, *, image_channels: int,
            scope: str = RELEASE_SCOPE) -> dict:
  """The Haiku parameters of `make_model(config)` from the release's `{name: array}`.

  Raises:
    ReleaseImportError: listing the model's parameters the tensors lack, the
      tensors under `scope` that map to nothing, and every shape that differs.
  """
  mapping = name_map(config, scope)
  size = config.size_multiple
  abstract = jax.eval_shape(
      make_model(config).init, jax.random.key(0),
      jax.ShapeDtypeStruct((1, size, size, image_channels), jnp.float32),
      jax.ShapeDtypeStruct((1, size, size, config.num_classes), jnp.float32))
  wanted = {(m, p): v.shape for m, params in abstract.items() for p, v in params.items()}
  if set(mapping.values()) != set(wanted):
    raise ReleaseImportError("the name map does not cover the model exactly: "
                             f"{sorted(set(mapping.values()) ^ set(wanted))}")
  params, problems = {}, []
  for name, (module, param) in sorted(mapping.items()):
    if name not in tensors:
      problems.append(f"missing {name}")
      continue
    value = np.asarray(tensors[name], np.float32)
    if value.shape != tuple(wanted[(module, param)]):
      problems.append(f"{name} {value.shape} -> {module}/{param} {wanted[(module, param)]}")
      continue
    params.setdefault(module, {})[param] = value
  unmapped = sorted(n for n in tensors if n.startswith(scope + "/") and n not in mapping
                    and not n.endswith(("/Adam", "/Adam_1")))
  problems.extend(f"unmapped {n}" for n in unmapped)
  if problems:
    raise ReleaseImportError(f"cannot convert into {config}:\n  " + "\n  ".join(problems))
  return params
