"""The one config loader of every command: `--config FILE[:VARIANTS]` and `--config.FIELD=VALUE`.

pavad-train, pavad-sweep, pavad-occ and pavad-gen (run, gvvad) all read their configs here, so a
config file, a variant list and an override mean the same thing everywhere:

  --config configs/synthetic.py:runlocal,urdmu    get_config("runlocal,urdmu") of that file
  --config.train.steps=20  /  --config.train.steps 20
                                                  a Python literal (20, 1e-3, (64, 128), True),
                                                  true/false, or else the text as a string

Errors are one line naming the file, the field and what to do (ConfigError). This module imports
only ml_collections, so a command that merely reads a config starts instantly and the
generation side (no JAX) can use it.
"""
from __future__ import annotations

import ast
import importlib.util
import pathlib
from typing import Iterable, Sequence

import ml_collections

PREFIX = "--config."

# What each kind of config file holds (its top-level sections) and the command that runs it.
KINDS = {
    "sweep": ({"sweep", "model", "train"}, "pavad-sweep --config FILE --workdir W"),
    "train": ({"data", "model", "loss", "train"}, "pavad-train --config FILE --workdir W"),
    "occ": ({"spatial", "temporal", "disc"}, "pavad-occ train --config FILE --workdir W"),
    "generation": ({"select", "synthesize", "extract"}, "pavad-gen run --config FILE --workdir W"),
    "gvvad generation": ({"describe", "t2v"}, "pavad-gen gvvad --config FILE --workdir W"),
}


class ConfigError(ValueError):
    """A config file, variant or field the command cannot use; the message names it."""


def parse_variants(arg: str | None, known: set[str]) -> set[str]:
    """'runlocal,urdmu' -> {'runlocal', 'urdmu'}; an unknown word is an error naming the choices."""
    words = {w.strip() for w in (arg or "").split(",") if w.strip()}
    unknown = words - set(known)
    if unknown:
        raise ConfigError(f"unknown config variant(s) {sorted(unknown)}; choose from {sorted(known)}")
    return words


def load_config_file(path: str | pathlib.Path, arg: str | None = None) -> ml_collections.ConfigDict:
    """get_config(arg) of one config file (how a sweep config starts from a training config)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    spec = importlib.util.spec_from_file_location(f"pavad_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        raise ConfigError(f"{path}: not a valid Python file (line {e.lineno}: {e.msg})") from None
    if not callable(getattr(module, "get_config", None)):
        raise ConfigError(f"{path}: a config file must define get_config(arg=None)")
    try:
        config = module.get_config(arg or None)
    except ValueError as e:  # configs reject unknown variants with a ValueError
        raise ConfigError(f"{path}: {e}") from None
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"{path}: get_config returned {type(config).__name__}, expected an ml_collections.ConfigDict")
    return config


def kind_of(config: ml_collections.ConfigDict) -> str | None:
    """Which kind of config this is (a key of KINDS), or None."""
    keys = set(config.keys())
    for kind, (sections, _) in KINDS.items():
        if sections <= keys:
            return kind
    return None


def check_kind(config: ml_collections.ConfigDict, path: str, command: str, expected: str) -> None:
    """A config of another kind is an error that names the command to run it with."""
    kind = kind_of(config)
    if kind == expected:
        return
    if kind is None:
        sections = sorted(KINDS[expected][0])
        raise ConfigError(f"{path} is not a {expected} config: {command} needs the sections {sections}, "
                          f"the file has {sorted(config.keys())}")
    usage = KINDS[kind][1].replace("FILE", path)
    raise ConfigError(f"{path} is a {kind} config, not a {expected} config for {command}: run `{usage}`")


def _literal(raw: str):
    """A Python literal, true/false, or else the text itself."""
    if raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw  # a bare string such as a path


def parse_overrides(tokens: Iterable[str]) -> dict[str, object]:
    """`--config.a.b=v` / `--config.a.b v` tokens -> {"a.b": value}; anything else is an error."""
    overrides, tokens = {}, list(tokens)
    while tokens:
        token = tokens.pop(0)
        if not token.startswith(PREFIX):
            raise ConfigError(f"unexpected argument {token!r} (config overrides look like --config.SECTION.FIELD=VALUE)")
        key, eq, raw = token[len(PREFIX):].partition("=")
        if not eq:
            if not tokens or tokens[0].startswith("--"):
                raise ConfigError(f"{token}: missing value (write {token}=VALUE)")
            raw = tokens.pop(0)
        if not key:
            raise ConfigError(f"{token}: no field name after --config.")
        overrides[key] = _literal(raw)
    return overrides


def apply_overrides(config: ml_collections.ConfigDict, overrides: Iterable[str] | dict, source: str = "the config"
                    ) -> ml_collections.ConfigDict:
    """Sets every override on `config` (in place); an unknown field or a wrong type names it."""
    parsed = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
    for dotted, value in parsed.items():
        *parents, field = dotted.split(".")
        node = config
        for depth, name in enumerate(parents):
            if not isinstance(node, ml_collections.ConfigDict) or name not in node:
                where = ".".join(parents[:depth + 1])
                raise ConfigError(f"{source}: --config.{dotted}: no section {where!r} in the config")
            node = node[name]
        if not isinstance(node, ml_collections.ConfigDict) or field not in node:
            close = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ConfigError(f"{source}: --config.{dotted}: no such field"
                              + (f"; {'.'.join(parents) or 'the config'} has {close}" if close else ""))
        current = node[field]
        if isinstance(current, tuple) and isinstance(value, list):
            value = tuple(value)
        if isinstance(current, tuple) and not isinstance(value, tuple):
            value = (value,)
        try:
            node[field] = value
        except TypeError as e:  # ConfigDict refuses a type change (an int into a float field is fine)
            raise ConfigError(f"{source}: --config.{dotted}={value!r}: {e}") from None
    return config


def load_config(spec: str, overrides: Sequence[str] | dict = (), *, command: str | None = None,
                expected: str | None = None) -> ml_collections.ConfigDict:
    """The config of `--config spec` with its overrides; with `expected`, also its kind checked."""
    if not spec:
        raise ConfigError("--config is required: a config file such as configs/synthetic.py[:variant]")
    path, _, arg = spec.partition(":")
    config = load_config_file(path, arg or None)
    if expected is not None:
        check_kind(config, path, command or "this command", expected)
    return apply_overrides(config, overrides, source=path)


def split_config_args(argv: Sequence[str]) -> tuple[list[str], list[str]]:
    """(other arguments, --config.* override tokens) of a command line."""
    rest, overrides, argv = [], [], list(argv)
    while argv:
        token = argv.pop(0)
        if token.startswith(PREFIX):
            overrides.append(token)
            if "=" not in token and argv and not argv[0].startswith("--"):
                overrides.append(argv.pop(0))
        else:
            rest.append(token)
    return rest, overrides
