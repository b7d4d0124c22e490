"""The lease pool: one address from 100.64.0.0/10 per application name.

A lease is made when the agent answers a DNS query for a private application,
and kept while flows use it.  A lease is idle when it has no live flow and has
not been used for ``idle_timeout`` seconds; idle leases are reclaimed.  When
the pool is exhausted the least recently used idle lease is taken for the new
name; a busy lease (live flows, or answered by DNS within ``grace`` seconds, so
the client has not connected yet) is never taken.  Time is an argument.
"""

from __future__ import annotations

import ipaddress
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

    @property
    def addr_text(self) -> str:
        return str(ipaddress.IPv4Address(self.addr))


class LeasePool:
    """Addresses of ``network`` minus ``reserved``, leased per FQDN."""

    def __init__(self, network: str = "100.64.0.0/10", reserved: list[str] = ("100.64.0.1", "100.64.0.2"),
                 *, idle_timeout: float = 300.0, grace: float = 30.0):
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

    def __len__(self) -> int:
        return len(self.by_name)

    def capacity(self) -> int:
        return self.network.num_addresses - len(self.reserved)

    def get(self, addr: bytes) -> Lease | None:
        return self.by_addr.get(addr)

    def lease(self, fqdn: str, now: float) -> Lease:
        """The lease for ``fqdn`` (made now if it has none); raises PoolExhausted."""
        lease = self.by_name.get(fqdn)
        if lease is not None:
            lease.last_used = now
            return lease
        addr = self._take(now)
        lease = Lease(fqdn, addr, now, now)
        self.by_name[fqdn] = lease
        self.by_addr[addr] = lease
        return lease

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
        return victim.addr

    def busy(self, lease: Lease, now: float) -> bool:
        return bool(lease.flows) or now - lease.last_used < self.grace

    def _lru_idle(self, now: float) -> Lease | None:
        idle = [l for l in self.by_name.values() if not self.busy(l, now)]
        return min(idle, key=lambda l: l.last_used, default=None)

    def _drop(self, lease: Lease) -> None:
        del self.by_name[lease.fqdn]
        del self.by_addr[lease.addr]

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
