"""TOML configuration with errors a person can act on.

Each role describes its section as a dataclass; ``load`` checks types, fills
defaults and rejects unknown keys (a typo must not be silently ignored).
"""

from __future__ import annotations

import dataclasses
import re
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


_TOML_AT = re.compile(r"\(at line (\d+), column (\d+)\)")
_QUOTED = re.compile(r"'([^'\n]{1,200})'|\"([^\"\n]{1,200})\"")
_KEYS = re.compile(r"unknown [^:;]*?: ?([A-Za-z0-9_, -]+?) *(?:;|\(|$)|unknown key\(s\) ([A-Za-z0-9_, -]+?);")
_TABLE_KEY = re.compile(r"\[[A-Za-z0-9_.\-]+\]\.? ?([A-Za-z_][A-Za-z0-9_]*)|\b[a-z_]+\.([a-z_]+) must\b")


def locate(text: str, message: str) -> int | None:
    """The line of ``text`` (a TOML file) that ``message`` (a ConfigError's) is about, best effort.

    Why best effort: the loaders check parsed TOML, which keeps no line numbers;
    the message names the key or the value, and the first line that holds it is
    almost always the one to fix.  tomllib's own errors carry their line.
    """
    m = _TOML_AT.search(message)
    if m:
        return int(m.group(1))
    lines = text.splitlines()
    keys: list[str] = []
    m = _KEYS.search(message)
    if m:
        keys += [k.strip() for k in (m.group(1) or m.group(2)).split(",") if k.strip()]
    for m in _TABLE_KEY.finditer(message):
        keys.append(m.group(1) or m.group(2))
    values = [a or b for a, b in _QUOTED.findall(message)]
    for v in values:  # a bad value is more precise than its key (a list spans lines)
        for n, line in enumerate(lines, 1):
            code = line.split("#", 1)[0]
            if f'"{v}"' in code or f"'{v}'" in code:
                return n
    for k in keys:
        pat = re.compile(rf"^\s*[\"']?{re.escape(k)}[\"']?\s*=")
        for n, line in enumerate(lines, 1):
            if pat.match(line):
                return n
    return None


def describe(path: Path, exc: Exception) -> str:
    """``FILE:LINE: reason`` for a ConfigError raised while loading ``path`` (no line when none is found)."""
    msg = str(exc)
    prefix = f"{path}: "
    if msg.startswith(prefix):
        msg = msg[len(prefix):]
    try:
        line = locate(Path(path).read_text(errors="replace"), msg)
    except OSError:
        line = None
    return f"{path}:{line}: {msg}" if line else f"{path}: {msg}"
