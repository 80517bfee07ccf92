"""The Hierarchical Probabilistic U-Net (Kohl et al. 2019) as Haiku modules.

Layer for layer the network of DeepMind's TF1/Sonnet release
(`hierarchical_probabilistic_unet`): a pre-activated residual block, the
hierarchical core used both as prior `p(z|x)` and as posterior `q(z|x,y)`, and
the stitching decoder `f_comb` that turns the prior's features into logits.

`make_model(config)` wraps the modules in pure functions (`init`, `sample`,
`reconstruct`, `forward`) that take parameters explicitly; nothing here keeps
state.

The posterior's residual blocks after its last latent scale feed nothing any
loss uses, but the release builds them, so this package builds them too: the
parameter count is the release's (21,877,230 at the LIDC defaults). Under `jit`
XLA removes their forward computation because nothing reads it.
"""
import dataclasses
import functools
import zlib
from typing import Any, Callable, NamedTuple, Sequence

import haiku as hk
import jax
import jax.numpy as jnp
import numpy as np
import scipy.stats

ACTIVATIONS = {
    "relu": jax.nn.relu,
    "elu": jax.nn.elu,
    "gelu": jax.nn.gelu,
    "silu": jax.nn.silu,
    "leaky_relu": jax.nn.leaky_relu,
}
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
# Where the GEMM weight gradient shortens the whole training step on XLA:CPU
# (benchmarks/RESULTS.md: -6% to -16% at 64x64; slower at 128x128; no
# measurable gain at 32x32 or below, for more temporary memory).
CPU_GEMM_WEIGHT_GRAD_SIZES = (64,)

# The release's initialisers: orthogonal weights (gain 1), biases from a normal
# with std 0.001 truncated at two standard deviations. `make_model().init`
# draws the same distributions with numpy (see `_host_init`).
W_INIT = hk.initializers.Orthogonal(scale=1.0)
B_INIT = hk.initializers.TruncatedNormal(stddev=0.001)


def _orthogonal(rng, shape, scale=1.0):
  """Haiku's `Orthogonal(scale, axis=-1)` in numpy."""
  n_rows = shape[-1]
  n_cols = int(np.prod(shape)) // n_rows
  matrix_shape = (n_rows, n_cols) if n_rows > n_cols else (n_cols, n_rows)
  q, r = np.linalg.qr(rng.standard_normal(matrix_shape))
  q = q * np.sign(np.diag(r))
  if n_rows < n_cols:
    q = q.T
  return scale * np.moveaxis(q.reshape((n_rows,) + tuple(shape[:-1])), 0, -1)


def _key_seed(rng):
  if jnp.issubdtype(rng.dtype, jax.dtypes.prng_key):
    rng = jax.random.key_data(rng)
  return [int(x) for x in np.asarray(rng).ravel()]


def _host_init(rng, abstract_params):
  """Draws every parameter with numpy, seeded by the key and the parameter's name.

  XLA compiles the random-number and QR code of an initialiser anew for each
  parameter shape: with the few hundred parameters of an HPU-Net a jitted
  Haiku `init` spends tens of seconds compiling. Numpy takes milliseconds,
  and the values are still a pure function of the key (the same on every
  host).
  """
  seed = _key_seed(rng)
  params = {}
  for module, values in abstract_params.items():
    params[module] = {}
    for name, abstract in values.items():
      gen = np.random.default_rng(seed + [zlib.crc32(f"{module}/{name}".encode())])
      if name == "w":
        value = _orthogonal(gen, abstract.shape)
      elif name == "b":
        value = 0.001 * scipy.stats.truncnorm.rvs(-2.0, 2.0, size=abstract.shape, random_state=gen)
      else:
        raise ValueError(f"no initialiser for parameter {module}/{name}")
      params[module][name] = jnp.asarray(value, abstract.dtype)
  return params


def _positive_tuple(name, value, allow_empty=False):
  try:
    value = tuple(int(v) for v in value)
  except (TypeError, ValueError) as e:
    raise ValueError(f"HPUNetConfig.{name} must be a sequence of ints, got {value!r}") from e
  if not value and not allow_empty:
    raise ValueError(f"HPUNetConfig.{name} must not be empty")
  if any(v <= 0 for v in value):
    raise ValueError(f"HPUNetConfig.{name} must hold positive sizes, got {value}")
  return value


