"""What every command line shares: absl's flag parser with one line for an unknown config field.

    app.run(main, flags_parser=cli.parse_flags)
"""
import importlib.util
import re
import sys

from absl import app

from hpunet_jax import config_lib, workdir


def parse_flags(argv):
  """`absl.app.run`'s flag parser, with a one-line error for an unknown config field.

  ml_collections reports `--config.model.foo=1` as a 55-line chained
  AttributeError that only says `'foo'`; this prints
  `--config.model.foo: the config has no field model.foo` and exits with 1,
  as absl does for its own flag errors. Use as
  `app.run(main, flags_parser=cli.parse_flags)`.
  """
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:
    exit_on_unknown_field(e, argv)


def _config_of_argv(argv):
  """The config the command line names (`--config=FILE[:ARG]`, else `--workdir`'s), or None."""
  values = dict(a[2:].split("=", 1) for a in argv[1:] if a.startswith("--") and "=" in a)
  try:
    if "config" in values:
      path, _, arg = values["config"].partition(".py:")
      path = path if path.endswith(".py") else path + ".py"
      spec = importlib.util.spec_from_file_location("_config_of_argv", path)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      return module.get_config(*([arg] if arg else []))
    if "workdir" in values:
      return workdir.Run(values["workdir"]).config()
  except Exception:  # pylint: disable=broad-except
    return None   # only for a better message: the field is unknown whatever the config
  return None


def unknown_field_message(error, argv):
  """The one line for an unknown `--config.<field>=` override in `argv` (see `exit_on_unknown_field`)."""
  # ml_collections names the field in quotes, then maybe 'Did you mean "x" instead of "y"?'.
  names = re.findall(r"[\"']([A-Za-z_]\w*)[\"']", str(error).replace("\\", ""))
  overrides = [a[2:].split("=", 1)[0][len("config."):] for a in argv[1:]
               if a.startswith("--config.")]
  culprits = [o for o in overrides if names and o.split(".")[-1] == names[0]]
  groups = [o for o in overrides if names and names[0] in o.split(".")[:-1]]
  if not culprits and groups:   # a group the config does not have
    parts = groups[0].split(".")
    group = ".".join(parts[:parts.index(names[0]) + 1])
    return f"--config.{groups[0]}: the config has no group {group}"
  culprit = culprits[0] if culprits else (names[0] if names else str(error))
  group, _, field = culprit.rpartition(".")
  moved = group == "model" and field in config_lib.EXECUTION_FIELDS
  moved_hint = f" (it is execution.{field}: settings that change no parameter)" if moved else ""
  if group == "model":
    config = _config_of_argv(argv)
    name = config.model.get("name", config_lib.DEFAULT_MODEL) if config is not None else None
    if name in config_lib.MODEL_NAMES:
      try:
        config_lib.check_model_fields(name, {field: None})
      except ValueError as e:
        return f"--config.{culprit}: {e}{moved_hint}"
  hint = moved_hint
  if not moved and len(names) > 1 and names[1] != field:
    hint = f" (did you mean {group + '.' if group else ''}{names[1]}?)"
  return f"--config.{culprit}: the config has no field {culprit}{hint}"


def exit_on_unknown_field(error, argv):
  """Prints the one line naming an unknown `--config.<field>=` override and exits with 1.

  `error` is the AttributeError/KeyError ml_collections raises for an unknown
  `--config.<field>=` override in `argv`: at flag parsing, or already when a
  config flag with a default file is defined (`experiments.run_flags`). A
  field of another model than the config's names both.
  """
  sys.stderr.write(f"FATAL Flags parsing error: {unknown_field_message(error, argv)}\n")
  sys.exit(1)
