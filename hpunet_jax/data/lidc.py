"""`lidc_crops`: DeepMind's LIDC 2D crops, and data of your own in their layout.

The release (CC BY 3.0) is three tarballs in the public bucket
`gs://hpunet-data/lidc_crops/`. Each holds, for its split,

  images/<patient>/z-<z>_c<crop>.png        CT crop, 180x180, grayscale
  gt/<patient>/z-<z>_c<crop>_l<k>.png       one binary mask per grader

with graders numbered `l0..l3` on disk (the release's README says `l1..l4`:
both are accepted, and graders are kept in numeric order). The tarballs may
or may not have a leading `<split>/` folder.

Configs:
  `lidc_crops` (= `lidc_crops/default`): the release, 180x180, 4 graders;
    read from `manual_dir` when it holds the tarballs or extracted folders,
    otherwise downloaded.
  `lidc_crops/custom`: your own data in the same layout under `manual_dir`,
    any number of graders and any image size (inferred from the data; all
    images must share them).
  `LidcCropsConfig(name=..., image_size=(H, W), num_graders=N)`: the same,
    with the sizes fixed and checked while generating.

Every example is validated while the dataset is generated (tfds writes into a
temporary folder and renames it only on success), so a bad file stops the
build with an error naming it and leaves no finished-looking dataset behind.
"""
import collections
import dataclasses
import functools
import hashlib
import os
import re
import shutil
import tarfile
import zlib

from absl import logging
from etils import epath
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from hpunet_jax.infra.progress import Progress
from hpunet_jax.data import builders

URL_ROOT = "https://storage.googleapis.com/hpunet-data/lidc_crops/"

# tfds split name -> folder / tarball stem in the release.
SPLIT_FOLDERS = {"train": "train", "validation": "val", "test": "test"}

_IMAGE_RE = re.compile(r"^z-(?P<z>.+)_c(?P<crop>\d+)\.png$")
_MASK_RE = re.compile(r"^z-(?P<z>.+)_c(?P<crop>\d+)_l(?P<grader>\d+)\.png$")


class LidcDataError(ValueError):
  """The data on disk does not have the expected layout or content."""


@dataclasses.dataclass(eq=False)
class LidcCropsConfig(tfds.core.BuilderConfig):
  """Which data a `lidc_crops` dataset holds.

  Attributes:
    image_size: `(H, W)` of every image and mask, or None to take it from the
      first training image (all images must then share it).
    num_graders: masks per image, or None to take it from the first training
      image (all images must then share it).
    num_channels: channels of the images (1 for CT).
    download: whether the data may be downloaded from the public bucket when
      `manual_dir` does not hold it (only the release can be).
  """
  image_size: tuple[int, int] | None = (180, 180)
  num_graders: int | None = 4
  num_channels: int = 1
  download: bool = False


_MANUAL_INSTRUCTIONS = """\
Put in `manual_dir` either the release's tarballs `train.tar.gz`, `val.tar.gz`,
`test.tar.gz` (from https://storage.googleapis.com/hpunet-data/lidc_crops/) or
the extracted folders `{train,val,test}/{images,gt}/<patient>/...`:
  images/<patient>/z-<z>_c<crop>.png
  gt/<patient>/z-<z>_c<crop>_l<k>.png   (k = 0..N-1 or 1..N, one per grader)
"""


@dataclasses.dataclass(frozen=True)
class _Entry:
  """One image and its masks, found on disk."""
  key: str
  patient: str
  z: str
  crop: int
  image_path: str
  mask_paths: tuple[str, ...]


def _sorted_listdir(path):
  # Hidden files (.DS_Store, ._foo from macOS tar) are never data.
  return sorted(p.name for p in epath.Path(path).iterdir() if not p.name.startswith("."))


def _join(*parts) -> str:
  """`os.path.join` for any epath path (a gs:// manual_dir included)."""
  return os.fspath(epath.Path(parts[0]).joinpath(*parts[1:]))


