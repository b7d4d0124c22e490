"""The query log: one JSON object a line, buffered, flushed every half second.

Fields: time (Unix seconds), client, identity (device id or client address),
device, policy, name, type, decision (allowed, blocked, not-served, bad-query,
rate-limited, upstream-failed), category (list or category that blocked),
column, action (blockpage, refused), rcode, latency_ms, and when relevant
cname (the chain link that blocked), cached, allowed_by, note.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator


class QueryLog:
    """Appends records to a JSON-lines file; ``None`` path keeps nothing."""

    def __init__(self, path: Path | None):
        self.path = path
        self._f = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._f = open(path, "a", buffering=1 << 16)

    def write(self, rec: dict) -> None:
        if self._f is not None:
            self._f.write(json.dumps(rec, separators=(",", ":")) + "\n")

    def write_line(self, line: str) -> None:
        """A record already rendered as one JSON line (the memo's fast path)."""
        if self._f is not None:
            self._f.write(line)

    def flush(self) -> None:
        if self._f is not None:
            self._f.flush()

    def close(self) -> None:
        if self._f is not None:
            self._f.close()
            self._f = None


def read(path: Path) -> Iterator[dict]:
    """Records of a log file; lines that are not JSON objects are skipped (a crash can cut the last one)."""
    with open(path) as f:
        for line in f:
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if isinstance(rec, dict):
                yield rec
