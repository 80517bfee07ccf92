"""The package's layers: every import points down, and the model loads alone."""
import ast
import pathlib

from conftest import run_python
import hpunet_jax

PACKAGE = pathlib.Path(hpunet_jax.__file__).parent
# Bottom to top; a module may import its own layer and those below it.
LAYERS = ("infra", "model", "objective", "data", "config_lib", "workdir", "evaluation", "training",
          "release")


def _layer(module: str) -> str | None:
  parts = module.split(".")
  if parts[0] != "hpunet_jax" or len(parts) < 2:
    return None
  return parts[1]


def _imports(path):
  tree = ast.parse(path.read_text())
  for node in ast.walk(tree):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
      if node.module == "hpunet_jax":
        yield from (f"hpunet_jax.{alias.name}" for alias in node.names)
      else:
        yield node.module


def test_every_package_folder_is_a_layer():
  folders = {p.name for p in PACKAGE.iterdir() if p.is_dir() and (p / "__init__.py").exists()}
  modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
  assert folders | modules == set(LAYERS)


def test_every_import_points_down_a_layer():
  upward = []
  for path in sorted(PACKAGE.rglob("*.py")):
    relative = path.relative_to(PACKAGE)
    if relative == pathlib.Path("__init__.py"):
      continue
    own = relative.parts[0].removesuffix(".py")
    for module in _imports(path):
      target = _layer(module)
      if target is not None and LAYERS.index(target) > LAYERS.index(own):
        upward.append(f"{relative} imports {module}")
  assert not upward, "\n".join(upward)


def test_release_never_imports_the_training_loop():
  for path in (PACKAGE / "release").glob("*.py"):
    assert not any(m.startswith(("hpunet_jax.training.loop", "hpunet_jax.training.run"))
                   for m in _imports(path)), path


def test_model_and_sampling_load_no_data_training_or_io_library():
  code = """
import sys
import jax, jax.numpy as jnp
import hpunet_jax
config = hpunet_jax.HPUNetConfig(channels_per_block=(4, 8), latent_dims=(1,))
model = hpunet_jax.make_model(config)
images = jnp.zeros((1, 8, 8, 1))
params = model.init(jax.random.key(0), images, jnp.zeros((1, 8, 8, 2)))
model.sample(params, jax.random.key(1), images, num_samples=2)
heavy = ("grain", "tensorflow_datasets", "tensorboardX", "orbax", "optax", "ml_collections")
print(",".join(sorted(m for m in heavy if m in sys.modules)))
"""
  proc = run_python("-c", code, cwd=PACKAGE.parent, timeout=300)
  assert proc.stdout.strip() == "", f"loaded: {proc.stdout.strip()}"


def test_dataset_progress_lines_do_not_load_tensorboardx():
  code = """
import sys
from hpunet_jax.data import synthetic
print("tensorboardX" in sys.modules)
"""
  proc = run_python("-c", code, cwd=PACKAGE.parent, timeout=300)
  assert proc.stdout.strip() == "False"


def test_training_names_stay_importable_from_the_package():
  from hpunet_jax.training import state   # pylint: disable=g-import-not-at-top
  assert hpunet_jax.create_train_state is state.create_train_state
  assert hpunet_jax.make_train_step is state.make_train_step
  assert hpunet_jax.TrainState is state.TrainState
  assert hpunet_jax.parallel.make_mesh
  assert hpunet_jax.config_lib.base_config


def test_no_model_module_imports_another_and_each_is_registered():
  from hpunet_jax.model import registry   # pylint: disable=g-import-not-at-top
  model_modules = {spec.build.__module__ for spec in registry.MODELS.values()}
  assert model_modules == {"hpunet_jax.model.hpunet", "hpunet_jax.model.prob_unet"}
  for module in model_modules:
    path = PACKAGE / "model" / (module.rsplit(".", 1)[1] + ".py")
    imported = set(_imports(path))
    imported |= {f"hpunet_jax.model.{name}" for name in _model_names_imported(path)}
    others = (model_modules - {module}) | {"hpunet_jax.model.registry"}
    assert not imported & others, f"{path.name} imports {imported & others}"
  # Every registered model's config class is what `name_of` finds, and builds.
  for name, spec in registry.MODELS.items():
    assert registry.name_of(spec.config_cls()) == name


def _model_names_imported(path):
  """`from hpunet_jax.model import x, y` -> x, y."""
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.ImportFrom) and node.module == "hpunet_jax.model":
      yield from (alias.name for alias in node.names)