def _list_pngs(root, pattern, kind):
  """Yields `(patient, filename, match)` for every file under `root/<patient>/`."""
  for patient in _sorted_listdir(root):
    patient_dir = _join(root, patient)
    if not epath.Path(patient_dir).is_dir():
      raise LidcDataError(f"{patient_dir}: expected a patient folder in {root}, found a file")
    for name in _sorted_listdir(patient_dir):
      match = pattern.match(name)
      if match is None:
        raise LidcDataError(
            f"{_join(patient_dir, name)}: not a {kind} file name "
            f"(expected {'z-<z>_c<crop>.png' if kind == 'image' else 'z-<z>_c<crop>_l<k>.png'})")
      yield patient, name, match


def index_split(split_dir, num_graders=None):
  """Pairs every image of one split folder with its masks.

  Args:
    split_dir: a folder holding `images/` and `gt/`.
    num_graders: masks each image must have; None = as many as most images
      have (not the first image's count: if the first image lacks a mask, the
      error must name it, not a correct image after it).

  Returns:
    A list of `_Entry`, sorted by patient and file name, graders in numeric
    order (`l0..` or `l1..`).

  Raises:
    LidcDataError: naming the folder or file at fault, if a folder is missing,
      a file name does not follow the layout, an image lacks masks, a mask has
      no image, or an image's masks mix `l0..` and `l1..` numbering.
  """
  images_dir = _join(split_dir, "images")
  gt_dir = _join(split_dir, "gt")
  for folder in (images_dir, gt_dir):
    if not epath.Path(folder).is_dir():
      raise LidcDataError(f"{folder}: folder missing (expected images/ and gt/ in {split_dir})")

  images = {}
  for patient, name, match in _list_pngs(images_dir, _IMAGE_RE, "image"):
    images[(patient, name[:-len(".png")])] = (_join(images_dir, patient, name), match)
  masks = {}
  for patient, name, match in _list_pngs(gt_dir, _MASK_RE, "mask"):
    stem = f"z-{match['z']}_c{match['crop']}"
    path = _join(gt_dir, patient, name)
    if (patient, stem) not in images:
      raise LidcDataError(
          f"{path}: mask without an image (no {_join(images_dir, patient, stem)}.png)")
    masks.setdefault((patient, stem), {})[int(match["grader"])] = path

  if num_graders is None and masks:
    counts = collections.Counter(len(graders) for graders in masks.values())
    # The most common count (the larger one on a tie).
    num_graders = max(counts, key=lambda count: (counts[count], count))
  entries = []
  for (patient, stem), (image_path, match) in images.items():
    graders = masks.get((patient, stem), {})
    count = num_graders if num_graders is not None else len(graders)
    if not count or set(graders) not in (set(range(count)), set(range(1, count + 1))):
      found = ", ".join(f"l{k}" for k in sorted(graders)) or "none"
      where = _join(gt_dir, patient)
      if 0 in graders and count in graders:
        raise LidcDataError(
            f"{image_path}: its masks in {where} mix l0..l{count - 1} and l1..l{count} "
            f"numbering (found {found})")
      expected = f"l0..l{count - 1} or l1..l{count}" if count else "one per grader"
      what = f"its {count} masks" if count else "masks"
      raise LidcDataError(
          f"{image_path}: image without {what} in {where} (found {found}; expected {expected})")
    if num_graders is None:
      num_graders = count
    entries.append(_Entry(
        key=f"{patient}/{stem}", patient=patient, z=match["z"], crop=int(match["crop"]),
        image_path=image_path, mask_paths=tuple(graders[k] for k in sorted(graders))))
  return entries


# PNG modes (as Pillow opens them) read as 8 bits per channel, and what they become.
_EIGHT_BIT_MODES = {"L", "LA", "RGB", "RGBA"}
# 16-bit grayscale: masks only (a CT image's 16 -> 8 bit windowing is the user's choice).
_SIXTEEN_BIT_MODES = {"I;16", "I;16B", "I;16L", "I"}
_MASK_LEVELS = ({0, 1}, {0, 255}, {0, 65535})


