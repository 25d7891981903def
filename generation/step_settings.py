"""One Settings dataclass per generation step: its function's argument, its flags, its config section.

A step declares its parameters once, as dataclass fields made with `setting(default, help)`.
Then

* `add_flags(parser, Settings)` adds one flag a field (``top_k`` -> ``--top-k``; the type,
  choices and help from the field; booleans get ``--x/--no-x``; tuples take several values);
* `from_args(Settings, args)` builds the settings from parsed flags (unset flags keep the
  defaults, or those of `base`);
* `from_section(Settings, section, where)` builds them from a config section (a ConfigDict
  or dict), naming the section and field when a field is unknown;

and the step's ``run_<step>(settings, ...)`` takes the settings. So a parameter has one
name, one default and one help text wherever it is set.
"""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any

_NONE = type(None)


def setting(default: Any, help: str, *, choices: tuple | None = None, flag: str | None = None) -> Any:
    """A dataclass field with the help text (and optional choices / flag name) of its flag."""
    return dataclasses.field(default=default, metadata={"help": help, "choices": choices, "flag": flag})


def _flag_type(hint) -> tuple[type, Any]:
    """(element type, nargs) of a field's type hint: `int | None` -> (int, None), `tuple[str, ...]` -> (str, "+")."""
    args = [a for a in typing.get_args(hint) if a is not _NONE]
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return _flag_type(args[0])
    if typing.get_origin(hint) is tuple:
        return args[0], ("+" if Ellipsis in typing.get_args(hint) else len(args))
    return hint, None


def add_flags(parser: argparse.ArgumentParser, cls: type, *, title: str | None = None) -> None:
    """Add a flag for every field of the settings dataclass `cls` (default None: "not given")."""
    group = parser.add_argument_group(title or f"settings ({cls.__name__}; also config fields)")
    hints = typing.get_type_hints(cls)
    for field in dataclasses.fields(cls):
        meta = field.metadata
        flag = meta.get("flag") or f"--{field.name.replace('_', '-')}"
        kind, nargs = _flag_type(hints[field.name])
        text = meta.get("help", "") + ("" if field.default is None else f" (default: {_show(field.default)})")
        text = text.replace("%", "%%")  # argparse formats help strings
        if kind is bool:
            group.add_argument(flag, dest=field.name, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            group.add_argument(flag, dest=field.name, type=kind, nargs=nargs, choices=meta.get("choices"),
                               default=None, help=text)


def _show(value: Any) -> str:
    """A default as the help text shows it."""
    if isinstance(value, tuple):
        return " ".join(map(str, value)) or "none"
    return repr(value) if isinstance(value, str) else str(value)


def from_args(cls: type, args: argparse.Namespace, base: Any = None):
    """Settings from parsed flags: the flags that were given, on top of `base` (default: cls())."""
    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if getattr(args, f.name, None) is not None}
    return _checked(dataclasses.replace(base if base is not None else cls(), **_tuples(given)))


def from_section(cls: type, section: Mapping | None, where: str, base: Any = None):
    """Settings from a config section (on top of `base`); a field the settings lack is an error naming it."""
    values = dict(section.to_dict() if hasattr(section, "to_dict") else section or {})
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"config section '{where}': unknown fields {unknown} (known: {sorted(known)})")
    return _checked(dataclasses.replace(base if base is not None else cls(), **_tuples(values)))


def _tuples(values: dict) -> dict:
    """Lists (from flags with several values, or configs) as tuples, the fields' type."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _checked(settings):
    """Run the settings' own check(), if they have one, and return them."""
    check = getattr(settings, "check", None)
    if check is not None:
        check()
    return settings
