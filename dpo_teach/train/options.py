"""Command-line options from a config dataclass: a YAML config file, then ``--key value`` overrides.

Every field becomes ``--field-name`` with the docstring written under the field as its ``--help``
text (read from the source, so the config stays the one place that documents an option).
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
from pathlib import Path

import yaml

from dpo_teach.errors import ConfigError


def field_docs(config_class: type) -> dict[str, str]:
    """The docstring under each field of ``config_class`` and its bases, by field name."""
    docs: dict[str, str] = {}
    for klass in reversed(config_class.__mro__[:-1]):
        body = ast.parse(textwrap.dedent(inspect.getsource(klass))).body[0].body
        for statement, following in zip(body, body[1:], strict=False):
            if (
                isinstance(statement, ast.AnnAssign)
                and isinstance(statement.target, ast.Name)
                and isinstance(following, ast.Expr)
                and isinstance(following.value, ast.Constant)
                and isinstance(following.value.value, str)
            ):
                docs[statement.target.id] = " ".join(following.value.value.split())
    return docs


def _parse_bool(text: str) -> bool:
    lowered = text.lower()
    if lowered in ("true", "1", "yes"):
        return True
    if lowered in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_PARSERS = {"int": int, "float": float, "str": str, "bool": _parse_bool}


def _type_name(field: dataclasses.Field) -> str:
    return field.type if isinstance(field.type, str) else field.type.__name__


def add_config_arguments(parser: argparse.ArgumentParser, config_class: type) -> None:
    """Add ``--config FILE`` and one ``--field-name`` option per field (default: unset, so the file or the
    dataclass default applies)."""
    parser.add_argument("--config", type=Path, help="YAML file of config fields; --options below override it")
    docs = field_docs(config_class)
    group = parser.add_argument_group(f"{config_class.__name__} fields")
    for field in dataclasses.fields(config_class):
        type_name = _type_name(field)
        group.add_argument(
            f"--{field.name.replace('_', '-')}",
            dest=field.name,
            type=_PARSERS[type_name],
            default=None,
            metavar=type_name.upper(),
            help=f"{docs.get(field.name, '')} (default: {field.default})",
        )


def config_from_arguments(config_class: type, args: argparse.Namespace):
    """Build the config: dataclass defaults, then the YAML file's values, then command-line overrides.

    A string in the file is read as the command line reads the option (YAML takes ``1e-6`` for a string); any
    other value must already be of the field's type (``ConfigError`` from the config's own check). Every error
    about the file (missing, not YAML, not a mapping, an unknown key, a value of the wrong type or out of range)
    is a :class:`ConfigError` naming the file and the field.
    """
    known = {field.name for field in dataclasses.fields(config_class)}
    values = {}
    if args.config is not None:
        values = _read_config_file(args.config, config_class)
    overrides = {name: getattr(args, name) for name in known if getattr(args, name) is not None}
    try:
        return config_class(**(values | overrides))
    except ConfigError as error:
        if error.field in values and error.field not in overrides:
            raise ConfigError(f"{args.config}: {error}", error.field) from None
        raise


def _read_config_file(path: Path, config_class: type) -> dict:
    """The fields set by the YAML file ``path``, strings converted to their field's type (as on the command line)."""
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except OSError as error:
        raise ConfigError(f"--config: cannot read {path} ({error.strerror or error})", "config") from None
    except (yaml.YAMLError, UnicodeDecodeError) as error:
        raise ConfigError(f"{path}: not a YAML file of config fields ({' '.join(str(error).split())})") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of config fields, got {type(loaded).__name__}")
    types = {field.name: _type_name(field) for field in dataclasses.fields(config_class)}
    unknown = sorted(set(loaded) - set(types), key=str)
    if unknown:
        raise ConfigError(f"{path}: unknown config field(s) {unknown}; known fields: {sorted(types)}")
    values = {}
    for name, value in loaded.items():
        if isinstance(value, str) and types[name] != "str":
            try:
                value = _PARSERS[types[name]](value)
            except (ValueError, argparse.ArgumentTypeError) as error:
                raise ConfigError(f"{path}: {name}: {error}", name) from None
        elif type(value) is int and types[name] == "float":
            value = float(value)  # YAML's 1 for a float field: kept as the float the field holds
        values[name] = value
    return values
