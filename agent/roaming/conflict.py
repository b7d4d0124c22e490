"""The rewrite-race detector (SPEC.md §6, conflict 1 and 2).

A VPN client that sets its own DNS after connecting, and keeps setting it,
fights any program that points resolv.conf at loopback.  Theory of operation:

* While we own the file, every foreign rewrite is an event at time ``now``.
  The first few are answered by re-asserting our file (a network manager
  that writes once, e.g. on DHCP renewal, should not switch protection off).
* ``threshold`` rewrites within ``window`` seconds is a race: we stop, leave
  the other program's file in place, and report unprotected with the reason.
* A file pointing at another loopback address is another DNS proxy; it
  counts the same way, but the reason names it.
* Once backed off, only a network change (an interface appears or goes) lets
  us try again; never a timer, so two programs cannot loop forever.

No I/O: the shell reports events and performs the returned action.
"""

from __future__ import annotations

import ipaddress
from collections import deque
from dataclasses import dataclass, field

REASSERT = "reassert"
BACK_OFF = "back_off"
RETAKE = "retake"
NOTHING = "nothing"


@dataclass
class ConflictPolicy:
    """Thresholds: ``threshold`` foreign rewrites within ``window`` seconds is a race."""

    threshold: int = 3
    window: float = 30.0

    def __post_init__(self) -> None:
        if self.threshold < 1:
            raise ValueError(f"conflict threshold must be at least 1, got {self.threshold}")
        if self.window <= 0:
            raise ValueError(f"conflict window must be positive seconds, got {self.window}")


@dataclass(frozen=True)
class Decision:
    """What the shell must do, and the reason to show a person."""

    action: str
    reason: str = ""


@dataclass
class ConflictDetector:
    """Counts foreign rewrites and decides reassert, back off or retake."""

    policy: ConflictPolicy = field(default_factory=ConflictPolicy)
    backed_off: bool = False
    backed_off_at: float | None = None
    reason: str = ""
    rewrites: deque = field(default_factory=deque)
    total_rewrites: int = 0

    def foreign_rewrite(self, now: float, *, servers: list[str] = (), our_listen: str = "",
                        writer: str = "") -> Decision:
        """Someone else rewrote the file we own (``servers`` is what it now names)."""
        self.total_rewrites += 1
        if self.backed_off:
            return Decision(NOTHING, self.reason)
        while self.rewrites and now - self.rewrites[0] > self.policy.window:
            self.rewrites.popleft()
        self.rewrites.append(now)
        other_proxy = [s for s in servers if _loopback(s) and s != our_listen]
        if len(self.rewrites) >= self.policy.threshold:
            self.backed_off = True
            self.backed_off_at = now
            who = f" by {writer}" if writer else ""
            if other_proxy:
                self.reason = (f"another DNS proxy on loopback ({', '.join(other_proxy)}) rewrote resolv.conf{who} "
                               f"{len(self.rewrites)} times in {self.policy.window:g}s; backed off until the network changes")
            else:
                self.reason = (f"DNS settings rewritten{who} {len(self.rewrites)} times in {self.policy.window:g}s "
                               f"(now {', '.join(servers) or 'no nameserver'}), likely a VPN client; "
                               f"backed off until the network changes")
            return Decision(BACK_OFF, self.reason)
        return Decision(REASSERT, f"resolv.conf rewritten by someone else ({len(self.rewrites)}/{self.policy.threshold} "
                                  f"within {self.policy.window:g}s); re-asserting")

    def network_changed(self, now: float, what: str = "") -> Decision:
        """An interface appeared or went: the one event that ends a back-off."""
        if not self.backed_off:
            return Decision(NOTHING)
        self.backed_off = False
        self.backed_off_at = None
        self.reason = ""
        self.rewrites.clear()
        return Decision(RETAKE, f"network changed ({what or 'interfaces'}); taking over again")


def _loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:
        return False


@dataclass
class Interfaces:
    """Tells an interface appearing or going from the other link chatter netlink sends."""

    known: frozenset[str] | None = None

    def update(self, up_ifaces: set[str]) -> str:
        """Feed the set of interfaces now up; returns a description of the change, or ''."""
        now = frozenset(up_ifaces)
        if self.known is None:
            self.known = now
            return ""
        added, gone = sorted(now - self.known), sorted(self.known - now)
        self.known = now
        parts = [f"{i} appeared" for i in added] + [f"{i} went" for i in gone]
        return ", ".join(parts)