def _read_png(path, channels, *, mask=False):
  """Reads the PNG at `path` as uint8 `[H, W, channels]`; errors name the file.

  Modes (Pillow's names): 8-bit `L`, `LA`, `RGB`, `RGBA` are read as they are;
  1-bit `1` becomes 0 / 255; palette `P` / `PA` become their palette's RGB(A)
  colours. An image with 3 or 4 channels (or gray + alpha) is accepted as
  1-channel when every pixel is gray and opaque; otherwise its channels must be
  `channels`. 16-bit grayscale (`I;16`) is accepted for masks (`mask=True`)
  whose values are {0, 1}, {0, 255} or {0, 65535}, which become 0 / 255, and
  refused for images. Other modes are refused naming the mode.
  """
  try:
    with epath.Path(path).open("rb") as f, Image.open(f, formats=["PNG"]) as image:
      image.load()
      mode = image.mode
      if mode == "1":
        image = image.convert("L")     # 0 / 255
      elif mode in ("P", "PA"):
        image = image.convert("RGBA" if mode == "PA" or "transparency" in image.info else "RGB")
      array = np.asarray(image)
  except Image.UnidentifiedImageError as e:
    raise LidcDataError(f"{path}: unreadable PNG (not a PNG file)") from e
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise LidcDataError(f"{path}: unreadable PNG ({e})") from e
  if mode in _SIXTEEN_BIT_MODES:
    values = set(np.unique(array).tolist())
    if not mask:
      raise LidcDataError(f"{path}: 16-bit image (PNG mode {mode}); convert it to 8 bits "
                          f"with the intensity window you want")
    if not any(values <= levels for levels in _MASK_LEVELS):
      raise LidcDataError(
          f"{path}: 16-bit mask values {sorted(values)[:8]} are not binary (expected {{0, 1}}, "
          f"{{0, 255}} or {{0, 65535}})")
    array = np.where(array > 0, 255, 0).astype(np.uint8)
  elif mode not in _EIGHT_BIT_MODES | {"1", "P", "PA"}:
    raise LidcDataError(f"{path}: PNG mode {mode} is not read (expected 8-bit gray, RGB(A), "
                        f"1-bit, palette, or 16-bit gray for masks)")
  if array.ndim == 2:
    array = array[..., None]
  have = array.shape[-1]
  if have == channels:
    return array
  # Tools save grayscale as RGB(A) or gray+alpha; accept that only when it loses nothing.
  color = array[..., :3] if have >= 3 else array[..., :1]
  alpha_ok = have in (1, 3) or np.all(array[..., -1] == 255)
  if channels == 1 and alpha_ok and np.all(color == color[..., :1]):
    return color[..., :1]
  raise LidcDataError(f"{path}: has {have} channels (PNG mode {mode}), expected {channels}")


def _read_mask(path, image_shape):
  """Reads a mask PNG as bool `[H, W]`; it must match `image_shape` and be binary."""
  mask = _read_png(path, 1, mask=True)
  if mask.shape[:2] != image_shape:
    raise LidcDataError(
        f"{path}: mask is {mask.shape[0]}x{mask.shape[1]}, its image is "
        f"{image_shape[0]}x{image_shape[1]}")
  values = set(np.unique(mask).tolist())
  if not (values <= {0, 255} or values <= {0, 1}):
    raise LidcDataError(
        f"{path}: mask values {sorted(values)[:8]} are not binary (expected {{0, 255}} or {{0, 1}})")
  return mask[..., 0] > 0


def load_example(entry, image_size, num_channels):
  """Reads and validates one image and its masks.

  Args:
    entry: an `_Entry` from `index_split`.
    image_size: the `(H, W)` every image must have.
    num_channels: the channels the image must have.

  Returns:
    A dict: `image` uint8 `[H, W, C]`, `masks` uint8 `[H, W, N]` in {0, 1},
    `patient_id`, `z` (text as on disk), `crop`.
  """
  image = _read_png(entry.image_path, num_channels)
  if image.shape[:2] != tuple(image_size):
    raise LidcDataError(
        f"{entry.image_path}: image is {image.shape[0]}x{image.shape[1]}, "
        f"expected {image_size[0]}x{image_size[1]}")
  masks = [_read_mask(path, image.shape[:2]) for path in entry.mask_paths]
  return {
      "image": image,
      "masks": np.stack(masks, axis=-1).astype(np.uint8),
      "patient_id": entry.patient,
      "z": entry.z,
      "crop": np.int32(entry.crop),
  }


