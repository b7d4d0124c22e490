"""The proxy's own name resolution: it asks its configured DNS servers, never the client.

``DnsCache`` is the pure part (answers kept for their TTL, capped, time passed
in); ``lookup`` asks the servers with ``ztna.dnswire.ask``.
"""

from __future__ import annotations

from collections import OrderedDict

from dnslib import QTYPE

from ztna import dnswire

MAX_TTL = 300.0


class DnsCache:
    """A-record answers by name until their TTL runs out (at most ``MAX_TTL``)."""

    def __init__(self, size: int = 4096):
        self.size = size
        self._data: OrderedDict[str, tuple[float, list[str]]] = OrderedDict()

    def get(self, name: str, now: float) -> list[str] | None:
        hit = self._data.get(name)
        if hit is None or hit[0] <= now:
            self._data.pop(name, None)
            return None
        self._data.move_to_end(name)
        return hit[1]

    def put(self, name: str, addrs: list[str], ttl: float, now: float) -> None:
        ttl = max(0.0, min(float(ttl), MAX_TTL))
        if ttl <= 0 or not addrs:
            return
        self._data[name] = (now + ttl, list(addrs))
        self._data.move_to_end(name)
        while len(self._data) > self.size:
            self._data.popitem(last=False)


class ResolveError(Exception):
    """No DNS server gave a usable answer."""


def lookup(servers: list[str] | tuple[str, ...], name: str, timeout: float = 2.0) -> tuple[list[str], float]:
    """(IPv4 addresses, TTL) for ``name`` from the first server that answers (blocking)."""
    last = "no DNS server configured"
    for server in servers:
        try:
            rec = dnswire.ask(server, name, "A", timeout=timeout, tries=2)
        except (OSError, TimeoutError) as exc:
            last = str(exc)
            continue
        except dnswire.BadMessage as exc:
            last = f"malformed answer from {server}: {exc}"
            continue
        rcode = dnswire.rcode_name(rec)
        if rcode != "NOERROR":
            raise ResolveError(f"{server} answered {rcode}")
        addrs = dnswire.addresses(rec, "A")
        ttls = [rr.ttl for rr in rec.rr if rr.rtype == QTYPE.A]
        if not addrs:
            raise ResolveError(f"{server} has no A record")
        return addrs, float(min(ttls))
    raise ResolveError(last)