@dataclasses.dataclass(frozen=True)
class HPUNetConfig:
  """Sizes of the HPU-Net; the defaults are the release's LIDC setting.

  Attributes:
    latent_dims: latent channels per scale, coarsest first. Scale `i` has
      spatial size `H / 2**(L - 1 - i)` with `L = len(channels_per_block)`.
    channels_per_block: output channels of the residual blocks at each level,
      finest first; levels are separated by 2x2 average pooling.
    down_channels_per_block: inner channels of the blocks per level; None means
      half of `channels_per_block` (the release falls back to half of its
      *default* channels, which is a bug for other sizes).
    num_classes: segmentation classes (2: background, foreground).
    convs_per_block: 3x3 convolutions per residual block.
    blocks_per_level: residual blocks per level.
    activation: one of `ACTIVATIONS`.
    compute_dtype: 'float32' or 'bfloat16'; parameters stay float32, the
      convolutions run in this dtype, Gaussians and logits come out float32.
    remat: recompute each residual block's activations in the backward pass
      instead of storing them (less memory, more compute).
    max_abs_log_sigma: if set, clip `log_sigma` to this magnitude before use
      (other ports clip at 10 to avoid `exp` overflow); None, as the release.
    gemm_weight_grad_sizes: feature-map heights at which the 3x3 convolutions
      compute their weight gradient as one GEMM (see `Conv`) instead of XLA's
      convolution: the same values, only a speed choice. None: `make_model`
      uses `CPU_GEMM_WEIGHT_GRAD_SIZES` on CPU and () elsewhere.
  """
  latent_dims: Sequence[int] = (1, 1, 1, 1)
  channels_per_block: Sequence[int] = (24, 48, 96, 192, 192, 192, 192, 192)
  down_channels_per_block: Sequence[int] | None = None
  num_classes: int = 2
  convs_per_block: int = 3
  blocks_per_level: int = 3
  activation: str = "relu"
  compute_dtype: str = "float32"
  remat: bool = False
  max_abs_log_sigma: float | None = None
  gemm_weight_grad_sizes: Sequence[int] | None = None

  def __post_init__(self):
    set_ = lambda k, v: object.__setattr__(self, k, v)
    set_("channels_per_block", _positive_tuple("channels_per_block", self.channels_per_block))
    set_("latent_dims", _positive_tuple("latent_dims", self.latent_dims))
    num_levels = len(self.channels_per_block)
    if len(self.latent_dims) > num_levels - 1:
      raise ValueError(
          f"HPUNetConfig.latent_dims has {len(self.latent_dims)} scales but "
          f"channels_per_block has {num_levels} levels: at most levels - 1 = "
          f"{num_levels - 1} latent scales fit")
    if self.down_channels_per_block is None:
      set_("down_channels_per_block", tuple(max(1, c // 2) for c in self.channels_per_block))
    else:
      set_("down_channels_per_block",
           _positive_tuple("down_channels_per_block", self.down_channels_per_block))
      if len(self.down_channels_per_block) != num_levels:
        raise ValueError(
            f"HPUNetConfig.down_channels_per_block has {len(self.down_channels_per_block)} "
            f"entries but channels_per_block has {num_levels}")
    for name in ("num_classes", "convs_per_block", "blocks_per_level"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"HPUNetConfig.{name} must be a positive int, got {value!r}")
      set_(name, int(value))
    if self.num_classes < 2:
      raise ValueError(f"HPUNetConfig.num_classes must be at least 2, got {self.num_classes}")
    if self.activation not in ACTIVATIONS:
      raise ValueError(f"HPUNetConfig.activation must be one of {sorted(ACTIVATIONS)}, "
                       f"got {self.activation!r}")
    if self.compute_dtype not in COMPUTE_DTYPES:
      raise ValueError(f"HPUNetConfig.compute_dtype must be one of {sorted(COMPUTE_DTYPES)}, "
                       f"got {self.compute_dtype!r}")
    if self.gemm_weight_grad_sizes is not None:
      set_("gemm_weight_grad_sizes", _positive_tuple(
          "gemm_weight_grad_sizes", self.gemm_weight_grad_sizes, allow_empty=True))
    if self.max_abs_log_sigma is not None and not self.max_abs_log_sigma > 0:
      raise ValueError(f"HPUNetConfig.max_abs_log_sigma must be positive or None, "
                       f"got {self.max_abs_log_sigma!r}")

  @property
  def num_levels(self) -> int:
    return len(self.channels_per_block)

  @property
  def num_scales(self) -> int:
    return len(self.latent_dims)

  @property
  def size_multiple(self) -> int:
    """Image height and width must be multiples of this."""
    return 2 ** (self.num_levels - 1)

  def latent_shapes(self, height, width):
    """Spatial shape `(h, w, c)` of each latent scale, coarsest first."""
    return [(height // 2 ** (self.num_levels - 1 - i), width // 2 ** (self.num_levels - 1 - i), d)
            for i, d in enumerate(self.latent_dims)]

  @classmethod
  def from_dict(cls, values, *, prefix="model"):
    """Builds a config from a mapping (e.g. the `model` ConfigDict group).

    Unknown keys raise a ValueError naming `<prefix>.<key>`.
    """
    values = dict(values)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
      raise ValueError(f"unknown field(s) {', '.join(prefix + '.' + k for k in unknown)}; "
                       f"known: {', '.join(sorted(fields))}")
    try:
      return cls(**values)
    except ValueError as e:
      raise ValueError(str(e).replace("HPUNetConfig.", prefix + ".")) from None


class Gaussian(NamedTuple):
  """A diagonal Gaussian per pixel: `mu`, `log_sigma` `[B, h, w, c]`."""
  mu: jax.Array
  log_sigma: jax.Array

  def sample(self, rng):
    return self.mu + jnp.exp(self.log_sigma) * jax.random.normal(rng, self.mu.shape, self.mu.dtype)


def kl_divergence(q: Gaussian, p: Gaussian) -> jax.Array:
  """Analytic KL(q || p), summed over pixels and channels: `[B]`."""
  var_ratio_term = (jnp.exp(2 * q.log_sigma) + jnp.square(q.mu - p.mu)) / (2 * jnp.exp(2 * p.log_sigma))
  kl = p.log_sigma - q.log_sigma + var_ratio_term - 0.5
  return jnp.sum(kl, axis=(1, 2, 3))


_CONV_DIMENSIONS = ("NHWC", "HWIO", "NHWC")


def _same_conv(x, w):
  return jax.lax.conv_general_dilated(x, w, (1, 1), "SAME", dimension_numbers=_CONV_DIMENSIONS)


def _gemm_weight_grad(x, g, kernel):
  """`d loss / d w` of a stride-1 SAME conv as one matrix product: `[k, k, C, D]`.

  `dw[i, j] = sum_{b, h, w} x_pad[b, h + i, w + j] (x) g[b, h, w]`: the `k*k`
  copies of `g`, each shifted by `(i, j)` into the padded grid and stacked on
  the channel axis, make it one GEMM `[C, B*H'*W'] x [B*H'*W', k*k*D]`.
  """
  p = kernel // 2
  channels, out_channels = x.shape[-1], g.shape[-1]
  x_pad = jnp.pad(x, ((0, 0), (p, p), (p, p), (0, 0)))
  shifted = jnp.concatenate(
      [jnp.pad(g, ((0, 0), (i, 2 * p - i), (j, 2 * p - j), (0, 0)))
       for i in range(kernel) for j in range(kernel)], axis=-1)
  dw = jnp.einsum("bhwc,bhwk->ck", x_pad, shifted, preferred_element_type=jnp.float32)
  dw = dw.reshape(channels, kernel, kernel, out_channels).transpose(1, 2, 0, 3)
  return dw.astype(x.dtype)


@jax.custom_vjp
def _conv_gemm_weight_grad(x, w):
  """`_same_conv` whose weight gradient is `_gemm_weight_grad` (same values)."""
  return _same_conv(x, w)


def _conv_gemm_forward(x, w):
  return _same_conv(x, w), (x, w)


def _conv_gemm_backward(residuals, g):
  x, w = residuals
  # The input gradient of a stride-1 SAME conv with an odd kernel is the SAME
  # conv of `g` with the kernel flipped in space and its channel axes swapped.
  dx = _same_conv(g, jnp.flip(w, (0, 1)).swapaxes(2, 3))
  return dx, _gemm_weight_grad(x, g, w.shape[0])


_conv_gemm_weight_grad.defvjp(_conv_gemm_forward, _conv_gemm_backward)


class Conv(hk.Module):
  """A stride-1 SAME convolution with bias, the parameters of `hk.Conv2D`.

  Parameters `w` `[k, k, C_in, C_out]` and `b` `[C_out]` (names, shapes and
  initialisers as `hk.Conv2D(channels, kernel, padding='SAME')`). The same
  function, computed in ways XLA:CPU runs faster (benchmarks/RESULTS.md):

  * a 1x1 kernel runs as a matrix product over the channel axis: XLA:CPU
    computes a product's weight gradient as one GEMM, but a 1x1
    convolution's as a convolution over the whole image with the batch as
    feature axis (after two transposes), 3-6x slower;
  * with `gemm_weight_grad=True` a 3x3 kernel's weight gradient is one GEMM
    too (`_gemm_weight_grad`, a custom VJP). That is faster than XLA:CPU's
    own at some sizes only (64x64 on the benchmark machine), hence the
    switch (`HPUNetConfig.gemm_weight_grad_sizes`).
  """

  def __init__(self, channels, kernel, name=None, *, gemm_weight_grad=False):
    super().__init__(name=name)
    self._channels = channels
    self._kernel = kernel
    self._gemm_weight_grad = gemm_weight_grad

  def __call__(self, x):
    k = self._kernel
    w = hk.get_parameter("w", (k, k, x.shape[-1], self._channels), x.dtype, init=W_INIT)
    b = hk.get_parameter("b", (self._channels,), x.dtype, init=B_INIT)
    if k == 1:
      out = jnp.matmul(x, w[0, 0])
    elif self._gemm_weight_grad:
      out = _conv_gemm_weight_grad(x, w)
    else:
      out = _same_conv(x, w)
    return out + b


class ResBlock(hk.Module):
  """Pre-activated residual block (the release's `res_block`)."""

  def __init__(self, out_channels, down_channels, *, convs_per_block=3,
               activation=jax.nn.relu, gemm_weight_grad_sizes=(), name=None):
    super().__init__(name=name)
    self._out = out_channels
    self._down = down_channels
    self._convs = convs_per_block
    self._act = activation
    self._gemm_sizes = tuple(gemm_weight_grad_sizes or ())

  def __call__(self, x):
    residual = self._act(x)
    gemm = x.shape[1] in self._gemm_sizes
    for i in range(self._convs):
      residual = Conv(self._down, 3, f"conv_{i}", gemm_weight_grad=gemm)(residual)
      if i < self._convs - 1:
        residual = self._act(residual)
    skip = x if x.shape[-1] == self._out else Conv(self._out, 1, "skip")(x)
    if self._down != self._out:
      residual = Conv(self._out, 1, "project")(residual)
    return skip + residual


def _res_stack(x, config, level, name):
  """`blocks_per_level` residual blocks with the sizes of `level`."""
  act = ACTIVATIONS[config.activation]
  for b in range(config.blocks_per_level):
    block = ResBlock(config.channels_per_block[level], config.down_channels_per_block[level],
                     convs_per_block=config.convs_per_block, activation=act,
                     gemm_weight_grad_sizes=config.gemm_weight_grad_sizes,
                     name=f"{name}_block_{b}")
    x = hk.remat(block)(x) if config.remat else block(x)
  return x


def _downsample(x):
  return hk.avg_pool(x, window_shape=(1, 2, 2, 1), strides=(1, 2, 2, 1), padding="VALID")


def _upsample(x):
  """2x nearest-neighbour upsampling `[B, h, w, c] -> [B, 2h, 2w, c]`."""
  return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class CoreOutput(NamedTuple):
  decoder_features: jax.Array          # [B, h, w, C] after the last latent scale
  encoder_features: list               # per level, finest first
  distributions: list                  # Gaussian per latent scale, coarsest first
  latents: list                        # z used per scale [B, h_i, w_i, latent_dims[i]]


class HierarchicalCore(hk.Module):
  """Encoder plus truncated decoder with one latent Gaussian per scale."""

  def __init__(self, config: HPUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, inputs, *, mean=None, latents=None) -> CoreOutput:
    """Runs the core.

    Args:
      inputs: `[B, H, W, C]`.
      mean: one bool per scale: use the Gaussian's mean instead of a sample.
      latents: optional list with one entry per scale: a
        `[B, h_i, w_i, latent_dims[i]]` array used instead of the core's own
        latent at that scale (this is how the posterior's latents enter the
        prior), or None to let `mean` decide that scale.
    """
    cfg = self._config
    mean = mean if mean is not None else (False,) * cfg.num_scales
    features = inputs
    encoder_features = []
    for level in range(cfg.num_levels):
      features = _res_stack(features, cfg, level, f"encoder_level_{level}")
      encoder_features.append(features)
      if level < cfg.num_levels - 1:
        features = _downsample(features)

    distributions, used_latents = [], []
    for i, dim in enumerate(cfg.latent_dims):
      params = Conv(2 * dim, 1, f"latent_{i}")(features).astype(jnp.float32)
      mu, log_sigma = params[..., :dim], params[..., dim:]
      if cfg.max_abs_log_sigma is not None:
        log_sigma = jnp.clip(log_sigma, -cfg.max_abs_log_sigma, cfg.max_abs_log_sigma)
      dist = Gaussian(mu, log_sigma)
      if latents is not None and latents[i] is not None:
        z = latents[i]
      elif mean[i]:
        z = mu
      else:
        z = dist.sample(hk.next_rng_key())
      distributions.append(dist)
      used_latents.append(z)
      features = jnp.concatenate([z.astype(features.dtype), features], axis=-1)
      features = _upsample(features)
      features = jnp.concatenate([features, encoder_features[-(i + 2)]], axis=-1)
      features = _res_stack(features, cfg, cfg.num_levels - i - 2, f"decoder_level_{i}")
    return CoreOutput(features, encoder_features, distributions, used_latents)


class StitchingDecoder(hk.Module):
  """f_comb: continues the prior's decoder to full resolution, then logits."""

  def __init__(self, config: HPUNetConfig, name=None):
    super().__init__(name=name)
    self._config = config

  def __call__(self, decoder_features, encoder_features):
    cfg = self._config
    features = decoder_features
    for j in range(cfg.num_scales + 1, cfg.num_levels):
      features = _upsample(features)
      features = jnp.concatenate([features, encoder_features[-(j + 1)]], axis=-1)
      features = _res_stack(features, cfg, cfg.num_levels - j - 1, f"level_{j}")
    return Conv(cfg.num_classes, 1, "logits")(features).astype(jnp.float32)


class HPUNet(hk.Module):
  """The combined model: prior, posterior and f_comb."""

  def __init__(self, config: HPUNetConfig, name="hpunet"):
    super().__init__(name=name)
    self._config = config
    self.prior = HierarchicalCore(config, name="prior")
    self.posterior = HierarchicalCore(config, name="posterior")
    self.f_comb = StitchingDecoder(config, name="f_comb")

  def _dtype(self, x):
    return x.astype(COMPUTE_DTYPES[self._config.compute_dtype])

  def __call__(self, method, *args):
    """Runs `method` with parameters kept in float32 and used in the compute dtype."""
    dtype = COMPUTE_DTYPES[self._config.compute_dtype]
    if dtype == jnp.float32:
      return method(*args)

    def create_float32(next_creator, shape, _, init, context):
      del context
      return next_creator(shape, jnp.float32, init)

    def get_in_compute_dtype(next_getter, value, context):
      del context
      return next_getter(value.astype(dtype))

    with hk.custom_creator(create_float32), hk.custom_getter(get_in_compute_dtype):
      return method(*args)

  def sample(self, images, mean, latents=None):
    return self(self._sample, images, mean, latents)

  def _sample(self, images, mean, latents):
    prior = self.prior(self._dtype(images), mean=mean, latents=latents)
    return self.f_comb(prior.decoder_features, prior.encoder_features)

  def forward(self, images, segmentations, mean):
    return self(self._forward, images, segmentations, mean)

  def _forward(self, images, segmentations, mean):
    """Posterior latents through the prior and f_comb.

    Returns:
      A dict with `logits` `[B, H, W, K]`, the per-scale `prior` and
      `posterior` Gaussians, the `posterior_latents` used, and `kl`: one
      `[B]` array per scale, KL(q || p) summed over pixels and channels.
    """
    posterior_inputs = jnp.concatenate([segmentations, images], axis=-1)
    posterior = self.posterior(self._dtype(posterior_inputs), mean=mean)
    prior = self.prior(self._dtype(images), latents=posterior.latents)
    logits = self.f_comb(prior.decoder_features, prior.encoder_features)
    kl = [kl_divergence(q, p) for q, p in zip(posterior.distributions, prior.distributions)]
    return dict(logits=logits, prior=prior.distributions, posterior=posterior.distributions,
                posterior_latents=posterior.latents, kl=kl)


def normalise_mean(mean, num_scales):
  """`mean` as a tuple of one bool per scale (accepts a bool or a sequence)."""
  if isinstance(mean, (bool, np.bool_)):
    return (bool(mean),) * num_scales
  mean = tuple(bool(m) for m in mean)
  if len(mean) != num_scales:
    raise ValueError(f"mean has {len(mean)} entries but the model has {num_scales} latent "
                     f"scales (one bool per scale, coarsest first)")
  return mean


class Model(NamedTuple):
  """Pure functions of an HPU-Net; see `make_model`."""
  config: HPUNetConfig
  init: Callable[..., Any]
  sample: Callable[..., jax.Array]
  reconstruct: Callable[..., jax.Array]
  forward: Callable[..., dict]
  check_inputs: Callable[..., None]


def make_model(config: HPUNetConfig | None = None) -> Model:
  """Builds the pure functions of an HPU-Net (one `Model` per distinct config).

  Returns a `Model` with:
    init(rng, images, segmentations) -> params
    sample(params, rng, images, *, num_samples=1, mean=False, latents=None)
        -> logits `[num_samples, B, H, W, num_classes]` from the prior. `mean`
        is a bool or one bool per scale (coarsest first); scales at their mean
        do not vary. `latents`, as the release's `sample(img, mean, z_q)`,
        fixes scales to given values: one entry per scale, an array
        `[B, h_i, w_i, latent_dims[i]]` (shapes: `config.latent_shapes(H, W)`;
        e.g. `forward(...)['posterior_latents'][i]`, or an interpolation) for
        the scales the caller fixes, shared by all samples, and None for the
        others, which follow `mean`. Vectorised over samples with `vmap` over
        split keys; jit it with `num_samples` and `mean` static.
    reconstruct(params, rng, images, segmentations, *, mean=False)
        -> logits `[B, H, W, num_classes]`: the posterior's latents (sampled,
        or its means) fed to the prior, then f_comb.
    forward(params, rng, images, segmentations, *, mean=False) -> dict with
        `logits`, per-scale `prior`/`posterior` Gaussians and per-scale `kl`.
  `images` are float32 `[B, H, W, C]`, `segmentations` one-hot float32
  `[B, H, W, num_classes]`; H and W must be multiples of
  `config.size_multiple`.
  """
  config = config or HPUNetConfig()
  if config.gemm_weight_grad_sizes is None:
    on_cpu = jax.default_backend() == "cpu"
    config = dataclasses.replace(
        config, gemm_weight_grad_sizes=CPU_GEMM_WEIGHT_GRAD_SIZES if on_cpu else ())
  return _make_model(config)


@functools.lru_cache(maxsize=32)
def _make_model(config: HPUNetConfig) -> Model:
  # Cached so that every caller with the same config shares the jitted
  # functions and their compilations.

  def _fns():
    net = HPUNet(config)

    def init(images, segmentations):
      # Touches every module: posterior, prior (with posterior latents) and f_comb.
      return net.forward(images, segmentations, (False,) * config.num_scales)

    return init, (net.sample, net.forward)

  transformed = hk.multi_transform(_fns)
  apply_sample, apply_forward = transformed.apply

  def check_inputs(images, segmentations=None):
    shape = getattr(images, "shape", None)
    if shape is None or len(shape) != 4:
      raise ValueError(f"images must be [B, H, W, C], got shape {shape}")
    _, height, width, _ = shape
    m = config.size_multiple
    for name, size in (("height", height), ("width", width)):
      if size % m or size == 0:
        raise ValueError(
            f"image {name} {size} is not a multiple of 2**(len(channels_per_block) - 1) = {m} "
            f"({config.num_levels} levels); sizes that work: {m}, {2 * m}, {3 * m}, {4 * m}, ...")
    if segmentations is not None:
      seg_shape = getattr(segmentations, "shape", None)
      expected = tuple(shape[:3]) + (config.num_classes,)
      if seg_shape is None or tuple(seg_shape) != expected:
        raise ValueError(f"segmentations must be one-hot [B, H, W, num_classes] = {expected}, "
                         f"got {seg_shape}")

  # Jitted once here: Haiku executed op by op is slow, and every function is pure.
  @functools.partial(jax.jit, static_argnames=("num_samples", "mean"))
  def jit_sample(params, rng, images, latents, num_samples, mean):
    keys = jax.random.split(rng, num_samples)
    # The prior's encoder does not depend on the key, so vmap leaves it unbatched:
    # it runs once for all samples.
    return jax.vmap(lambda k: apply_sample(params, k, images, mean, latents))(keys)

  jit_forward = jax.jit(apply_forward, static_argnums=4)

  def init(rng, images, segmentations):
    check_inputs(images, segmentations)
    if any(isinstance(x, jax.core.Tracer) for x in (rng, images, segmentations)):
      # Traced (inside jit or eval_shape): Haiku's own initialisers, in the graph.
      return transformed.init(rng, images, segmentations)
    abstract = jax.eval_shape(transformed.init, rng, images, segmentations)
    return _host_init(rng, abstract)

  def check_latents(images, latents):
    if latents is None:
      return None
    latents = list(latents)
    if len(latents) != config.num_scales:
      raise ValueError(f"latents has {len(latents)} entries but the model has "
                       f"{config.num_scales} latent scales (one per scale, coarsest first; "
                       "None for a scale left free)")
    batch, height, width, _ = images.shape
    for i, (z, shape) in enumerate(zip(latents, config.latent_shapes(height, width))):
      if z is not None and tuple(getattr(z, "shape", ())) != (batch,) + tuple(shape):
        raise ValueError(f"latents[{i}] must have shape {(batch,) + tuple(shape)} "
                         f"[B, h, w, latent_dims[{i}]], got {getattr(z, 'shape', None)}")
    return [None if z is None else jnp.asarray(z, jnp.float32) for z in latents]

  def sample(params, rng, images, *, num_samples=1, mean=False, latents=None):
    check_inputs(images)
    return jit_sample(params, rng, images, check_latents(images, latents), int(num_samples),
                      normalise_mean(mean, config.num_scales))

  def forward(params, rng, images, segmentations, *, mean=False):
    check_inputs(images, segmentations)
    return jit_forward(params, rng, images, segmentations,
                       normalise_mean(mean, config.num_scales))

  def reconstruct(params, rng, images, segmentations, *, mean=False):
    return forward(params, rng, images, segmentations, mean=mean)["logits"]

  return Model(config, init, sample, reconstruct, forward, check_inputs)


def l2_penalty(params, scale=1e-5) -> jax.Array:
  """The release's L2 regulariser: `scale * sum(p**2)` over every weight and bias.

  The release attaches `tf.keras.regularizers.l2(scale)` to every `w` and `b`;
  Keras' l2 is `scale * reduce_sum(square(p))`, with no 1/2 (unlike
  `tf.nn.l2_loss`).
  """
  return scale * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))


def count_params(params) -> int:
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))
