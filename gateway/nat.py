"""Per-client NAT on the gateway.

Every agent numbers its own leases from 100.64.0.0/10 and sends from its own
adapter address, so two agents may use the very same addresses for different
applications.  The gateway therefore gives each session an inside address of
its own and keeps, per session, lease address -> (application, private IP) and
a flow table.  Outbound packets are rewritten (agent address -> inside address,
lease -> private IP); replies, which the kernel routes back to the inside
address after masquerade, are mapped back by flow.  A packet whose source is
not the agent's or whose destination is not one of its leases is dropped and
counted: an agent can reach only what it announced and was allowed.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from ztna.ippacket import BadPacket, parse_untrusted, rewrite


@dataclass
class Counters:
    """What the NAT passed and dropped, by reason."""

    out_packets: int = 0
    in_packets: int = 0
    spoofed_src: int = 0
    spoofed_dst: int = 0
    no_flow: int = 0
    malformed: int = 0


@dataclass
class Route:
    """One allowed lease of a session."""

    fqdn: str
    real: bytes


class ClientNat:
    """The NAT state of one agent session."""

    def __init__(self, client_addr: bytes, inside_addr: bytes, *, flow_idle: float = 300.0):
        self.client_addr = client_addr
        self.inside_addr = inside_addr
        self.flow_idle = flow_idle
        self.routes: dict[bytes, Route] = {}
        self.flows: dict[tuple, list] = {}  # (proto, client port, real ip, real port) -> [lease addr, last seen]
        self.counters = Counters()

    def allow(self, lease_addr: bytes, fqdn: str, real: bytes) -> None:
        self.routes[lease_addr] = Route(fqdn, real)

    def release(self, lease_addr: bytes) -> None:
        self.routes.pop(lease_addr, None)
        for k in [k for k, v in self.flows.items() if v[0] == lease_addr]:
            del self.flows[k]

    def outbound(self, pkt: bytearray, off: int, partial: bool, now: float) -> tuple | None:
        """Rewrite an agent's packet in place for the LAN.

        Returns (flow key, new flow?) when the packet may pass, None when it was
        dropped (and counted).
        """
        try:
            f = parse_untrusted(pkt, off)
        except BadPacket:
            self.counters.malformed += 1
            return None
        if f.src != self.client_addr:
            self.counters.spoofed_src += 1
            return None
        route = self.routes.get(f.dst)
        if route is None:
            self.counters.spoofed_dst += 1
            return None
        key = (f.proto, f.sport, route.real, f.dport)
        entry = self.flows.get(key)
        new = entry is None or entry[0] != f.dst
        if new:
            self.flows[key] = [f.dst, now]
        else:
            entry[1] = now
        rewrite(pkt, off, self.inside_addr, route.real, partial)
        self.counters.out_packets += 1
        return key, new

    def inbound(self, pkt: bytearray, off: int, partial: bool, now: float) -> bool:
        """Rewrite a LAN reply in place for the agent; False when no flow claims it."""
        try:
            f = parse_untrusted(pkt, off)
        except BadPacket:
            self.counters.malformed += 1
            return False
        entry = self.flows.get((f.proto, f.dport, f.src, f.sport))
        if entry is None or entry[0] not in self.routes:
            self.counters.no_flow += 1
            return False
        entry[1] = now
        rewrite(pkt, off, entry[0], self.client_addr, partial)
        self.counters.in_packets += 1
        return True

    def expire(self, now: float) -> int:
        old = [k for k, v in self.flows.items() if now - v[1] > self.flow_idle]
        for k in old:
            del self.flows[k]
        return len(old)


class InsidePool:
    """Inside addresses for sessions, from a private range on the gateway's TUN."""

    def __init__(self, network: str = "10.254.0.0/16"):
        self.network = ipaddress.IPv4Network(network)
        hosts = self.network.hosts()
        self.gateway_addr = next(hosts)  # the gateway's own TUN address
        self._hosts = hosts
        self._free: list[bytes] = []
        self.in_use: set[bytes] = set()

    def take(self) -> bytes:
        if self._free:
            a = self._free.pop()
        else:
            try:
                a = next(self._hosts).packed
            except StopIteration:
                raise RuntimeError(f"no inside address left in {self.network}: too many sessions") from None
        self.in_use.add(a)
        return a

    def give_back(self, a: bytes) -> None:
        if a in self.in_use:
            self.in_use.discard(a)
            self._free.append(a)
