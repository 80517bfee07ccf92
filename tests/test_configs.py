"""Every file in `configs/`: builds and validates with each argument, names itself in its errors,
and imports no other config (`configs/common.py` holds what they share)."""
import ast
import importlib
import pathlib
import re

import pytest

from hpunet_jax import config_lib

CONFIGS = pathlib.Path(__file__).resolve().parent.parent / "configs"
BLOCKS = "common"   # configs/common.py: the named blocks, not a config
NAMES = sorted(p.stem for p in CONFIGS.glob("*.py") if p.stem not in ("__init__", BLOCKS))
# The arguments each config takes besides none; every other config takes 'tiny' alone.
ARGUMENTS = {"prob_unet": ("tiny", "lidc")}


def _module(name):
  module = importlib.import_module(f"configs.{name}")
  # The checkout under test, not another one an editable install may point to.
  assert pathlib.Path(module.__file__).resolve().parent == CONFIGS, module.__file__
  return module


def test_the_configs_are_the_expected_files():
  assert set(ARGUMENTS) <= set(NAMES)
  assert {"synthetic", "prob_unet", "lidc", "lidc_knegt"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_config_builds_and_validates_with_each_argument(name):
  module = _module(name)
  command = f"python -m experiments.train --config=configs/{name}.py"
  assert command in module.__doc__, "the docstring gives the command"
  built = {}
  for arg in (None, "", *ARGUMENTS.get(name, ("tiny",))):
    config = module.get_config(arg)
    config_lib.validate(config)
    built[arg] = config.to_dict()
  assert built[None] == built[""]
  assert built["tiny"] != built[None]


@pytest.mark.parametrize("name", NAMES)
def test_a_bad_argument_names_the_requested_file_and_the_allowed_ones(name):
  allowed = ", ".join(repr(a) for a in ARGUMENTS.get(name, ("tiny",)))
  message = f"configs/{name}.py: unknown argument 'huge' (use {allowed} or nothing)"
  with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
    _module(name).get_config("huge")


def _imported_configs(path):
  """The modules of `configs` that the file at `path` imports, as 'configs.<name>'."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (a.name for a in node.names if a.name.split(".")[0] == "configs")
    elif isinstance(node, ast.ImportFrom):
      if node.level:   # a relative import from inside configs/
        base = "configs" + (f".{node.module}" if node.module else "")
      elif node.module and node.module.split(".")[0] == "configs":
        base = node.module
      else:
        continue
      yield from (base if base != "configs" else f"configs.{a.name}" for a in node.names)


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.py")), ids=lambda p: p.name)
def test_no_file_in_configs_imports_another_config(path):
  allowed = set() if path.stem == BLOCKS else {f"configs.{BLOCKS}"}
  imported = set(_imported_configs(path))
  assert imported <= allowed, f"configs/{path.name} imports {sorted(imported - allowed)}"


def test_the_import_check_sees_each_form_of_import(tmp_path):
  path = tmp_path / "x.py"
  path.write_text("import configs\nimport configs.synthetic\nfrom configs import common, lidc\n"
                  "from configs.prob_unet import get_config\nfrom . import synthetic_grid\n"
                  "from .synthetic_objects import get_config\nimport os\nfrom hpunet_jax import "
                  "config_lib\n")
  assert sorted(_imported_configs(path)) == [
      "configs", "configs.common", "configs.lidc", "configs.prob_unet", "configs.synthetic",
      "configs.synthetic_grid", "configs.synthetic_objects"]
