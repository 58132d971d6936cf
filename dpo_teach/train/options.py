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

    Unknown keys in the file are an error naming the file and the key.
    """
    known = {field.name for field in dataclasses.fields(config_class)}
    values = {}
    if args.config is not None:
        loaded = yaml.safe_load(args.config.read_text()) or {}
        if not isinstance(loaded, dict):
            raise ValueError(f"{args.config}: expected a mapping of config fields, got {type(loaded).__name__}")
        unknown = sorted(set(loaded) - known)
        if unknown:
            raise ValueError(f"{args.config}: unknown config field(s) {unknown}; known fields: {sorted(known)}")
        types = {field.name: _type_name(field) for field in dataclasses.fields(config_class)}
        for name, value in loaded.items():
            # YAML reads 1e-6 (no dot) as a string and 1 as an int; convert both as the command line would
            if isinstance(value, str) and types[name] != "str" or isinstance(value, int) and types[name] == "float":
                try:
                    value = _PARSERS[types[name]](str(value))
                except (ValueError, argparse.ArgumentTypeError) as error:
                    raise ValueError(f"{args.config}: {name}: {error}") from None
            values[name] = value
    values.update({name: getattr(args, name) for name in known if getattr(args, name) is not None})
    return config_class(**values)
