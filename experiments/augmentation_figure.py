r"""Draws `docs/augmentation.png`: the LIDC recipe's on-device augmentation at work.

    python -m experiments.augmentation_figure --out=docs/augmentation.png

LIDC itself is not needed: the examples are LIDC-layout stand-ins (180x180, a
bright lesion on a faint grid that makes the deformation visible, one grader's
mask), augmented exactly as `configs/lidc.py` trains (`data.augment`, crop
128). Each row: the source with the centre crop outlined, then two draws of
the augmentation, each as image, mask and validity mask (white: from inside
the source; black: brought in from outside, masked out of the loss).
"""
from absl import app
from absl import flags
import jax
import numpy as np
from PIL import Image, ImageDraw

from configs import lidc
from hpunet_jax.data import augment

GAP = 4
LABEL_HEIGHT = 14


def stand_in_examples(num, size=180, seed=0):
  """`image` `[N, size, size, 1]` in [0, 1] and one-hot `segmentation` `[N, size, size, 2]`."""
  rng = np.random.default_rng(seed)
  rows, cols = np.mgrid[:size, :size]
  grid = ((rows % 20 < 2) | (cols % 20 < 2)).astype(np.float32)
  images, masks = [], []
  for _ in range(num):
    cy, cx = rng.uniform(70, 110, 2)
    ry, rx = rng.uniform(8, 16, 2)
    lesion = ((rows - cy) / ry) ** 2 + ((cols - cx) / rx) ** 2 < 1
    image = 0.25 + 0.1 * rng.random((size, size)) + 0.25 * grid + 0.4 * lesion
    images.append(np.clip(image, 0, 1))
    masks.append(lesion)
  masks = np.stack(masks).astype(np.int64)
  return (np.stack(images)[..., None].astype(np.float32),
          np.eye(2, dtype=np.float32)[masks])


def _gray(x):
  return np.repeat((np.clip(x, 0, 1) * 255).astype(np.uint8)[..., None], 3, axis=-1)


def _with_crop_box(image, crop):
  tile = _gray(image)
  top = (image.shape[0] - crop) // 2
  bottom = top + crop - 1
  tile[[top, bottom], top:bottom + 1] = (255, 80, 80)
  tile[top:bottom + 1, [top, bottom]] = (255, 80, 80)
  return tile


def draw(num_examples=3, seed=0):
  """The figure as an `[H, W, 3]` uint8 array."""
  config = lidc.get_config()
  crop = config.data.crop_size
  images, segs = stand_in_examples(num_examples, seed=seed)
  draws = [jax.device_get(augment.augment_batch(jax.random.key(seed + i),
                                                {"image": images, "segmentation": segs},
                                                config.data))
           for i in range(2)]
  columns = ["source, centre crop"] + [f"{what} {i + 1}" for i in range(2)
                                       for what in ("image", "mask", "valid")]
  widths = [images.shape[2]] + [crop] * 6
  height = LABEL_HEIGHT + num_examples * (images.shape[1] + GAP)
  canvas = Image.new("RGB", (sum(widths) + GAP * (len(widths) + 1), height), (64, 64, 64))
  pen = ImageDraw.Draw(canvas)
  left = GAP
  for title, width in zip(columns, widths):
    pen.text((left + 2, 1), title, fill=(255, 255, 255))
    left += width + GAP
  for row in range(num_examples):
    top = LABEL_HEIGHT + row * (images.shape[1] + GAP)
    tiles = [_with_crop_box(images[row, ..., 0], crop)]
    for out in draws:
      tiles += [_gray(out["image"][row, ..., 0]), _gray(out["segmentation"][row, ..., 1]),
                _gray(out["mask"][row])]
    left = GAP
    for tile, width in zip(tiles, widths):
      canvas.paste(Image.fromarray(tile), (left, top))
      left += width + GAP
  return np.asarray(canvas)


def main(argv):
  del argv
  flag = flags.FLAGS
  Image.fromarray(draw(flag.num_examples, flag.seed)).save(flag.out)
  print(f"Wrote {flag.out}")


if __name__ == "__main__":
  # Defined here, not at import: the tests import `draw` beside the benchmarks,
  # whose `--seed` would clash with this one in absl's global flag registry.
  flags.DEFINE_string("out", "docs/augmentation.png", "Where to write the PNG.")
  flags.DEFINE_integer("num_examples", 3, "Rows.")
  flags.DEFINE_integer("seed", 0, "Seed of the stand-in examples and the augmentation.")
  app.run(main)
