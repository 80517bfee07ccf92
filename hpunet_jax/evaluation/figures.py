"""Figures of segmentation samples as uint8 RGB arrays (numpy tiling, Pillow text) and PNGs.

One panel per example, laid out like the figures of the HPU-Net release:

  image | grader 1 .. M | recon | grader std | sample std [| mean prob]
  samples, in rows of 8

Masks are white on black. Std maps are the per-pixel standard deviation over
graders / samples, coloured with viridis (matplotlib's 256-entry table) on the
fixed range [0, 0.5] (0.5 is the largest std of a binary variable), so colours
compare across examples and figures. Small images are upscaled (nearest
neighbour) to tiles of at least 128 px; column labels and titles are drawn
with Pillow's `ImageDraw` in its built-in font.

Example:

  panels = [figures.example_panel(img, graders, recon, samples) for ...]
  figures.save_figure(path, figures.figure(panels, title="step 1000, val"))
"""
import functools
import io
import math
from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw, ImageFont

import jax
import jax.numpy as jnp

from hpunet_jax.evaluation import driver, scales
from hpunet_jax.infra import files
from hpunet_jax.infra.progress import Progress

BACKGROUND = (64, 64, 64)
TEXT_COLOR = (255, 255, 255)
TEXT_SIZE = 10  # Font size in pixels at scale 1.
MIN_TILE_SIZE = 128  # Smallest tile side in pixels after upscaling.
GAP = 4  # Pixels between tiles.
MARGIN = 8  # Pixels around a panel's contents.
PANEL_GAP = 8  # Extra pixels between the panels of a figure.
STD_RANGE = (0.0, 0.5)

# Viridis, the 256 colours of matplotlib's `_viridis_data` (CC0, by Nathaniel
# J. Smith, Stefan van der Walt and Eric Firing) as round(255 * value), RGB hex.
VIRIDIS = np.frombuffer(bytes.fromhex(
    "44015444025645045745055946075a46085c460a5d460b5e470d60470e61471063471164471365481467481668481769"
    "48186a481a6c481b6d481c6e481d6f481f70482071482173482374482475482576482677482878482979472a7a472c7a"
    "472d7b472e7c472f7d46307e46327e46337f463480453581453781453882443983443a83443b84433d84433e85423f85"
    "4240864241864142874144874045884046883f47883f48893e49893e4a893e4c8a3d4d8a3d4e8a3c4f8a3c508b3b518b"
    "3b528b3a538b3a548c39558c39568c38588c38598c375a8c375b8d365c8d365d8d355e8d355f8d34608d34618d33628d"
    "33638d32648e32658e31668e31678e31688e30698e306a8e2f6b8e2f6c8e2e6d8e2e6e8e2e6f8e2d708e2d718e2c718e"
    "2c728e2c738e2b748e2b758e2a768e2a778e2a788e29798e297a8e297b8e287c8e287d8e277e8e277f8e27808e26818e"
    "26828e26828e25838e25848e25858e24868e24878e23888e23898e238a8d228b8d228c8d228d8d218e8d218f8d21908d"
    "21918c20928c20928c20938c1f948c1f958b1f968b1f978b1f988b1f998a1f9a8a1e9b8a1e9c891e9d891f9e891f9f88"
    "1fa0881fa1881fa1871fa28720a38620a48621a58521a68522a78522a88423a98324aa8325ab8225ac8226ad8127ad81"
    "28ae8029af7f2ab07f2cb17e2db27d2eb37c2fb47c31b57b32b67a34b67935b77937b87838b9773aba763bbb753dbc74"
    "3fbc7340bd7242be7144bf7046c06f48c16e4ac16d4cc26c4ec36b50c46a52c56954c56856c66758c7655ac8645cc863"
    "5ec96260ca6063cb5f65cb5e67cc5c69cd5b6ccd5a6ece5870cf5773d05675d05477d1537ad1517cd2507fd34e81d34d"
    "84d44b86d54989d5488bd6468ed64590d74393d74195d84098d83e9bd93c9dd93ba0da39a2da37a5db36a8db34aadc32"
    "addc30b0dd2fb2dd2db5de2bb8de29bade28bddf26c0df25c2df23c5e021c8e020cae11fcde11dd0e11cd2e21bd5e21a"
    "d8e219dae319dde318dfe318e2e418e5e419e7e419eae51aece51befe51cf1e51df4e61ef6e620f8e621fbe723fde725"), np.uint8).reshape(256, 3)


# ---------------------------------------------------------------------------
# Text (Pillow).

