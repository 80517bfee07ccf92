"""Figures of segmentation samples as uint8 RGB arrays (numpy only) and PNGs.

One panel per example, laid out like the figures of the HPU-Net release:

  image | grader 1 .. M | recon | grader std | sample std [| mean prob]
  samples, in rows of 8

Masks are white on black. Std maps are the per-pixel standard deviation over
graders / samples, coloured with a viridis approximation on the fixed range
[0, 0.5] (0.5 is the largest std of a binary variable), so colours compare
across examples and figures. Small images are upscaled (nearest neighbour) to
tiles of at least 128 px; column labels and titles use a built-in 5x7 font.

Example:

  panels = [figures.example_panel(img, graders, recon, samples) for ...]
  figures.save_figure(path, figures.figure(panels, title="step 1000, val"))
"""
import math
import os
from typing import Optional, Sequence

import numpy as np

from hpunet_jax import png

BACKGROUND = (64, 64, 64)
TEXT_COLOR = (255, 255, 255)
MIN_TILE_SIZE = 128  # Smallest tile side in pixels after upscaling.
GAP = 4  # Pixels between tiles.
MARGIN = 8  # Pixels around a panel's contents.
PANEL_GAP = 8  # Extra pixels between the panels of a figure.
STD_RANGE = (0.0, 0.5)

# Viridis at 0, 1/7, ..., 1 (matplotlib's values); linear interpolation
# between them is within a few levels of the full colormap.
_VIRIDIS_ANCHORS = np.array([
    (68, 1, 84), (70, 51, 126), (54, 92, 141), (39, 127, 142),
    (31, 161, 135), (74, 193, 109), (160, 218, 57), (253, 231, 37)], np.float64)

# ---------------------------------------------------------------------------
# 5x7 bitmap font (plus a row for descenders): printable ASCII 0x20..0x7E,
# 5 columns per glyph, each a byte whose bit r (LSB first) is row r from the
# top (the classic LCD font).
_FONT_FIRST = 0x20
_FONT_COLUMNS = bytes.fromhex(
    "0000000000" "00005f0000" "0007000700" "147f147f14"  # space ! " #
    "242a7f2a12" "2313086462" "3649552250" "0005030000"  # $ % & '
    "001c224100" "0041221c00" "082a1c2a08" "08083e0808"  # ( ) * +
    "0050300000" "0808080808" "0060600000" "2010080402"  # , - . /
    "3e5149453e" "00427f4000" "4261514946" "2141454b31"  # 0 1 2 3
    "1814127f10" "2745454539" "3c4a494930" "0171090503"  # 4 5 6 7
    "3649494936" "064949291e" "0036360000" "0056360000"  # 8 9 : ;
    "0008142241" "1414141414" "4122140800" "0201510906"  # < = > ?
    "324979413e" "7e1111117e" "7f49494936" "3e41414122"  # @ A B C
    "7f4141221c" "7f49494941" "7f09090101" "3e41415132"  # D E F G
    "7f0808087f" "00417f4100" "2040413f01" "7f08142241"  # H I J K
    "7f40404040" "7f0204027f" "7f0408107f" "3e4141413e"  # L M N O
    "7f09090906" "3e4151215e" "7f09192946" "4649494931"  # P Q R S
    "01017f0101" "3f4040403f" "1f2040201f" "7f2018207f"  # T U V W
    "6314081463" "0304780403" "6151494543" "007f414100"  # X Y Z [
    "0204081020" "0041417f00" "0402010204" "4040404040"  # \ ] ^ _
    "0001020400" "2054545478" "7f48444438" "3844444420"  # ` a b c
    "384444487f" "3854545418" "087e090102" "18a4a4a47c"  # d e f g
    "7f08040478" "00447d4000" "2040443d00" "007f102844"  # h i j k
    "00417f4000" "7c04180478" "7c08040478" "3844444438"  # l m n o
    "fc24242418" "182424187c" "7c08040408" "4854545420"  # p q r s
    "043f444020" "3c4040207c" "1c2040201c" "3c4030403c"  # t u v w
    "4428102844" "9ca0a0a07c" "4464544c44" "0008364100"  # x y z {
    "00007f0000" "0041360800" "0804081008")               # | } ~
