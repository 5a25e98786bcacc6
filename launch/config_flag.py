"""The launchers' flag parser: absl's own, except that a bad `--config` override or config file ends in one line.

`app.run(main, flags_parser=config_flag.parse_flags)`. ml_collections raises a bare AttributeError / KeyError
(a traceback of some 50 lines) for an override of a key the config does not have; here that becomes

  error: unknown config key 'gan.foo' (--config.gan.foo=1): config.gan has no 'foo'; its keys: ada_interval, ...

and an exception inside the config file's get_config (e.g. an unknown variant) becomes its last line.
"""
import difflib
import importlib.util
import sys

from absl import flags
from ml_collections import config_dict


def _config_argument(argv: list[str], name: str) -> str | None:
  """The value of --<name>=X or --<name> X in argv."""
  for i, arg in enumerate(argv):
    if arg.startswith(f'--{name}='):
      return arg.split('=', 1)[1]
    if arg == f'--{name}' and i + 1 < len(argv):
      return argv[i + 1]
  return None


def _load_config(path: str):
  """get_config(arg) of the config file `path[:arg]`, loaded as config_flags loads it."""
  file, *arg = path.split(':', 1)
  spec = importlib.util.spec_from_file_location('stylex_config_check', file)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(*arg)


def _overrides(argv: list[str], name: str) -> list[tuple[str, str]]:
  """[(dotted key, the argument)] of every --<name>.<key>[=value] / --no<name>.<key> in argv, in order."""
  out = []
  for arg in argv:
    for prefix in (f'--{name}.', f'--no{name}.'):
      if arg.startswith(prefix):
        out.append((arg[len(prefix):].split('=', 1)[0], arg))
  return out


def unknown_key_message(argv: list[str], name: str = 'config') -> str | None:
  """One line naming the first override of a key the config file does not have, and the keys of its group; None
    when every override names an existing key (or the config file cannot be loaded here)."""
  path = _config_argument(argv, name)
  if path is None:
    return None
  try:
    config = _load_config(path)
  except Exception:  # noqa: BLE001  (the file's own error is reported by absl)
    return None
  for key, arg in _overrides(argv, name):
    node, parts = config, key.split('.')
    for i, part in enumerate(parts):
      group = '.'.join([name] + parts[:i])
      if not isinstance(node, (config_dict.ConfigDict, dict)):
        return f'{group} is a value, not a group: {arg} cannot set {part!r} inside it'
      if part not in node:
        keys = sorted(node.keys())
        close = difflib.get_close_matches(part, keys, n=1)
        hint = f' (did you mean {".".join(parts[:i] + close)!r}?)' if close else ''
        return (f"unknown config key {key!r} ({arg}): {group} has no {part!r}{hint}; its keys: {', '.join(keys)}")
      node = node[part]
  return None


def parse_flags(argv: list[str]) -> list[str]:
  """absl's flag parsing (for app.run's flags_parser) with one-line errors for bad config overrides and files."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    text = str(e)
    if 'Error whilst parsing config file' in text:  # the traceback of get_config: its last line says what is wrong
      text = [line.strip() for line in text.splitlines() if line.strip()][-1]
    sys.exit(f'FATAL Flags parsing error: {text}\nPass --helpshort or --helpfull to see help on flags.')
  except (AttributeError, KeyError, TypeError, ValueError) as e:  # ml_collections on an unknown key, bare
    sys.exit(f'error: {unknown_key_message(argv) or " ".join(str(e).split())}')
