"""The lease pool: one address from 100.64.0.0/10 per application name.

A lease is made when the agent answers a DNS query for a private application,
and kept while flows use it.  A lease is idle when it has no live flow and has
not been used for ``idle_timeout`` seconds; idle leases are reclaimed.  When
the pool is exhausted the least recently used idle lease is taken for the new
name; a busy lease (live flows, or answered by DNS within ``grace`` seconds, so
the client has not connected yet) is never taken.

Caps: a wildcard application (``*.domain``) would otherwise make one lease per
distinct name below it, up to the whole pool (issue 19), so a lease made for a
wildcard counts against that wildcard's cap (``max_per_wildcard``) and every
lease against ``max_leases``.  At a cap the least recently used idle lease of
that wildcard (or of the pool) gives its address to the new name; if every one
is busy the name gets no lease.  Reaching a cap is noted in ``events`` and each
lease taken from another name in ``reclaimed``, for the shell to log and to tell
the gateway.  Time is an argument.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from dataclasses import dataclass, field


class PoolExhausted(Exception):
    """Every address is leased and busy."""


@dataclass
class Lease:
    """One name's address and its use."""

    fqdn: str
    addr: bytes
    created: float
    last_used: float
    flows: dict = field(default_factory=dict)  # flow key -> last packet time
    state: str = "new"  # new -> allowed | denied (decided by the gateway)
    group: str | None = None  # the wildcard pattern it was made for, None for an exact name

    @property
    def addr_text(self) -> str:
        return str(ipaddress.IPv4Address(self.addr))


class LeasePool:
    """Addresses of ``network`` minus ``reserved``, leased per FQDN."""

    def __init__(self, network: str = "100.64.0.0/10", reserved: list[str] = ("100.64.0.1", "100.64.0.2"),
                 *, idle_timeout: float = 300.0, grace: float = 30.0, max_leases: int | None = None,
                 max_per_wildcard: int | None = None):
        self.network = ipaddress.IPv4Network(network)
        self.reserved = {ipaddress.IPv4Address(r) for r in reserved}
        self.reserved |= {self.network.network_address, self.network.broadcast_address}
        self.idle_timeout = idle_timeout
        self.grace = grace
        self.by_name: dict[str, Lease] = {}
        self.by_addr: dict[bytes, Lease] = {}
        self._next = int(self.network.network_address)
        self._last = int(self.network.broadcast_address)
        self._free: list[int] = []  # reclaimed addresses, reused first
        self.max_leases = max_leases
        self.max_per_wildcard = max_per_wildcard
        self.per_group: Counter = Counter()
        self.events: list[str] = []  # caps reached, for the shell to log
        self.reclaimed: list[Lease] = []  # leases taken from their names for another, for the shell to release

    def __len__(self) -> int:
        return len(self.by_name)

    def capacity(self) -> int:
        return self.network.num_addresses - len(self.reserved)

    def get(self, addr: bytes) -> Lease | None:
        return self.by_addr.get(addr)

    def lease(self, fqdn: str, now: float, group: str | None = None) -> Lease:
        """The lease for ``fqdn`` (made now if it has none); ``group`` names the wildcard
        it matched.  Raises PoolExhausted, also when a cap is reached and nothing is idle."""
        lease = self.by_name.get(fqdn)
        if lease is not None:
            lease.last_used = now
            return lease
        if group is not None and self.max_per_wildcard is not None and self.per_group[group] >= self.max_per_wildcard:
            addr = self._take_at_cap(now, lambda l: l.group == group,
                                     f"{self.per_group[group]} leases for {group} (max_leases_per_wildcard)")
        elif self.max_leases is not None and len(self.by_name) >= self.max_leases:
            addr = self._take_at_cap(now, lambda l: True, f"{len(self.by_name)} leases (max_leases)")
        else:
            addr = self._take(now)
        lease = Lease(fqdn, addr, now, now, group=group)
        self.by_name[fqdn] = lease
        self.by_addr[addr] = lease
        if group is not None:
            self.per_group[group] += 1
        return lease

    def _take_at_cap(self, now: float, which, cap: str) -> bytes:
        victim = self._lru_idle(now, which)
        if victim is None:
            self.events.append(f"cap reached: {cap}, every one busy; no lease")
            raise PoolExhausted(f"cap reached: {cap}, every one in use")
        self.events.append(f"cap reached: {cap}; {victim.fqdn} {victim.addr_text} reclaimed (least recently used)")
        self._drop(victim)
        self.reclaimed.append(victim)
        return victim.addr

    def _take(self, now: float) -> bytes:
        if self._free:
            return self._free.pop().to_bytes(4, "big")
        while self._next <= self._last:
            a = self._next
            self._next += 1
            if ipaddress.IPv4Address(a) not in self.reserved:
                return a.to_bytes(4, "big")
        victim = self._lru_idle(now)
        if victim is None:
            raise PoolExhausted(f"all {self.capacity()} addresses of {self.network} are leased and in use")
        self._drop(victim)
        self.reclaimed.append(victim)
        return victim.addr

    def busy(self, lease: Lease, now: float) -> bool:
        return bool(lease.flows) or now - lease.last_used < self.grace

    def _lru_idle(self, now: float, which=lambda l: True) -> Lease | None:
        idle = [l for l in self.by_name.values() if which(l) and not self.busy(l, now)]
        return min(idle, key=lambda l: l.last_used, default=None)

    def _drop(self, lease: Lease) -> None:
        del self.by_name[lease.fqdn]
        del self.by_addr[lease.addr]
        if lease.group is not None:
            self.per_group[lease.group] -= 1
            if not self.per_group[lease.group]:
                del self.per_group[lease.group]

    def drain(self) -> tuple[list[str], list[Lease]]:
        """The cap events and the leases taken for other names since the last call."""
        events, reclaimed = self.events, self.reclaimed
        self.events, self.reclaimed = [], []
        return events, reclaimed

    def note_packet(self, lease: Lease, key: tuple, now: float, closing: bool = False) -> bool:
        """Record a packet of flow ``key``; True when it is the flow's first packet."""
        lease.last_used = now
        if closing:
            lease.flows.pop(key, None)
            return False
        new = key not in lease.flows
        lease.flows[key] = now
        return new

    def expire(self, now: float, flow_idle: float = 120.0) -> list[Lease]:
        """Forget flows silent for ``flow_idle`` s; reclaim leases idle for ``idle_timeout`` s. Returns the reclaimed."""
        reclaimed = []
        for lease in list(self.by_name.values()):
            for k, t in list(lease.flows.items()):
                if now - t > flow_idle:
                    del lease.flows[k]
            if not lease.flows and now - lease.last_used > self.idle_timeout:
                self._drop(lease)
                self._free.append(int.from_bytes(lease.addr, "big"))
                reclaimed.append(lease)
        return reclaimed