GLYPH_WIDTH, GLYPH_HEIGHT = 5, 8


def _glyph(char: str) -> np.ndarray:
  """bool [8, 5] bitmap of `char` ('?' for characters outside the font)."""
  code = ord(char)
  if not _FONT_FIRST <= code < _FONT_FIRST + len(_FONT_COLUMNS) // GLYPH_WIDTH:
    code = ord("?")
  start = (code - _FONT_FIRST) * GLYPH_WIDTH
  columns = np.frombuffer(_FONT_COLUMNS[start:start + GLYPH_WIDTH], np.uint8)
  return ((columns[None, :] >> np.arange(GLYPH_HEIGHT)[:, None]) & 1).astype(bool)


def text_width(text: str, scale: int = 1) -> int:
  """Width in pixels of `text` rendered by `render_text`."""
  return max(0, len(text) * (GLYPH_WIDTH + 1) - 1) * scale


def render_text(text: str, scale: int = 1) -> np.ndarray:
  """Renders one line of text as a bool mask `[8 * scale, text_width]`."""
  mask = np.zeros((GLYPH_HEIGHT, max(0, len(text) * (GLYPH_WIDTH + 1) - 1)), bool)
  for i, char in enumerate(text):
    x = i * (GLYPH_WIDTH + 1)
    mask[:, x:x + GLYPH_WIDTH] = _glyph(char)
  return np.repeat(np.repeat(mask, scale, axis=0), scale, axis=1)


def draw_text(canvas: np.ndarray, text: str, top: int, left: int, *,
              scale: int = 1, color=TEXT_COLOR) -> None:
  """Draws `text` on uint8 `[H, W, 3]` `canvas` in place, clipped to it."""
  mask = render_text(text, scale)
  height = max(0, min(mask.shape[0], canvas.shape[0] - top))
  width = max(0, min(mask.shape[1], canvas.shape[1] - left))
  region = canvas[top:top + height, left:left + width]
  region[mask[:height, :width]] = color


def _fit_text(text: str, width: int, max_scale: int) -> tuple[str, int]:
  """Largest scale <= `max_scale` at which `text` fits `width`, else truncated."""
  for scale in range(max_scale, 0, -1):
    if text_width(text, scale) <= width:
      return text, scale
  chars = max(0, (width + 1) // (GLYPH_WIDTH + 1))
  return text[:chars], 1


# ---------------------------------------------------------------------------
# Tiles.

def colormap(values: np.ndarray, vmin: float = 0.0, vmax: float = 1.0) -> np.ndarray:
  """Maps `values` `[...]` to viridis colours uint8 `[..., 3]` (clipped range)."""
  t = np.clip((np.asarray(values, np.float64) - vmin) / (vmax - vmin), 0.0, 1.0)
  position = t * (len(_VIRIDIS_ANCHORS) - 1)
  low = np.minimum(np.floor(position).astype(int), len(_VIRIDIS_ANCHORS) - 2)
  frac = (position - low)[..., None]
  rgb = (1 - frac) * _VIRIDIS_ANCHORS[low] + frac * _VIRIDIS_ANCHORS[low + 1]
  return np.round(rgb).astype(np.uint8)


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
  label_h = (GLYPH_HEIGHT * label_scale + GAP) if labels else 0

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
  text_h = GLYPH_HEIGHT * scale
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
    block = _canvas(GLYPH_HEIGHT * scale + MARGIN, width)
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
  """Writes uint8 `[h, w, 3]` `array` as a PNG (atomically), creating the directory."""
  directory = os.path.dirname(os.fspath(path))
  if directory:
    os.makedirs(directory, exist_ok=True)
  png.write_png(path, array)


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
