"""Tests for hpunet_jax.figures."""
import numpy as np
import pytest

from PIL import Image

from hpunet_jax.evaluation import figures

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
  label_band = labelled[:figures.MARGIN + figures.text_height(2)]
  assert (label_band == figures.TEXT_COLOR).all(axis=-1).any()
  fig = figures.figure([labelled, plain[:, :300]], title="step 1000: val")
  assert fig.dtype == np.uint8 and fig.shape[1] == labelled.shape[1]
  title_band = fig[:figures.MARGIN + figures.text_height(3)]
  assert (title_band == figures.TEXT_COLOR).all(axis=-1).sum() > 50
  # The narrower panel is padded with the background colour.
  assert (fig[-100:, -50:] == figures.BACKGROUND).all()


def test_text_is_drawn_where_its_measured_size_says():
  canvas = np.zeros((60, 200, 3), np.uint8)
  figures.draw_text(canvas, "grader 1", 10, 20, scale=2)
  ys, xs = np.nonzero(canvas.any(axis=-1))
  assert ys.min() >= 10 and ys.max() < 10 + figures.text_height(2)
  assert xs.min() >= 20 and xs.max() < 20 + figures.text_width("grader 1", 2)
  assert figures.text_width("grader 1", 2) > figures.text_width("grader 1", 1) > 0
  # Clipped at the canvas edge, not an error.
  figures.draw_text(canvas, "a long line of text", 55, 150)
  blank = np.zeros((20, 40, 3), np.uint8)
  figures.draw_text(blank, " ", 0, 0)
  assert not blank.any()


def test_fit_text_shrinks_then_truncates():
  assert figures._fit_text("sample std", 1000, 3) == ("sample std", 3)
  text, scale = figures._fit_text("sample std", figures.text_width("sample std", 1), 3)
  assert (text, scale) == ("sample std", 1)
  text, scale = figures._fit_text("sample std", figures.text_width("sam", 1), 3)
  assert scale == 1 and "sample std".startswith(text) and 0 < len(text) < 10


def test_colormap_is_matplotlibs_viridis():
  colours = figures.colormap(np.linspace(0, 1, 9))
  assert colours.dtype == np.uint8 and colours.shape == (9, 3)
  assert tuple(colours[0]) == (68, 1, 84) and tuple(colours[-1]) == (253, 231, 37)
  assert figures.VIRIDIS.shape == (256, 3)
  # Entries of matplotlib's `_viridis_data` (x 255, rounded): 64, 128 and 192 of 256.
  np.testing.assert_array_equal(figures.colormap([64.5 / 256, 128.5 / 256, 192.5 / 256]),
                                [[59, 82, 139], [33, 145, 140], [94, 201, 98]])
  # 256 equal bins: the bin edge at 1/256 separates entries 0 and 1.
  np.testing.assert_array_equal(figures.colormap([0.99 / 256, 1.01 / 256]),
                                figures.VIRIDIS[:2])
  brightness = colours.astype(float) @ [0.299, 0.587, 0.114]
  assert np.all(np.diff(brightness) > 0)


def test_save_figure_writes_a_valid_png(tmp_path):
  image, graders, reconstruction, samples = _inputs(num_samples=4)
  fig = figures.figure([figures.example_panel(image, graders, reconstruction, samples)],
                       title="test")
  path = tmp_path / "figures" / "samples_000100.png"
  figures.save_figure(path, fig)
  np.testing.assert_array_equal(np.asarray(Image.open(path)), fig)
  assert [p.name for p in path.parent.iterdir()] == [path.name]  # No temporary left.
