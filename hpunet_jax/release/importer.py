"""DeepMind's released TF1 checkpoint as an hpunet-jax workdir.

`import_release(source, workdir)` reads the checkpoint (`tf_checkpoint`, no
TensorFlow needed), renames every tensor to its Haiku parameter
(`names.convert`) and writes a normal workdir: `config.json` and an orbax
checkpoint at step 0 with the imported parameters and a fresh optimiser,
which `experiments.sample`, `experiments.evaluate` and
`workdir.Run(...).params()` read like any run. docs/pretrained.md.
"""
import os
import shutil
import tarfile
import tempfile
import urllib.request

from absl import logging
from etils import epath
import jax
import numpy as np

from hpunet_jax import config_lib
from hpunet_jax import workdir as workdir_lib
from hpunet_jax.infra import checkpoint as checkpoint_lib
from hpunet_jax.infra import parallel
from hpunet_jax.infra import writer as writer_lib
from hpunet_jax.release import tf_checkpoint
from hpunet_jax.release.names import IMPORT_FILE, RELEASE_PREFIX_NAME, Converted, convert
from hpunet_jax.training.state import create_train_state

def _download(url, directory):
  path = os.path.join(directory, os.path.basename(url.split("?")[0]) or "checkpoint")
  logging.info("Downloading %s", url)
  with urllib.request.urlopen(url) as response, open(path, "wb") as f:
    shutil.copyfileobj(response, f)
  return path


def _extract(archive, directory):
  with tarfile.open(archive) as tar:
    kwargs = {"filter": "data"} if hasattr(tarfile, "data_filter") else {}
    tar.extractall(directory, **kwargs)
  return directory


def _prefix_in(directory):
  # The folder itself or one level down (the release's tarball holds checkpoint/...).
  directory = epath.Path(directory)
  indexes = sorted(str(p) for pattern in ("*.index", "*/*.index") for p in directory.glob(pattern))
  if not indexes:
    raise FileNotFoundError(f"no TF checkpoint (*.index) in {directory} or its subfolders")
  preferred = [p for p in indexes if os.path.basename(p) == RELEASE_PREFIX_NAME + ".index"]
  if len(preferred) == 1:
    return preferred[0][:-len(".index")]
  if len(indexes) == 1:
    return indexes[0][:-len(".index")]
  raise ValueError(f"several checkpoints under {directory}: {', '.join(indexes)}; "
                   "pass the prefix of one")


def resolve_checkpoint(source, scratch_dir):
  """The checkpoint prefix for `source`: a tarball, a folder or a prefix; local, gs:// or URL.

  Downloads (URL) or copies (other remote tarballs) into `scratch_dir` and
  extracts tarballs there.
  """
  source = str(source)
  if source.startswith(("http://", "https://")):
    source = _download(source, scratch_dir)
  path = epath.Path(source)
  if source.endswith((".tar.gz", ".tgz", ".tar")):
    if not os.path.exists(source):   # gs:// or another remote file system
      local = os.path.join(scratch_dir, path.name)
      path.copy(local)
      source = local
    return _prefix_in(_extract(source, os.path.join(scratch_dir, "extracted")))
  if path.is_dir():
    return _prefix_in(path)
  return tf_checkpoint._strip_prefix(source)  # pylint: disable=protected-access


def lidc_config():
  """The config an imported workdir gets: this package's LIDC defaults (the release's)."""
  return config_lib.base_config()


def import_release(source, workdir, config=None) -> Converted:
  """Writes a workdir holding the release's parameters.

  Args:
    source: the release's `checkpoint.tar.gz`, the folder it extracts to, or
      a checkpoint prefix; local, `gs://` or an http(s) URL.
    workdir: where `config.json`, `checkpoints/0/` and `release_import.json`
      (the name map used and the skipped tensors) go. Must not hold a
      checkpoint yet.
    config: the experiment config (default: `lidc_config()`); its model
      group must be the release's sizes (the shapes are checked).

  Returns:
    The `Converted` parameters.
  """
  config = config or lidc_config()
  model_cfg = config_lib.validate(config)
  run = workdir_lib.Run(workdir)   # local or gs://...
  checkpoint_dir = run.checkpoint_dir
  with checkpoint_lib.Checkpointer(checkpoint_dir) as checkpointer:
    if checkpointer.latest_step() is not None:
      raise FileExistsError(f"{checkpointer.directory} already holds checkpoints; import into "
                            "a new --workdir")
  with tempfile.TemporaryDirectory(prefix="hpunet_release_") as scratch:
    prefix = resolve_checkpoint(source, scratch)
    logging.info("Reading %s", prefix)
    tensors = tf_checkpoint.read(prefix)
  converted = convert(tensors, model_cfg, image_channels=config.data.num_channels)

  size = config.data.crop_size or config.data.image_size or model_cfg.size_multiple
  size = (size, size) if isinstance(size, int) else tuple(size)
  example = {"image": np.zeros((1,) + size + (config.data.num_channels,), np.float32),
             "segmentation": np.zeros((1,) + size + (model_cfg.num_classes,), np.float32)}
  mesh = parallel.make_mesh()
  state = create_train_state(config, jax.random.key(config.train.seed), example, mesh=mesh)
  params = dict(state.params)
  params["net"] = parallel.replicate(converted.params, mesh)
  if converted.lagrange_raw is not None and "lagrange_raw" in params:
    params["lagrange_raw"] = parallel.replicate(converted.lagrange_raw, mesh)
  state = state._replace(params=params)
  with checkpoint_lib.Checkpointer(checkpoint_dir) as checkpointer:
    checkpointer.save(0, state, extra={"imported_from": str(source),
                                       "release_global_step": converted.release_step},
                      wait=True)
  run.write_config(config)
  writer_lib.write_json(run.path / IMPORT_FILE, {
      "source": str(source), "scope": converted.scope,
      "release_global_step": converted.release_step,
      "lagrange_multiplier_imported": converted.lagrange_raw is not None,
      "mapping": converted.mapping, "skipped": converted.skipped})
  return converted


