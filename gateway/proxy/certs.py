"""Leaf certificates the proxy shows a client when it decrypts.

One leaf per name, signed by the proxy CA with ``ztna.pki.issue`` and a key of
its own (never the CA's: ``pki.issue`` refuses that), the name as its only SAN,
short-lived, and cached (least recently used out) so a new connection to a
known name costs no signature.  Time is passed in.
"""

from __future__ import annotations

import datetime as dt
from collections import OrderedDict

from ztna import pki


class LeafCache:
    """Proxy-CA leaves by name, renewed ``renew_before`` ahead of expiry."""

    def __init__(self, ca: pki.Issued, *, size: int = 1024, days: float = 7,
                 renew_before: dt.timedelta = dt.timedelta(days=1)):
        if size < 1:
            raise ValueError("leaf cache size must be at least 1")
        self.ca = ca
        self.size = size
        self.days = days
        self.renew_before = renew_before
        self._leaves: OrderedDict[str, pki.Issued] = OrderedDict()
        self.issued = 0  # how many leaves were signed (the tests and the bench read it)

    def get(self, name: str, now: dt.datetime) -> tuple[pki.Issued, bool]:
        """(leaf for ``name``, True if it was just issued)."""
        name = name.rstrip(".").lower()
        leaf = self._leaves.get(name)
        if leaf is not None and leaf.cert.not_valid_after_utc - self.renew_before > now:
            self._leaves.move_to_end(name)
            return leaf, False
        leaf = pki.issue(self.ca, name, kind="server", now=now, dns_names=[name], days=self.days)
        self.issued += 1
        self._leaves[name] = leaf
        self._leaves.move_to_end(name)
        while len(self._leaves) > self.size:
            self._leaves.popitem(last=False)
        return leaf, True

    def __contains__(self, name: str) -> bool:
        return name.rstrip(".").lower() in self._leaves

    def __len__(self) -> int:
        return len(self._leaves)
