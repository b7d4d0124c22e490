"""ztna.config: finding the line a configuration error is about (no root)."""

import pytest

from ztna.config import ConfigError, describe, load_file, locate

TEXT = """[proxy]
mode = "explicit"
colour = "blue"

[policy]
allow = [
  "*.example.com",
  "bad..name",
]
"""


@pytest.mark.parametrize("message, line", [
    ("unknown [proxy] keys: colour", 3),
    ("[policy] allow: 'bad..name' is not a host name or '*.domain' pattern", 8),
    ("[proxy] mode must be 'explicit' or 'transparent', not 'x'", 2),  # the key, since no line holds 'x'
    ("nothing here names a key", None),
])
def test_locate(message, line):
    assert locate(TEXT, message) == line


def test_describe_uses_tomllibs_own_line(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('[proxy]\nmode = "explicit"\nlisten = = 1\n')
    with pytest.raises(ConfigError) as e:
        load_file(f)
    assert describe(f, e.value).startswith(f"{f}:3: not valid TOML")


def test_describe_without_a_line(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text("[proxy]\n")
    assert describe(f, ConfigError(f"{f}: missing [policy]")) == f"{f}: missing [policy]"


@pytest.mark.parametrize("message", [
    "dns.toml: unknown key(s) in [proxy]: colour; known: a, b",
    "p.toml: [proxy] has unknown key(s) colour; known: mode",
])
def test_locate_every_roles_unknown_key_wording(message):
    assert locate(TEXT, message) == 3
