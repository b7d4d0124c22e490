"""The commands both ends of the tunnel return from their sans-IO sessions.

``agent.session`` and ``gateway.session`` each add the commands only their side
has (``Connect``; ``Resolve``, ``Bind``, ``Unbind``); these four mean the same
on either side, so a shell performs them the same way.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Send:
    """Write these bytes (whole frames) to the tunnel's TLS connection."""
    data: bytes


@dataclass(frozen=True)
class WriteTun:
    """Write each packet (virtio-net header first) to this side's TUN, in order."""
    packets: list


@dataclass(frozen=True)
class Close:
    """Close the tunnel connection (the session's close event follows); frames sent before it go first."""
    reason: str


@dataclass(frozen=True)
class Log:
    """One line for this side's log."""
    level: int
    message: str
