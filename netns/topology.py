"""Topology specs: hosts, addresses, routes, point-to-point links and switches.

Pure data and validation.  ``plan()`` renders the spec as the ``ip`` commands it
stands for, so tests can compare a wanted block of text without root.  Nothing
here may name the root namespace or a real interface: every link joins two lab
hosts (or a lab host and a lab switch).
"""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field


class TopologyError(ValueError):
    """The spec is inconsistent (unknown host, duplicate interface, bad address...)."""


def prefix() -> str:
    """Namespace prefix, ``zt-`` unless ZTNA_NS_PREFIX says otherwise (parallel labs)."""
    return os.environ.get("ZTNA_NS_PREFIX", "zt-")


@dataclass
class Host:
    """A lab host: one network namespace."""

    name: str
    addrs: dict[str, list[str]] = field(default_factory=dict)  # ifname -> ["a.b.c.d/len", ...]
    routes: list[tuple[str, str, str | None, int | None]] = field(default_factory=list)  # (dst, via, dev, metric)
    forward: bool = False

    def addr(self, ifname: str, cidr: str) -> "Host":
        ipaddress.ip_interface(cidr)  # raises ValueError on bad input
        self.addrs.setdefault(ifname, []).append(cidr)
        return self

    def route(self, dst: str, via: str | None = None, *, dev: str | None = None, metric: int | None = None) -> "Host":
        self.routes.append((dst, via or "", dev, metric))
        return self

    def ifaces(self) -> list[str]:
        return list(self.addrs)


@dataclass(frozen=True)
class Link:
    """A veth pair between two lab hosts."""

    a: str
    a_if: str
    b: str
    b_if: str


@dataclass(frozen=True)
class Switch:
    """A bridge in its own lab namespace joining several hosts' interfaces."""

    name: str
    members: tuple[tuple[str, str], ...]


@dataclass
class Topology:
    """A complete lab network."""

    name: str
    hosts: dict[str, Host] = field(default_factory=dict)
    links: list[Link] = field(default_factory=list)
    switches: list[Switch] = field(default_factory=list)

    def host(self, name: str, *, forward: bool = False) -> Host:
        if name in self.hosts:
            raise TopologyError(f"host {name!r} defined twice")
        if "-" in name:  # a capture is <host>-<iface>.pcap, and interface names may hold "-"
            raise TopologyError(f"host {name!r}: a host name may not contain '-'")
        h = Host(name, forward=forward)
        self.hosts[name] = h
        return h

    def link(self, a: str, a_if: str, b: str, b_if: str) -> None:
        self.links.append(Link(a, a_if, b, b_if))

    def switch(self, name: str, *members: tuple[str, str]) -> None:
        self.switches.append(Switch(name, tuple(members)))

    def ns(self, host: str) -> str:
        """The namespace name of a host or switch."""
        return f"{prefix()}{host}"

    def namespaces(self) -> list[str]:
        return [self.ns(h) for h in self.hosts] + [self.ns(s.name) for s in self.switches]

    def endpoints(self) -> list[tuple[str, str]]:
        """Every (host, ifname) that a link or switch creates."""
        out = []
        for l in self.links:
            out += [(l.a, l.a_if), (l.b, l.b_if)]
        for s in self.switches:
            out += list(s.members)
        return out

    def validate(self) -> None:
        seen: set[tuple[str, str]] = set()
        for host, ifname in self.endpoints():
            if host not in self.hosts:
                raise TopologyError(f"link names unknown host {host!r}")
            if (host, ifname) in seen:
                raise TopologyError(f"interface {ifname} on {host} is used by two links")
            if len(ifname) > 15:
                raise TopologyError(f"interface name {ifname!r} is longer than 15 characters")
            seen.add((host, ifname))
        for h in self.hosts.values():
            for ifname in h.addrs:
                if (h.name, ifname) not in seen and ifname != "lo":
                    raise TopologyError(f"{h.name} has addresses on {ifname}, which no link creates")
        names = set(self.hosts) | {s.name for s in self.switches}
        if len(names) != len(self.hosts) + len(self.switches):
            raise TopologyError("a switch has the same name as a host")
        for n in names:
            if len(self.ns(n)) > 64:
                raise TopologyError(f"namespace name for {n!r} is too long")

    def plan(self) -> list[str]:
        """The spec as ``ip`` commands, one per line (for reading and for tests)."""
        self.validate()
        lines = [f"ip netns add {ns}" for ns in self.namespaces()]
        for l in self.links:
            lines.append(f"ip -n {self.ns(l.a)} link add {l.a_if} type veth peer name {l.b_if} netns {self.ns(l.b)}")
        for s in self.switches:
            lines.append(f"ip -n {self.ns(s.name)} link add br0 type bridge")
            for host, ifname in s.members:
                lines.append(f"ip -n {self.ns(host)} link add {ifname} type veth peer name {host[:15]} netns {self.ns(s.name)}")
                lines.append(f"ip -n {self.ns(s.name)} link set {host[:15]} master br0 up")
        for h in self.hosts.values():
            for ifname, cidrs in h.addrs.items():
                for c in cidrs:
                    lines.append(f"ip -n {self.ns(h.name)} addr add {c} dev {ifname}")
            for dst, via, dev, metric in h.routes:
                line = f"ip -n {self.ns(h.name)} route add {dst}"
                if via:
                    line += f" via {via}"
                if dev:
                    line += f" dev {dev}"
                if metric is not None:
                    line += f" metric {metric}"
                lines.append(line)
            if h.forward:
                lines.append(f"ip netns exec {self.ns(h.name)} sysctl -w net.ipv4.ip_forward=1")
        return lines