@functools.lru_cache(maxsize=None)
def _font(scale: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
  return ImageFont.load_default(size=TEXT_SIZE * scale)


def text_height(scale: int = 1) -> int:
  """Height in pixels of a line of text (ascent + descent) at `scale`."""
  ascent, descent = _font(scale).getmetrics()
  return ascent + descent


def text_width(text: str, scale: int = 1) -> int:
  """Width in pixels of `text` drawn by `draw_text` at `scale`."""
  return math.ceil(_font(scale).getlength(text))


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, *,
              scale: int = 1, color=TEXT_COLOR) -> None:
  """Draws `text` on uint8 `[H, W, 3]` `canvas` in place (top-left at `top, left`), clipped."""
  image = Image.fromarray(canvas)
  ImageDraw.Draw(image).text((left, top), text, font=_font(scale), fill=tuple(color))
  canvas[...] = np.asarray(image)


def _fit_text(text: str, width: int, max_scale: int) -> tuple[str, int]:
  """Largest scale <= `max_scale` at which `text` fits `width`, else truncated."""
  for scale in range(max_scale, 0, -1):
    if text_width(text, scale) <= width:
      return text, scale
  while text and text_width(text, 1) > width:
    text = text[:-1]
  return text, 1


# ---------------------------------------------------------------------------
# Tiles.

