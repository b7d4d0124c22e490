"""Split DNS: which server a name goes to.

Internal suffixes (the configured list, the recorded search domains, and the
private reverse zones) go to the recorded servers; everything else goes to the
cloud resolver.  The longest suffix wins, compared on whole labels, so
``corp.example`` matches ``a.corp.example`` but never ``notcorp.example``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .state import Learned

# Reverse zones of addresses that never leave a private network: asking the
# cloud about them would leak internal addressing and get no useful answer.
PRIVATE_REVERSE_ZONES: tuple[str, ...] = (
    "10.in-addr.arpa",
    *(f"{n}.172.in-addr.arpa" for n in range(16, 32)),
    "168.192.in-addr.arpa",
    "254.169.in-addr.arpa",  # link-local
    "127.in-addr.arpa",
    *(f"{n}.100.in-addr.arpa" for n in range(64, 128)),  # shared address space (RFC 6598)
    "d.f.ip6.arpa",  # unique local IPv6
    "8.e.f.ip6.arpa", "9.e.f.ip6.arpa", "a.e.f.ip6.arpa", "b.e.f.ip6.arpa",  # fe80::/10
)

CLOUD = "cloud"
INTERNAL = "internal"


def labels(name: str) -> tuple[str, ...]:
    """A name as lower-case labels, root last dropped: 'A.Corp.Example.' -> ('a','corp','example')."""
    name = name.strip().rstrip(".").lower()
    return tuple(name.split(".")) if name else ()


@dataclass(frozen=True)
class Route:
    """Where one query goes: ``kind`` is 'internal' or 'cloud'."""

    kind: str
    suffix: str  # the internal suffix that matched ('' for cloud)
    servers: tuple[Learned, ...]


@dataclass
class SplitDNS:
    """The routing table: internal suffix -> servers (with their interfaces)."""

    internal: dict[tuple[str, ...], tuple[Learned, ...]] = field(default_factory=dict)
    cloud: tuple[Learned, ...] = ()

    @classmethod
    def build(cls, *, recorded: list[Learned], search: list[Learned], configured: list[str],
              cloud: list[str], private_reverse: bool = True,
              per_domain: dict[str, list[Learned]] | None = None) -> "SplitDNS":
        """Compile the table from what was recorded and what was configured.

        ``per_domain`` pins a domain to its own servers (e.g. a VPN's domain
        to the VPN's server); other internal domains use every recorded server.
        """
        table = cls(cloud=tuple(Learned(c) for c in cloud))
        default = tuple(recorded)
        domains = list(configured) + [s.value for s in search]
        if private_reverse:
            domains += list(PRIVATE_REVERSE_ZONES)
        for d in domains:
            key = labels(d)
            if key:
                table.internal.setdefault(key, default)
        for d, servers in (per_domain or {}).items():
            if labels(d) and servers:
                table.internal[labels(d)] = tuple(servers)
        return table

    def route(self, qname: str) -> Route:
        """The route for ``qname``: the longest internal suffix on whole labels, else the cloud."""
        q = labels(qname)
        for n in range(len(q), 0, -1):
            servers = self.internal.get(q[-n:])
            if servers is not None:
                if servers:
                    return Route(INTERNAL, ".".join(q[-n:]), servers)
                break  # an internal name with no server known: the cloud is all we have
        return Route(CLOUD, "", self.cloud)
