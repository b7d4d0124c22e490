"""The status model: protected, open or unprotected, with the reason and when.

``derive`` is the one place that turns the facts the shell observed into what
``ztna roaming status`` says; ``Tracker`` keeps the timestamps honest (``since``
moves only when the state or reason changes).  ``CloudHealth`` decides when
the cloud resolver counts as unreachable and when to probe it again.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PROTECTED = "protected"
OPEN = "open"
UNPROTECTED = "unprotected"
STARTING = "starting"


@dataclass(frozen=True)
class Facts:
    """What the shell knows at one moment."""

    owning: bool = False  # resolv.conf points at our stub and is the file we wrote
    stub_bound: bool = False
    clash: str = ""  # another program serves our loopback address:port
    backed_off: str = ""  # conflict reason while backed off
    cloud_up: bool = True
    fail_open: bool = True
    problem: str = ""  # anything else that keeps us from protecting (malformed file...)


@dataclass(frozen=True)
class Verdict:
    """A status and its reason (machine-readable code plus a sentence)."""

    state: str
    reason: str = ""
    detail: str = ""


def derive(f: Facts) -> Verdict:
    """Decide the status from the facts (order: what defeats protection first)."""
    if f.clash:
        return Verdict(UNPROTECTED, "loopback_in_use", f.clash)
    if f.backed_off:
        return Verdict(UNPROTECTED, "conflict", f.backed_off)
    if f.problem:
        return Verdict(UNPROTECTED, "error", f.problem)
    if not f.stub_bound:
        return Verdict(STARTING, "", "loopback stub not listening yet")
    if not f.owning:
        return Verdict(UNPROTECTED, "not_owning", "resolv.conf does not point at the stub")
    if not f.cloud_up:
        if f.fail_open:
            return Verdict(OPEN, "cloud_unreachable",
                           "cloud resolver unreachable: external names go to the recorded servers (fail-open), unfiltered")
        return Verdict(UNPROTECTED, "cloud_unreachable",
                       "cloud resolver unreachable and fail_open is off: external names get SERVFAIL")
    return Verdict(PROTECTED, "", "every query reaches the stub; external names go to the cloud resolver")


@dataclass
class Tracker:
    """The current verdict and the time it began; ``events`` keeps the last few changes."""

    verdict: Verdict = Verdict(STARTING)
    since: float = 0.0
    updated: float = 0.0
    events: list[dict] = field(default_factory=list)
    keep: int = 20

    def update(self, v: Verdict, now: float) -> bool:
        """Record ``v`` at ``now``; True when it changed."""
        self.updated = now
        if v == self.verdict and self.since:
            return False
        self.verdict = v
        self.since = now
        self.events.append({"at": now, "state": v.state, "reason": v.reason, "detail": v.detail})
        del self.events[:-self.keep]
        return True

    def to_dict(self) -> dict:
        return {**asdict(self.verdict), "since": self.since, "updated": self.updated, "events": list(self.events)}


@dataclass
class CloudHealth:
    """Cloud reachability: down after ``fail_after`` failures in a row, re-probed every ``probe_every`` s."""

    fail_after: int = 2
    probe_every: float = 5.0
    failures: int = 0
    up: bool = True
    last_probe: float = 0.0
    changed_at: float = 0.0

    def success(self, now: float) -> bool:
        """A cloud answer arrived; True if that brought the cloud back."""
        self.failures = 0
        if not self.up:
            self.up, self.changed_at = True, now
            return True
        return False

    def failure(self, now: float) -> bool:
        """A cloud query timed out or was refused; True if the cloud is now down."""
        self.failures += 1
        if self.up and self.failures >= self.fail_after:
            self.up, self.changed_at = False, now
            return True
        return False

    def should_probe(self, now: float) -> bool:
        """While down, probe at most every ``probe_every`` seconds (queries skip the cloud meanwhile)."""
        if self.up or now - self.last_probe < self.probe_every:
            return False
        self.last_probe = now
        return True
