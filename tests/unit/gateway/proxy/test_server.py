"""gateway.proxy.server: the per-connection log line's encoder (no root)."""

import json
import math

import pytest

from gateway.proxy.server import _json_line


def test_log_line_is_what_json_dumps_writes():
    record = {"ts": "2026-12-01T22:00:00.123+00:00", "mode": "explicit", "client": "198.51.100.10:40000",
              "name": "b\u00e4nk.example.com\n\u2028\"\\", "decision": None, "decrypted": False, "bytes_up": 517,
              "duration_ms": 12.3, "tiny": 1.5e-7, "resolved": ["203.0.113.80", None], "nested": {"a": [1, 2.0]}}
    line = _json_line(record)
    assert line == json.dumps(record, separators=(",", ":"))
    assert json.loads(line) == record
    assert "\n" not in line  # one line per connection, though the name holds a newline
    assert json.loads(_json_line({"x": math.inf}))["x"] == math.inf


def test_log_line_refuses_what_json_cannot_write():
    with pytest.raises(TypeError, match="not JSON serializable"):
        _json_line({"x": object()})