def extract_tarball(tarball, extract_root):
  """Unpacks `tarball` under `extract_root` once; returns the folder it is in.

  The folder is named after the tarball's path, size and modification time, so a
  replaced tarball is unpacked afresh; it appears (by rename) only when complete.
  """
  if "://" in os.fspath(tarball):   # on an object store: tarfile needs a local file
    local = os.path.join(extract_root, "tarballs", os.path.basename(os.fspath(tarball)))
    os.makedirs(os.path.dirname(local), exist_ok=True)
    epath.Path(tarball).copy(epath.Path(local), overwrite=True)
    tarball = local
  stat = os.stat(tarball)
  tag = hashlib.sha1(f"{os.path.realpath(tarball)}:{stat.st_size}:{stat.st_mtime_ns}".encode())
  name = os.path.basename(tarball).split(".")[0]
  out_dir = os.path.join(extract_root, f"lidc_crops_{name}_{tag.hexdigest()[:12]}")
  if os.path.isdir(out_dir):
    return out_dir
  tmp_dir = f"{out_dir}.incomplete{os.getpid()}"
  shutil.rmtree(tmp_dir, ignore_errors=True)
  try:
    with tarfile.open(tarball, "r:*") as tar:
      tar.extractall(tmp_dir, filter="data")  # "data": no paths outside tmp_dir, no devices.
  except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
    shutil.rmtree(tmp_dir, ignore_errors=True)
    raise LidcDataError(f"{tarball}: cannot extract ({e})") from e
  os.replace(tmp_dir, out_dir)
  return out_dir


def _split_root(extracted, folder):
  """The folder holding `images/` and `gt/` in an extracted tarball, or None."""
  for root in (_join(extracted, folder), extracted):
    if epath.Path(root, "images").is_dir():
      return root
  return None


