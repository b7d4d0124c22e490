"""When the agent may try to build its tunnel again: exponential backoff with full jitter.

Pure: the time comes in, the earliest next attempt goes out; the random source
is passed in, so tests can pin it.  "Full jitter" (the delay drawn uniformly
from 0 to the exponential bound) spreads the agents of a whole office that lost
their gateway at the same moment, instead of bringing them back in step.

* the first attempt, and the first after a healthy session, wait for nothing;
* after ``n`` failures in a row the delay is uniform in ``[0, min(cap, base * 2**(n-1))]``;
  there is no fixed floor;
* a session that stayed up for ``healthy`` seconds resets the count; one that
  ended sooner (a gateway that welcomes and drops us, or refuses us) counts as
  a failure, so a gateway in trouble is not hammered.
"""

from __future__ import annotations

import random
from collections.abc import Callable

BASE = 0.25
CAP = 15.0
HEALTHY = 10.0


class Backoff:
    def __init__(self, *, base: float = BASE, cap: float = CAP, healthy: float = HEALTHY,
                 rand: Callable[[], float] = random.random):
        self.base, self.cap, self.healthy, self.rand = base, cap, healthy, rand
        self.failures = 0
        self.next_attempt = float("-inf")

    def bound(self) -> float:
        """The upper end of the next delay."""
        return 0.0 if self.failures == 0 else min(self.cap, self.base * 2 ** (self.failures - 1))

    def may_try(self, now: float) -> bool:
        return now >= self.next_attempt

    def failed(self, now: float) -> float:
        """An attempt failed (or a session ended before it was healthy): the delay chosen."""
        self.failures += 1
        delay = self.rand() * self.bound()
        self.next_attempt = now + delay
        return delay

    def ended(self, up_for: float, now: float) -> float:
        """A session that was up for ``up_for`` seconds ended: the delay before the next attempt."""
        if up_for >= self.healthy:
            self.failures = 0
            self.next_attempt = now
            return 0.0
        return self.failed(now)
