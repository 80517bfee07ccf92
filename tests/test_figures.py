"""Tests for hpunet_jax.figures."""
import numpy as np
import pytest

from hpunet_jax import figures
from hpunet_jax import png

H = W = 32
TILE = 128  # 32 px upscaled 4x to reach figures.MIN_TILE_SIZE.


def _tile(panel, row, column, top=figures.MARGIN):
  """The pixels of tile (row, column) of a panel drawn with labels=False."""
  y = top + row * (TILE + figures.GAP)
  x = figures.MARGIN + column * (TILE + figures.GAP)
  return panel[y:y + TILE, x:x + TILE]


def _assert_filled(tile, colour):
  """Every pixel of `tile` [h, w, 3] has the RGB (or gray level) `colour`."""
  np.testing.assert_array_equal(tile, np.broadcast_to(colour, tile.shape))


def _inputs(num_samples=16):
  rng = np.random.default_rng(0)
  image = rng.uniform(size=(H, W, 1))
  graders = np.stack([np.ones((H, W)), np.zeros((H, W)), np.ones((H, W)),
                      np.zeros((H, W))])
  reconstruction = np.zeros((H, W))
  samples = np.ones((num_samples, H, W))  # Identical samples: std 0.
  return image, graders, reconstruction, samples


def test_panel_shape_and_layout():
  image, graders, reconstruction, samples = _inputs()
  panel = figures.example_panel(image, graders, reconstruction, samples, labels=False)
  columns = 1 + 4 + 1 + 2  # image, graders, recon, grader std, sample std.
  assert panel.dtype == np.uint8
  assert panel.shape == (
      2 * figures.MARGIN + 3 * TILE + 2 * figures.GAP,
      2 * figures.MARGIN + columns * TILE + (columns - 1) * figures.GAP, 3)
  np.testing.assert_array_equal(_tile(panel, 0, 1), 255)  # All-ones grader: white.
  np.testing.assert_array_equal(_tile(panel, 0, 2), 0)  # Empty grader: black.
  np.testing.assert_array_equal(_tile(panel, 0, 5), 0)  # Reconstruction.
  # Grader std of half ones, half zeros is 0.5, the top of the std range.
  _assert_filled(_tile(panel, 0, 6), figures.colormap(0.5, *figures.STD_RANGE))
  # Identical samples: std 0, the colormap's zero colour.
  zero_colour = figures.colormap(0.0)
  _assert_filled(_tile(panel, 0, 7), zero_colour)
  assert tuple(zero_colour) == (68, 1, 84)
  # Samples: rows of 8 beneath the first row.
  np.testing.assert_array_equal(_tile(panel, 1, 0), 255)
  np.testing.assert_array_equal(_tile(panel, 2, 7), 255)
  # Image pixels are nearest-neighbour upscaled.
  image_tile = _tile(panel, 0, 0)
  _assert_filled(image_tile[:4, :4], np.round(image[0, 0, 0] * 255))
  np.testing.assert_array_equal(image_tile[..., 0], image_tile[..., 2])


def test_panel_options_and_errors():
  image, graders, _, samples = _inputs(num_samples=3)
  rgb = np.ones((H, W, 3)) * np.array([1.0, 0.0, 0.0])
  panel = figures.example_panel(rgb, graders[:2], None, samples,
                                sample_probs=np.full((3, H, W), 0.5), labels=False)
  columns = 1 + 2 + 2 + 1  # No recon column; an extra "mean prob" column.
  assert panel.shape[1] == 2 * figures.MARGIN + columns * TILE + (columns - 1) * figures.GAP
  _assert_filled(_tile(panel, 0, 0), [255, 0, 0])
  np.testing.assert_array_equal(_tile(panel, 0, 5), 128)  # Mean probability 0.5.
  with pytest.raises(ValueError, match="graders"):
    figures.example_panel(image, graders[:, :16], None, samples)
  with pytest.raises(ValueError, match="reconstruction"):
    figures.example_panel(image, graders, np.zeros((16, 16)), samples)


def test_labels_and_title_are_drawn():
  image, graders, reconstruction, samples = _inputs(num_samples=8)
  labelled = figures.example_panel(image, graders, reconstruction, samples)
  plain = figures.example_panel(image, graders, reconstruction, samples, labels=False)
  assert labelled.shape[0] > plain.shape[0]
  label_band = labelled[:figures.MARGIN + 2 * figures.GLYPH_HEIGHT]
  assert (label_band == figures.TEXT_COLOR).all(axis=-1).any()
  fig = figures.figure([labelled, plain[:, :300]], title="step 1000: val")
  assert fig.dtype == np.uint8 and fig.shape[1] == labelled.shape[1]
  title_band = fig[:figures.MARGIN + 3 * figures.GLYPH_HEIGHT]
  assert (title_band == figures.TEXT_COLOR).all(axis=-1).sum() > 50
  # The narrower panel is padded with the background colour.
  assert (fig[-100:, -50:] == figures.BACKGROUND).all()


def test_font():
  mask = figures.render_text("grader 1", scale=2)
  assert mask.dtype == bool and mask.any()
  assert mask.shape == (2 * figures.GLYPH_HEIGHT, figures.text_width("grader 1", 2))
  for char in "AZaz09:.-()":
    assert figures.render_text(char).any(), char
  assert not figures.render_text(" ").any()
  # Characters outside the font fall back to '?'.
  np.testing.assert_array_equal(figures.render_text("\u00e9"), figures.render_text("?"))


def test_colormap_endpoints_and_monotone_brightness():
  colours = figures.colormap(np.linspace(0, 1, 9))
  assert colours.dtype == np.uint8 and colours.shape == (9, 3)
  assert tuple(colours[-1]) == (253, 231, 37)
  brightness = colours.astype(float) @ [0.299, 0.587, 0.114]
  assert np.all(np.diff(brightness) > 0)


def test_save_figure_writes_a_valid_png(tmp_path):
  image, graders, reconstruction, samples = _inputs(num_samples=4)
  fig = figures.figure([figures.example_panel(image, graders, reconstruction, samples)],
                       title="test")
  path = tmp_path / "figures" / "samples_000100.png"
  figures.save_figure(path, fig)
  np.testing.assert_array_equal(png.read_png(path), fig)