def colormap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
  """Maps `values` `[...]` to viridis colours uint8 `[..., 3]` (clipped to the range).

  As matplotlib's colormaps: [vmin, vmax] is cut into 256 equal bins, one colour each.
  """
  t = np.clip((np.asarray(values, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
  return VIRIDIS[np.minimum((t * len(VIRIDIS)).astype(int), len(VIRIDIS) - 1)]


def _gray_to_rgb(values: np.ndarray) -> np.ndarray:
  """Float `[H, W]` in [0, 1] -> uint8 `[H, W, 3]` gray."""
  gray = np.round(np.clip(values, 0.0, 1.0) * 255).astype(np.uint8)
  return np.repeat(gray[..., None], 3, axis=-1)


def _image_to_rgb(image: np.ndarray) -> np.ndarray:
  image = np.asarray(image, np.float64)
  if image.ndim == 2:
    image = image[..., None]
  if image.ndim != 3 or image.shape[-1] not in (1, 3):
    raise ValueError(f"image must be [H, W, 1] or [H, W, 3], got {image.shape}")
  if image.shape[-1] == 1:
    return _gray_to_rgb(image[..., 0])
  return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _upscale(tile: np.ndarray, factor: int) -> np.ndarray:
  return np.repeat(np.repeat(tile, factor, axis=0), factor, axis=1)


def _canvas(height: int, width: int) -> np.ndarray:
  canvas = np.empty((height, width, 3), np.uint8)
  canvas[...] = BACKGROUND
  return canvas


# ---------------------------------------------------------------------------
# Panels and figures.

def _masks(name, masks, spatial_shape, allow_empty=True) -> np.ndarray:
  masks = np.asarray(masks, np.float64)
  if masks.ndim != 3 or masks.shape[1:] != spatial_shape:
    raise ValueError(f"{name} must be [N, {spatial_shape[0]}, {spatial_shape[1]}], "
                     f"got {masks.shape}")
  if not allow_empty and not masks.shape[0]:
    raise ValueError(f"{name} is empty")
  return masks


def example_panel(image: np.ndarray, graders: np.ndarray,
                  reconstruction: Optional[np.ndarray], samples: np.ndarray, *,
                  sample_probs: Optional[np.ndarray] = None,
                  samples_per_row: int = 8, labels: bool = True) -> np.ndarray:
  """Renders one example: inputs, graders, reconstruction, std maps and samples.

  Args:
    image: `[H, W, C]` (C = 1 or 3) floats in [0, 1].
    graders: `[M, H, W]` binary grader masks (M may be 0).
    reconstruction: `[H, W]` binary mask decoded from the posterior, or None
      (then the column is left out).
    samples: `[N, H, W]` binary masks sampled from the prior (N may be 0).
    sample_probs: optional `[N, H, W]` foreground probabilities of the samples;
      their mean is shown (gray, white = 1) as an extra "mean prob" column.
    samples_per_row: samples per row beneath the first row.
    labels: draw column labels (e.g. only for the first panel of a figure).

  Returns:
    uint8 `[h, w, 3]`. First row: image, graders, reconstruction, grader std,
    sample std (std maps coloured on [0, 0.5]); then the samples.
  """
  image_rgb = _image_to_rgb(image)
  spatial = image_rgb.shape[:2]
  graders = _masks("graders", graders, spatial)
  samples = _masks("samples", samples, spatial)

  first_row = [("image", image_rgb)]
  first_row += [(f"grader {i + 1}", _gray_to_rgb(g)) for i, g in enumerate(graders)]
  if reconstruction is not None:
    reconstruction = np.asarray(reconstruction, np.float64)
    if reconstruction.shape != spatial:
      raise ValueError(f"reconstruction must be {spatial}, got {reconstruction.shape}")
    first_row.append(("recon", _gray_to_rgb(reconstruction)))
  if len(graders):
    first_row.append(("grader std", colormap(graders.std(axis=0), *STD_RANGE)))
  if len(samples):
    first_row.append(("sample std", colormap(samples.std(axis=0), *STD_RANGE)))
  if sample_probs is not None:
    sample_probs = _masks("sample_probs", sample_probs, spatial, allow_empty=False)
    first_row.append(("mean prob", _gray_to_rgb(sample_probs.mean(axis=0))))

  factor = max(1, math.ceil(MIN_TILE_SIZE / max(spatial)))
  tile_h, tile_w = spatial[0] * factor, spatial[1] * factor
  sample_rows = math.ceil(len(samples) / samples_per_row)
  columns = max(len(first_row), min(len(samples), samples_per_row))
  # Labels at scale 2 where every label fits the tile width, else scale 1.
  longest = max(len(name) for name, _ in first_row + [("samples", None)])
  label_scale = 2 if text_width("x" * longest, 2) <= tile_w else 1
  label_h = (text_height(label_scale) + GAP) if labels else 0

  height = (2 * MARGIN + label_h + tile_h
            + sample_rows * (tile_h + GAP) + (label_h if sample_rows else 0))
  width = 2 * MARGIN + columns * tile_w + (columns - 1) * GAP
  canvas = _canvas(height, width)

  def put(tile, top, column, label=None):
    left = MARGIN + column * (tile_w + GAP)
    canvas[top:top + tile_h, left:left + tile_w] = _upscale(tile, factor)
    if label and labels:
      text, scale = _fit_text(label, tile_w, label_scale)
      offset = (tile_w - text_width(text, scale)) // 2
      draw_text(canvas, text, top - label_h, left + offset, scale=scale)

  top = MARGIN + label_h
  for column, (name, tile) in enumerate(first_row):
    put(tile, top, column, name)
  top += tile_h + GAP
  if sample_rows:
    if labels:
      draw_text(canvas, f"samples ({len(samples)})", top, MARGIN, scale=label_scale)
    top += label_h
    for i, sample in enumerate(samples):
      row, column = divmod(i, samples_per_row)
      put(_gray_to_rgb(sample), top + row * (tile_h + GAP), column)
  return canvas


def colorbar(width: int, *, label: str = "std", vmin: float = STD_RANGE[0],
             vmax: float = STD_RANGE[1], scale: int = 1) -> np.ndarray:
  """A labelled horizontal colour bar uint8 `[h, width, 3]` ('std 0 [bar] 0.5')."""
  left_text, right_text = f"{label} {vmin:g}", f"{vmax:g}"
  text_h = text_height(scale)
  bar_h = max(text_h, 8)
  bar_w = max(16, width - text_width(left_text, scale) - text_width(right_text, scale)
              - 4 * GAP)
  canvas = _canvas(bar_h, text_width(left_text, scale) + text_width(right_text, scale)
                   + bar_w + 2 * GAP)
  draw_text(canvas, left_text, (bar_h - text_h) // 2, 0, scale=scale)
  bar_left = text_width(left_text, scale) + GAP
  canvas[:, bar_left:bar_left + bar_w] = colormap(
      np.linspace(vmin, vmax, bar_w), vmin, vmax)[None]
  draw_text(canvas, right_text, (bar_h - text_h) // 2, bar_left + bar_w + GAP, scale=scale)
  return canvas


def figure(panels: Sequence[np.ndarray], title: Optional[str] = None, *,
           legend: bool = True) -> np.ndarray:
  """Stacks panels vertically under an optional title, with a std colour bar.

  Args:
    panels: uint8 `[h_i, w_i, 3]` arrays, e.g. from `example_panel`; narrower
      ones are padded on the right.
    title: one line of text at the top (shrunk or cut to fit the width).
    legend: add the colour bar of the std maps at the bottom.

  Returns:
    uint8 `[h, w, 3]`.
  """
  if not panels:
    raise ValueError("figure needs at least one panel")
  width = max(p.shape[1] for p in panels)
  blocks = []
  if title:
    text, scale = _fit_text(title, width - 2 * MARGIN, 3)
    block = _canvas(text_height(scale) + MARGIN, width)
    draw_text(block, text, MARGIN, MARGIN, scale=scale)
    blocks.append(block)
  for i, panel in enumerate(panels):
    panel = np.asarray(panel)
    if panel.dtype != np.uint8 or panel.ndim != 3 or panel.shape[-1] != 3:
      raise ValueError(f"panel {i} must be uint8 [h, w, 3], got {panel.dtype} {panel.shape}")
    block = _canvas(panel.shape[0] + (PANEL_GAP if i else 0), width)
    block[block.shape[0] - panel.shape[0]:, :panel.shape[1]] = panel
    blocks.append(block)
  if legend:
    bar = colorbar(min(width - 2 * MARGIN, 400), scale=2)[:, :width - MARGIN]
    block = _canvas(bar.shape[0] + MARGIN, width)
    block[:bar.shape[0], MARGIN:MARGIN + bar.shape[1]] = bar
    blocks.append(block)
  return np.concatenate(blocks, axis=0)


def save_figure(path, array: np.ndarray) -> None:
  """Writes uint8 `[h, w, 3]` `array` as a PNG at `path` (any `epath` path), creating the folder.

  Written to a temporary name and renamed, so a reader never sees half a file.
  """
  buffer = io.BytesIO()
  Image.fromarray(np.asarray(array, np.uint8)).save(buffer, format="PNG")
  files.atomic_write(path, buffer.getvalue())


def colab_figure(images: np.ndarray, graders: np.ndarray, reconstructions: np.ndarray,
                 samples: np.ndarray, title: Optional[str] = None) -> np.ndarray:
  """What the release's colab (`HPU_Net.ipynb`) plots for one sampling variant.

  The colab's content (image, graders, posterior reconstruction, 16 samples,
  grader and sample std), one example per panel as the other figures here
  (the colab has one example per column).

  Args:
    images: `[B, H, W, C]` in [0, 1].
    graders: `[B, M, H, W]` binary.
    reconstructions: `[B, H, W]` binary.
    samples: `[N, B, H, W]` binary.
    title: one line above the panels.
  """
  panels = [example_panel(images[i], graders[i], reconstructions[i], samples[:, i],
                          labels=(i == 0)) for i in range(len(images))]
  return figure(panels, title=title)


# ---------------------------------------------------------------------------
# The sample figures of a model on a split (training's evaluations, `experiments.sample`).

def draw_figures(model, params, config, split, path_prefix, *, num_examples=None, rng=None,
                 num_samples=16, indices=None, title="", writer=None, step=None, print_fn=None):
  """Writes the sample figures (all scales free, coarsest only, finest only).

  With a `writer` (`infra.writer.MetricWriter`), the figures also go to TensorBoard
  at `step`, tagged `figures/all_scales_free` etc. With a `print_fn`, a
  progress line per figure goes to it.

  Returns the paths written and the arrays drawn (for `experiments.sample`).
  """
  num_examples = num_examples or config.eval.num_figure_examples
  rng = jax.random.key(0) if rng is None else rng
  batch = driver.select_examples(config, split, num_examples, indices)
  images = jnp.asarray(batch["image"])
  masks = np.moveaxis(np.asarray(batch["masks"]), -1, 1)          # [b, M, H, W]
  first_grader = jax.nn.one_hot(jnp.asarray(masks[:, 0] > 0.5, jnp.int32), 2)
  recon = model.reconstruct(params, rng, images, first_grader, mean=True)
  recon = np.asarray(jnp.argmax(recon, -1) == 1)
  written, arrays = [], {"image": np.asarray(batch["image"]), "masks": masks,
                         "reconstruction": recon}
  variants = scales.figure_variants(model.config.num_scales)
  progress = Progress(len(variants), unit="figure", print_fn=print_fn)
  for variant, mean in variants:
    name, suffix, which = variant
    logits = model.sample(params, jax.random.fold_in(rng, len(written)), images,
                          num_samples=num_samples, mean=mean)
    probs = np.asarray(jax.nn.softmax(logits, -1)[..., 1])          # [N, b, H, W]
    samples = probs > 0.5
    panels = [example_panel(arrays["image"][i], masks[i], recon[i], samples[:, i],
                                    labels=(i == 0)) for i in range(images.shape[0])]
    path = f"{path_prefix}{suffix}.png"
    drawn = figure(panels, title=f"{title}{which}")
    save_figure(path, drawn)
    if writer is not None:
      writer.write_images(step, {f"figures/{name.replace(' ', '_')}": drawn})
    written.append(path)
    progress.update(len(written))
    arrays[f"samples{suffix}"] = samples
    arrays[f"probabilities{suffix}"] = probs.astype(np.float16)
  return written, arrays