class LidcCrops(builders.ArrayRecordBuilder):
  """LIDC-IDRI 2D crops with the masks of every grader (or your own such data)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Decoded uint8 arrays, masks in {0, 1}, graders in numeric order."}
  BUILDER_CONFIGS = [
      LidcCropsConfig(
          name="default", image_size=(180, 180), num_graders=4, download=True,
          description="DeepMind's LIDC 2D crops release: 180x180 CT crops, 4 graders."),
      LidcCropsConfig(
          name="custom", image_size=None, num_graders=None, download=False,
          description="Your own data in the release's layout under manual_dir; "
                      "image size and number of graders taken from the data."),
  ]
  DEFAULT_CONFIG_NAME = "default"
  MANUAL_DOWNLOAD_INSTRUCTIONS = _MANUAL_INSTRUCTIONS

  def _info(self):
    height, width = self.builder_config.image_size or (None, None)
    channels = self.builder_config.num_channels
    return tfds.core.DatasetInfo(
        builder=self,
        description=__doc__.split("\n\n")[0],
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Tensor(
                shape=(height, width, channels), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            "masks": tfds.features.Tensor(
                shape=(height, width, self.builder_config.num_graders), dtype=np.uint8,
                encoding=tfds.features.Encoding.ZLIB),
            "patient_id": tfds.features.Text(),
            # Text, exactly as in the file name (e.g. "-123.5"): no float round-off.
            "z": tfds.features.Text(),
            "crop": tfds.features.Scalar(dtype=np.int32),
        }),
        homepage="https://github.com/deepmind/deepmind-research/tree/master/hierarchical_probabilistic_unet",
        citation="""@article{kohl2019hierarchical,
  title={A Hierarchical Probabilistic U-Net for Modeling Multi-Scale Ambiguities},
  author={Kohl, Simon A. A. and Romera-Paredes, Bernardino and Maier-Hein, Klaus H. and
          Rezende, Danilo Jimenez and Eslami, S. M. Ali and Kohli, Pushmeet and
          Zisserman, Andrew and Ronneberger, Olaf},
  journal={arXiv preprint arXiv:1905.13077},
  year={2019}
}""",
    )

  def _find_split_dirs(self, dl_manager):
    """Returns {tfds split: folder with images/ and gt/}, from manual_dir or a download."""
    manual_dir = builders.manual_dir(dl_manager)
    sources = {}
    if manual_dir is not None:
      for split, folder in SPLIT_FOLDERS.items():
        if (manual_dir / folder).is_dir():
          sources[split] = ("dir", os.fspath(manual_dir / folder))
        elif (manual_dir / f"{folder}.tar.gz").is_file():
          sources[split] = ("tar", os.fspath(manual_dir / f"{folder}.tar.gz"))
    if not sources:
      if not self.builder_config.download:
        raise LidcDataError(
            f"{manual_dir or 'manual_dir'}: no data for lidc_crops/{self.builder_config.name}, "
            f"which is read from manual_dir only.\n{_MANUAL_INSTRUCTIONS}")
      sources = {split: ("url", f"{URL_ROOT}{folder}.tar.gz")
                 for split, folder in SPLIT_FOLDERS.items()}
    missing = [f"{manual_dir}/{SPLIT_FOLDERS[s]}" for s in SPLIT_FOLDERS if s not in sources]
    if missing:
      raise LidcDataError(
          f"{', '.join(missing)}: split folder missing (neither the folder nor its .tar.gz)")

    # tfds' own extraction needs TensorFlow, so tarballs are unpacked here;
    # its downloads (requests + checksums) do not.
    urls = {s: p for s, (kind, p) in sources.items() if kind == "url"}
    tarballs = {s: p for s, (kind, p) in sources.items() if kind == "tar"}
    tarballs.update({s: os.fspath(p) for s, p in dl_manager.download(urls).items()} if urls else {})
    extracted = {s: p for s, (kind, p) in sources.items() if kind == "dir"}
    extract_root = os.path.join(os.fspath(dl_manager.download_dir), "extracted")
    extracted.update({s: extract_tarball(p, extract_root) for s, p in tarballs.items()})

    split_dirs = {}
    for split, path in extracted.items():
      origin = sources[split][1]
      if sources[split][0] == "dir":
        split_dirs[split] = path  # index_split names a missing images/ or gt/.
        continue
      root = _split_root(path, SPLIT_FOLDERS[split])
      if root is None:
        raise LidcDataError(
            f"{origin}: split folder missing (no images/ under {SPLIT_FOLDERS[split]}/ "
            f"or at the top of the archive)")
      split_dirs[split] = root
    return split_dirs

  def _split_generators(self, dl_manager):
    config = self.builder_config
    split_dirs = self._find_split_dirs(dl_manager)
    # Index every split before writing anything, so layout errors come first.
    num_graders = config.num_graders
    entries = {}
    for split in SPLIT_FOLDERS:
      entries[split] = index_split(split_dirs[split], num_graders)
      if not entries[split]:
        raise LidcDataError(f"{split_dirs[split]}/images: no images")
      if num_graders is None:  # Inferred: every split must agree with train.
        num_graders = len(entries[split][0].mask_paths)
    image_size = config.image_size
    if image_size is None:
      image_size = _read_png(entries["train"][0].image_path, config.num_channels).shape[:2]
    return {split: self._generate_examples(entries[split], tuple(image_size), split)
            for split in SPLIT_FOLDERS}

  def _generate_examples(self, entries, image_size, split):
    progress = Progress(len(entries), unit="example", every_s=10, print_fn=functools.partial(
        logging.info, "Reading lidc_crops/%s %s: %s", self.builder_config.name, split))
    for done, entry in enumerate(entries, 1):
      yield entry.key, load_example(entry, image_size, self.builder_config.num_channels)
      progress.update(done)
