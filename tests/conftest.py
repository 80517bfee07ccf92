"""What the tests share: the tiny experiment config, the way to run a tool, the built datasets.

`tests/` is on `sys.path` under pytest (and for `tests/parallel_worker.py`,
which imports this module directly).
"""
import importlib
import os
import queue
import subprocess
import sys
import threading
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:   # parallel_worker.py runs as a script from tests/
  sys.path.insert(0, ROOT)

from hpunet_jax import config_lib  # pylint: disable=g-import-not-at-top,wrong-import-position


def tiny_config(**model):
  """The base config shrunk to compile in seconds: 16x16 crops, three levels, batch 8.

  `model` overrides fields of the model group (e.g. two levels where a test
  needs them).
  """
  config = config_lib.base_config()
  config.model.channels_per_block = (4, 8, 8)
  config.model.latent_dims = (2, 1)
  config.model.blocks_per_level = 1
  config.model.convs_per_block = 2
  config.model.update(model)
  config.data.crop_size = 16
  config.train.batch_size = 8
  return config


# --- running the command-line tools ---------------------------------------------------------

# jax's persistent compilation cache for every tool a test starts, in a folder of the session:
# the tools compile the same tiny networks again and again. JAX_ENABLE_COMPILATION_CACHE=false
# in the environment turns it off.
_COMPILATION_CACHE = {}


@pytest.fixture(scope="session", autouse=True)
def _compilation_cache(tmp_path_factory):
  _COMPILATION_CACHE.update(
      JAX_COMPILATION_CACHE_DIR=str(tmp_path_factory.mktemp("jax_cache")),
      JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0",     # every computation,
      JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES="-1")     # however small


def cli_env(**extra):
  """The environment a tool under test runs in: CPU only, one device (no XLA_FLAGS from the
  caller), unbuffered output so line waits see each line, the session's compilation cache;
  `extra` set on top."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **_COMPILATION_CACHE)
  env.pop("XLA_FLAGS", None)
  env.update(extra)
  return env


def run_python(*argv, timeout=600, check=True, env=None, cwd=ROOT):
  """`python *argv` in `cwd` (the repository root) under `cli_env(**env)`; output captured.

  With `check`, a non-zero exit fails the test with the ends of both streams.
  """
  proc = subprocess.run([sys.executable, *argv], cwd=cwd, env=cli_env(**(env or {})),
                        capture_output=True, text=True, timeout=timeout)
  if check and proc.returncode != 0:
    command = " ".join(str(a)[:60] for a in argv[:2])
    raise AssertionError(f"python {command} failed ({proc.returncode}):\n"
                         f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
  return proc


def run_cli(module, *args, timeout=600, check=True, env=None, cwd=ROOT):
  """`python -m module *args`, as `run_python` runs it."""
  return run_python("-m", module, *args, timeout=timeout, check=check, env=env, cwd=cwd)


class Started:
  """A tool running in the background; a thread reads its merged output, so every wait is
  bounded. `proc` is the `subprocess.Popen`, `lines` the output read so far."""

  def __init__(self, argv, env=None, cwd=ROOT):
    self.proc = subprocess.Popen([sys.executable, *argv], cwd=cwd, env=cli_env(**(env or {})),
                                 stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    self.lines, self._queue = [], queue.Queue()
    threading.Thread(target=self._read, daemon=True).start()

  def _read(self):
    for line in self.proc.stdout:
      self._queue.put(line)
    self._queue.put(None)

  def wait_for(self, text, timeout=240):
    """Returns once a line contains `text`; fails if the process ends or time runs out."""
    deadline = time.time() + timeout
    while True:
      try:
        line = self._queue.get(timeout=max(0.0, deadline - time.time()))
      except queue.Empty:
        raise AssertionError(f"no line with {text!r} after {timeout}s:\n"
                             + "".join(self.lines[-40:])) from None
      if line is None:
        raise AssertionError(f"process ended before a line with {text!r}:\n"
                             + "".join(self.lines[-40:]))
      self.lines.append(line)
      if text in line:
        return line

  def rest(self, timeout=240):
    """Waits for the end (at most `timeout` seconds); the whole output."""
    self.proc.wait(timeout=timeout)
    while (line := self._queue.get(timeout=timeout)) is not None:
      self.lines.append(line)
    return "".join(self.lines)

  def kill(self):
    """SIGKILL unless it has ended; waits for it."""
    if self.proc.poll() is None:
      self.proc.kill()
    self.proc.wait(timeout=60)


def start_cli(module, *args, env=None, cwd=ROOT):
  """`python -m module *args` in the background, under `cli_env(**env)`."""
  return Started(["-m", module, *args], env=env, cwd=cwd)


# --- datasets built once per session ----------------------------------------------------------

def _prepared(tmp_path_factory, config_module):
  """A fresh folder with the data of `configs/<config_module>.py:tiny` built in it."""
  from hpunet_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f"configs.{config_module}").get_config("tiny")
  config.data.data_dir = str(tmp_path_factory.mktemp(f"tfds_{config_module}"))
  pipeline.prepare(config.data)
  return config.data.data_dir


# Shared by every test that only reads them: a test that builds, damages or races on its
# data builds its own in tmp_path.
@pytest.fixture(scope="session")
def synthetic_data_dir(tmp_path_factory):
  """A data_dir with `synthetic_multiscale/small` (`configs/synthetic.py:tiny`) built."""
  return _prepared(tmp_path_factory, "synthetic")


@pytest.fixture(scope="session")
def objects_data_dir(tmp_path_factory):
  """A data_dir with `synthetic_objects/small` (`configs/synthetic_objects.py:tiny`) built."""
  return _prepared(tmp_path_factory, "synthetic_objects")


@pytest.fixture(scope="session")
def grid_data_dir(tmp_path_factory):
  """A data_dir with `synthetic_grid/small` (`configs/synthetic_grid.py:tiny`) built."""
  return _prepared(tmp_path_factory, "synthetic_grid")
