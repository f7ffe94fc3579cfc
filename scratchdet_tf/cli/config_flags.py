"""The config tree as dotted absl flags: one flag per leaf (``--train.batch_size=32``).

Only the command-line layer (``scratchdet_tf/cli``) imports absl flags; the library receives the
built ``config.Config``. The flags' text form (flagfiles, ``flags.cfg``) is ``config.flagfile``.
"""

from __future__ import annotations

import sys
from typing import List, Sequence

from absl import app, flags

from scratchdet_tf import config, run_dir
from scratchdet_tf.config import flagfile


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines ``--<section>.<field>`` for every leaf of the config tree."""
    for section, name, kind, default in flagfile.leaves():
        flag = f"{section}.{name}"
        doc = f"{section}.{name} (default {flagfile.format_value(kind, default)!r})"
        if kind == "bool":
            flags.DEFINE_boolean(flag, default, doc, flag_values=flag_values)
        elif kind == "int":
            flags.DEFINE_integer(flag, default, doc, flag_values=flag_values)
        elif kind == "float":
            flags.DEFINE_float(flag, default, doc, flag_values=flag_values)
        else:  # lists and strings are parsed when the config is built, with errors naming the flag
            flags.DEFINE_string(flag, flagfile.format_value(kind, default), doc, flag_values=flag_values)


def config_from_flags(flag_values: flags.FlagValues = flags.FLAGS) -> config.Config:
    """Builds and validates the frozen config from parsed flags.

    Raises:
      config.ConfigError: naming the flag, the value and what is allowed.
    """
    values = {}
    for section, name, kind, _ in flagfile.leaves():
        value = flag_values[f"{section}.{name}"].value
        if kind not in ("int", "float", "bool"):
            value = flagfile.parse_value(kind, f"{section}.{name}", value)
        values[f"{section}.{name}"] = value
    return flagfile.build(values)


def given_config_args(flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
    """The dotted config flags given on the command line, as ``--name=value`` strings."""
    names = [f"{section}.{name}" for section, name, _, _ in flagfile.leaves()]
    return [flag_values[name].serialize() for name in names if flag_values[name].present]


def run_config(model_dir: str | None, flag_values: flags.FlagValues = flags.FLAGS) -> config.Config:
    """A run's ``config.json`` (the defaults without a run) with the config flags given on the command line.

    Every tool that works on an existing run (eval, export) builds its config here; an invalid
    override exits 1 with its message, like ``config_or_exit``.

    Raises:
      FileNotFoundError: ``model_dir`` has no config.json.
    """
    base = run_dir.load_config(model_dir) if model_dir else config.Config()
    try:
        return flagfile.apply(base, given_config_args(flag_values))
    except config.ConfigError as e:
        sys.stderr.write(f"FATAL Config error: {e}\n")
        sys.exit(1)


def parse_argv(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> List[str]:
    """An ``absl.app.run(flags_parser=...)`` parser that expands flagfiles first.

    Exits with status 1 and a one-line message for unknown flags or bad values.
    """
    try:
        return flag_values(flagfile.expand(argv))
    except (flags.Error, flagfile.FlagfileError) as e:
        sys.stderr.write(f"FATAL Flags parsing error: {e}\nPass --helpfull to see the flags.\n")
        sys.exit(1)


def config_or_exit(flag_values: flags.FlagValues = flags.FLAGS) -> config.Config:
    """``config_from_flags`` for tools: an invalid value exits 1 with its message."""
    try:
        return config_from_flags(flag_values)
    except config.ConfigError as e:
        sys.stderr.write(f"FATAL Config error: {e}\n")
        sys.exit(1)


def with_class_count(cfg: config.Config, fallback: int = 20) -> config.Config:
    """``cfg`` with ``model.num_classes`` 0 ("from the data") made concrete, for tools that only build the network
    (model_summary, benchmark): the training data's count when it can be read, else ``fallback`` (PASCAL VOC's 20),
    said on stderr."""
    if cfg.model.num_classes:
        return cfg
    from scratchdet_tf.data import class_names  # reads annotation files or TFDS metadata

    try:
        return class_names.resolve(cfg)
    except (OSError, ValueError, ImportError) as err:
        print(f"--model.num_classes=0 and the classes of {cfg.data.train_source!r} are unavailable ({err}); "
              f"counting with {fallback} classes", file=sys.stderr)
        return config.replace(cfg, model__num_classes=fallback)


def run_main(main, doc: str) -> None:
    """Runs a tool's ``main`` under ``absl.app`` with flagfile expansion (``parse_argv``).

    ``doc`` (the tool module's docstring) becomes the ``--help`` text, whichever script started the
    process (``tools/<tool>.py`` or the ``scratchdet`` command).
    """
    sys.modules["__main__"].__doc__ = doc
    app.run(main, flags_parser=parse_argv)
