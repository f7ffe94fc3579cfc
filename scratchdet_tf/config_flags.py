"""The config tree as dotted absl flags: one flag per leaf (``--train.batch_size=32``).

Only ``tools/`` use this module; the library receives the built ``config.Config``.
Flagfiles may include others with ``--flagfile=``; a relative include is resolved
against the including file's folder first, then the working directory, so configs
run from any folder. The last occurrence of a flag wins.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
import typing
from typing import List, Sequence

from absl import flags

from scratchdet_tf import config


def _leaf_kind(type_hint) -> str:
    """'int' | 'float' | 'bool' | 'str' | 'ints' | 'floats' | 'strs' | 'float_levels'."""
    if type_hint in (int, float, bool, str):
        return type_hint.__name__
    args = typing.get_args(type_hint)
    inner = args[0]
    if typing.get_origin(inner) is tuple:
        return "float_levels"
    return {int: "ints", float: "floats", str: "strs"}[inner]


def _leaves():
    """Yields (section_name, field_name, kind, default) for every leaf of ``config.Config``."""
    for section in dataclasses.fields(config.Config):
        cls = section.default_factory
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            default = field.default if field.default is not dataclasses.MISSING else field.default_factory()
            yield section.name, field.name, _leaf_kind(hints[field.name]), default


def format_value(kind: str, value) -> str:
    """A leaf value as it is written on a command line."""
    if kind == "bool":
        return "true" if value else "false"
    if kind == "float_levels":
        return ";".join(",".join(f"{r:g}" for r in level) for level in value)
    if kind in ("ints", "floats", "strs"):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    if kind == "float":
        return repr(float(value))
    return str(value)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines ``--<section>.<field>`` for every leaf of the config tree."""
    for section, name, kind, default in _leaves():
        flag = f"{section}.{name}"
        doc = f"{section}.{name} (default {format_value(kind, default)!r})"
        if kind == "bool":
            flags.DEFINE_boolean(flag, default, doc, flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(flag, default, doc, flag_values=flag_values)
        elif kind == "float":
            flags.DEFINE_float(flag, default, doc, flag_values=flag_values)
        else:  # lists and strings are parsed when the config is built, with errors naming the flag
            flags.DEFINE_string(flag, format_value(kind, default), doc, flag_values=flag_values)


def _parse(kind: str, flag: str, text: str):
    def numbers(part: str, cast):
        items = [s.strip() for s in part.split(",") if s.strip()]
        try:
            return tuple(cast(s) for s in items)
        except ValueError:
            raise config.ConfigError(f"--{flag}={text} is invalid: expected comma-separated numbers") from None

    if kind == "str":
        return text
    if kind == "strs":
        return tuple(s.strip() for s in text.split(",") if s.strip())
    if kind == "ints":
        return numbers(text, int)
    if kind == "floats":
        return numbers(text, float)
    if kind == "float_levels":
        return tuple(numbers(level, float) for level in text.split(";")) if text.strip() else ()
    raise AssertionError(kind)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config.Config:
    """Builds and validates the frozen config from parsed flags.

    Raises:
      config.ConfigError: naming the flag, the value and what is allowed.
    """
    sections: dict = {}
    for section, name, kind, _ in _leaves():
        value = flag_values[f"{section}.{name}"].value
        if kind not in ("int", "float", "bool"):
            value = _parse(kind, f"{section}.{name}", value)
        sections.setdefault(section, {})[name] = value
    built = {}
    for field in dataclasses.fields(config.Config):
        try:
            built[field.name] = field.default_factory(**sections[field.name])
        except TypeError as e:  # e.g. a string where a number belongs
            raise config.ConfigError(f"section {field.name}: {e}") from None
    return config.Config(**built)


def flagfile_text(cfg: config.Config) -> str:
    """A complete, re-runnable flagfile for ``cfg`` (every leaf, no includes)."""
    lines = ["# Written by scratchdet-tf; re-run with --flagfile=<this file>."]
    as_dict = dataclasses.asdict(cfg)
    for section, name, kind, _ in _leaves():
        lines.append(f"--{section}.{name}={format_value(kind, as_dict[section][name])}")
    return "\n".join(lines) + "\n"


def write_run_files(cfg: config.Config, model_dir: str) -> None:
    """Writes ``config.json`` and the re-runnable ``flags.cfg`` into ``model_dir``."""
    os.makedirs(model_dir, exist_ok=True)
    with open(os.path.join(model_dir, "config.json"), "w") as f:
        json.dump(config.to_dict(cfg), f, indent=2)
        f.write("\n")
    with open(os.path.join(model_dir, "flags.cfg"), "w") as f:
        f.write(flagfile_text(cfg))


def expand_flagfiles(argv: Sequence[str], _seen: tuple = ()) -> List[str]:
    """Replaces every ``--flagfile=F`` by F's flags, recursively, in place.

    Relative includes inside a flagfile resolve against that file's folder first.

    Raises:
      flags.Error: for a missing file or an include cycle, naming the file.
    """
    out: List[str] = []
    args = list(argv)
    i = 0
    while i < len(args):
        arg = args[i]
        path = None
        if arg.startswith(("--flagfile=", "-flagfile=")):
            path = arg.split("=", 1)[1].strip()
        elif arg in ("--flagfile", "-flagfile"):
            if i + 1 == len(args):
                raise flags.Error("--flagfile needs a file name")
            path = args[i + 1]
            i += 1
        if path is None:
            out.append(arg)
        else:
            out.extend(_read_flagfile(os.path.expanduser(path), _seen))
        i += 1
    return out


def _read_flagfile(path: str, seen: tuple, including_dir: str = "") -> List[str]:
    candidates = [path] if os.path.isabs(path) else [os.path.join(including_dir, path), path]
    found = next((c for c in candidates if c and os.path.isfile(c)), None)
    if found is None:
        raise flags.Error(f"flagfile not found: {path!r} (looked at {', '.join(dict.fromkeys(candidates))})")
    real = os.path.realpath(found)
    if real in seen:
        raise flags.Error(f"flagfile include cycle: {' -> '.join(seen + (real,))}")
    lines = []
    with open(found) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", "//")):
                continue
            if line.startswith(("--flagfile=", "-flagfile=")):
                nested = os.path.expanduser(line.split("=", 1)[1].strip())
                lines.extend(_read_flagfile(nested, seen + (real,), os.path.dirname(found)))
            else:
                lines.append(line)
    return lines


def parse_argv(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
    """An ``absl.app.run(flags_parser=...)`` parser that expands flagfiles first.

    Exits with status 1 and a one-line message for unknown flags or bad values.
    """
    try:
        return flag_values(expand_flagfiles(argv))
    except flags.Error as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpfull to see the flags.\n")
        sys.exit(1)


def config_or_exit(flag_values: flags.FlagValues = flags.FLAGS) -> config.Config:
    """``config_from_flags`` for tools: an invalid value exits 1 with its message."""
    try:
        return config_from_flags(flag_values)
    except config.ConfigError as e:
        sys.stderr.write(f"FATAL Config error: {e}\n")
        sys.exit(1)
