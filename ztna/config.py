"""TOML configuration with errors a person can act on.

Each role describes its section as a dataclass; ``load`` checks types, fills
defaults and rejects unknown keys (a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import tomllib
import typing
from pathlib import Path


class ConfigError(ValueError):
    """The configuration file is missing, unreadable or wrong; the message names file, key and fix."""


def load_file(path: Path) -> dict:
    """The TOML document in ``path``, for every role's loader; ConfigError names the file and what is wrong."""
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read it: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: not valid TOML: {exc}") from None


def section(cls: type, data: dict, name: str, path: Path) -> typing.Any:
    """Build dataclass ``cls`` from ``data[name]``."""
    raw = data.get(name)
    if raw is None:
        raise ConfigError(f"{path}: missing [{name}] section")
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [{name}] must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}  # init=False: derived, never set by a file
    unknown = set(raw) - set(fields)
    if unknown:
        raise ConfigError(f"{path}: [{name}] has unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, f in fields.items():
        if key not in raw:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{path}: [{name}] needs '{key}'")
            continue
        value = raw[key]
        want = hints[key]
        if not _type_ok(value, want):
            raise ConfigError(f"{path}: [{name}] {key} = {value!r} should be {_type_name(want)}")
        kwargs[key] = value
    return cls(**kwargs)


def _type_ok(value, want) -> bool:
    origin = typing.get_origin(want)
    if origin is list:
        (inner,) = typing.get_args(want)
        return isinstance(value, list) and all(_type_ok(v, inner) for v in value)
    if origin is dict:
        k, v = typing.get_args(want)
        return isinstance(value, dict) and all(_type_ok(x, k) and _type_ok(y, v) for x, y in value.items())
    if want is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if want is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, want)


def _type_name(want) -> str:
    origin = typing.get_origin(want)
    if origin is list:
        return f"a list of {_type_name(typing.get_args(want)[0])}"
    if origin is dict:
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(want, str(want))
