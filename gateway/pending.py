"""Which TCP connections may start a TLS handshake at the gateway, and how long they get.

``max_sessions`` counts established sessions only; before this gate, every
accepted connection held an OpenSSL object and a task for up to the whole
handshake deadline, so 3,000 idle connections from one address cost the
gateway 145 MB (issue 19).  The gate bounds the handshakes waiting at once, in
total and per source address, and gives new handshakes a shorter deadline
while the gateway is under pressure (half the total or more in use).  It also
says when a burst has drained, so the shell can hand the freed memory back to
the system (glibc keeps freed heap pages otherwise).  Pure: no sockets, no clock.
"""

from __future__ import annotations

from collections import Counter


class HandshakeGate:
    """Pending handshakes: at most ``max_total`` at once, ``max_per_source`` from one address."""

    def __init__(self, *, max_total: int = 256, max_per_source: int = 32, timeout: float = 10.0,
                 pressure_timeout: float = 2.0, burst: int = 64):
        self.max_total = max_total
        self.max_per_source = max_per_source
        self.normal_timeout = timeout
        self.pressure_timeout = min(pressure_timeout, timeout)
        self.burst = burst
        self.by_source: Counter = Counter()
        self.total = 0
        self.peak = 0  # most pending at once since the gate was last empty
        self.refused_total = 0
        self.refused_source = 0

    def admit(self, source: str) -> str | None:
        """None: the handshake may start (call ``done`` when it ends).  Otherwise why it may not."""
        if self.total >= self.max_total:
            self.refused_total += 1
            return f"{self.total} handshakes pending already (max_pending)"
        if self.by_source[source] >= self.max_per_source:
            self.refused_source += 1
            return f"{self.by_source[source]} pending handshakes from {source} already (max_pending_per_source)"
        self.by_source[source] += 1
        self.total += 1
        self.peak = max(self.peak, self.total)
        return None

    def done(self, source: str) -> bool:
        """One handshake of ``source`` ended (either way).  True when a burst has just drained."""
        if self.by_source[source] <= 0:
            raise ValueError(f"no pending handshake from {source} to end")
        self.by_source[source] -= 1
        if not self.by_source[source]:
            del self.by_source[source]
        self.total -= 1
        if self.total == 0:
            drained = self.peak >= self.burst
            self.peak = 0
            return drained
        return False

    @property
    def under_pressure(self) -> bool:
        return 2 * self.total >= self.max_total

    def timeout(self) -> float:
        """The deadline for a handshake starting now."""
        return self.pressure_timeout if self.under_pressure else self.normal_timeout
