"""The config as text: one ``--section.name=value`` line per leaf, as flagfiles and ``flags.cfg`` hold it.

No absl here: the command-line tools define absl flags from ``leaves()`` (``cli/config_flags.py``), and the
library builds configs from flag text with ``parse`` (e.g. the ablation grid's cell flagfiles).
A flagfile may include others with ``--flagfile=``; a relative include resolves against the
including file's folder first, then the working directory. The last occurrence of a flag wins.
"""

from __future__ import annotations

import dataclasses
import os
import typing
from typing import Dict, Iterator, List, Sequence, Tuple

from scratchdet_tf import config


class FlagfileError(config.ConfigError):
    """A missing flagfile, an include cycle, or a line that is not a known ``--section.name=value``."""


def _leaf_kind(type_hint) -> str:
    """'int' | 'float' | 'bool' | 'str' | 'ints' | 'floats' | 'strs' | 'float_levels'."""
    if type_hint in (int, float, bool, str):
        return type_hint.__name__
    inner = typing.get_args(type_hint)[0]
    if typing.get_origin(inner) is tuple:
        return "float_levels"
    return {int: "ints", float: "floats", str: "strs"}[inner]


def leaves() -> Iterator[Tuple[str, str, str, object]]:
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


def parse_value(kind: str, flag: str, text: str):
    """A leaf value from its command-line text.

    Raises:
      config.ConfigError: naming the flag and the text.
    """
    def numbers(part: str, cast):
        items = [s.strip() for s in part.split(",") if s.strip()]
        try:
            return tuple(cast(s) for s in items)
        except ValueError:
            raise config.ConfigError(f"--{flag}={text} is invalid: expected comma-separated numbers") from None

    def number(cast):
        try:
            return cast(text)
        except ValueError:
            raise config.ConfigError(f"--{flag}={text} is invalid: expected {cast.__name__}") from None

    if kind == "bool":
        lowered = text.strip().lower()
        if lowered not in ("true", "t", "1", "false", "f", "0"):  # what absl accepts
            raise config.ConfigError(f"--{flag}={text} is invalid: expected true or false")
        return lowered in ("true", "t", "1")
    if kind == "int":
        return number(int)
    if kind == "float":
        return number(float)
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


def build(values: Dict[str, object]) -> config.Config:
    """The validated config from one value per dotted leaf name (``{"train.batch_size": 32, ...}``).

    Raises:
      config.ConfigError: naming the section or flag, the value and what is allowed.
    """
    sections: dict = {}
    for section, name, _, _ in leaves():
        sections.setdefault(section, {})[name] = values[f"{section}.{name}"]
    built = {}
    for field in dataclasses.fields(config.Config):
        try:
            built[field.name] = field.default_factory(**sections[field.name])
        except TypeError as e:  # e.g. a string where a number belongs
            raise config.ConfigError(f"section {field.name}: {e}") from None
    return config.Config(**built)


def text(cfg: config.Config) -> str:
    """A complete, re-runnable flagfile for ``cfg`` (every leaf, no includes)."""
    lines = ["# Written by scratchdet-tf; re-run with --flagfile=<this file>."]
    as_dict = dataclasses.asdict(cfg)
    for section, name, kind, _ in leaves():
        lines.append(f"--{section}.{name}={format_value(kind, as_dict[section][name])}")
    return "\n".join(lines) + "\n"


def apply(cfg: config.Config, args: Sequence[str]) -> config.Config:
    """``cfg`` with ``--section.name=value`` arguments (and ``--flagfile=F`` includes) applied in order.

    Booleans may also be given as ``--section.name`` / ``--nosection.name``. The last occurrence wins.

    Raises:
      FlagfileError: a missing flagfile or a line that is not a known config flag, naming it.
      config.ConfigError: an invalid value, naming the flag.
    """
    kinds = {f"{section}.{name}": kind for section, name, kind, _ in leaves()}
    as_dict = dataclasses.asdict(cfg)
    values = {flag: as_dict[flag.split(".")[0]][flag.split(".")[1]] for flag in kinds}
    for arg in expand(args):
        name, has_value, raw = arg.lstrip("-").partition("=")
        if not has_value and name.startswith("no") and kinds.get(name[2:]) == "bool":
            name, raw = name[2:], "false"
        elif not has_value and kinds.get(name) == "bool":
            raw = "true"
        if name not in kinds or not has_value and kinds[name] != "bool" or not arg.startswith("-"):
            raise FlagfileError(f"{arg!r} is not a config flag (--section.name=value)")
        values[name] = parse_value(kinds[name], name, raw)
    return build(values)


def parse(args: Sequence[str]) -> config.Config:
    """The config of flag arguments over the defaults: ``parse(["--flagfile=configs/x.cfg", "--train.seed=1"])``."""
    return apply(config.Config(), args)


def expand(argv: Sequence[str], _seen: tuple = ()) -> List[str]:
    """Replaces every ``--flagfile=F`` by F's flags, recursively, in place.

    Relative includes inside a flagfile resolve against that file's folder first.

    Raises:
      FlagfileError: for a missing file or an include cycle, naming the file.
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
                raise FlagfileError("--flagfile needs a file name")
            path = args[i + 1]
            i += 1
        if path is None:
            out.append(arg)
        else:
            out.extend(_read(os.path.expanduser(path), _seen))
        i += 1
    return out


def _read(path: str, seen: tuple, including_dir: str = "") -> List[str]:
    candidates = [path] if os.path.isabs(path) else [os.path.join(including_dir, path), path]
    found = next((c for c in candidates if c and os.path.isfile(c)), None)
    if found is None:
        raise FlagfileError(f"flagfile not found: {path!r} (looked at {', '.join(dict.fromkeys(candidates))})")
    real = os.path.realpath(found)
    if real in seen:
        raise FlagfileError(f"flagfile include cycle: {' -> '.join(seen + (real,))}")
    lines = []
    with open(found) as f:
        for raw in f:
            line = raw.strip()
            if not line or line.startswith(("#", "//")):
                continue
            if line.startswith(("--flagfile=", "-flagfile=")):
                nested = os.path.expanduser(line.split("=", 1)[1].strip())
                lines.extend(_read(nested, seen + (real,), os.path.dirname(found)))
            else:
                lines.append(line)
    return lines
