"""Who asks, and is the name bad for them: lists, categories, per-identity policies.

Precedence (docs/dns-security.md repeats it for users):

1. The source address must be in a served network, else REFUSED (no open resolver).
2. The policy: the one naming the query's EDNS0 device identity, else the one
   with the most specific network holding the source address (file order breaks ties).
3. The policy's allow lists: a name on one (or under one) is allowed, whatever else says.
4. Every other reason found: the policy's block lists (column destination-list),
   each blocked category of the name (its column), and a tunnelling verdict from
   the detector; the strictest column wins (tunnel > list > security > ddns > content).
5. Nothing found: allowed.

An entry covers the name and all its subdomains; names match case-insensitively,
with or without the trailing dot, Unicode names as punycode.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from .answers import Column, strictest
from .names import normalize, suffixes

SECURITY_CATEGORIES = frozenset({
    "malware", "phishing", "command-and-control", "cryptomining", "newly-seen-domains",
})
TUNNEL_CATEGORY = "dns-tunneling-vpn"
DDNS_CATEGORY = "dynamic-dns"


def column_of_category(category: str, extra_security: frozenset[str] = frozenset()) -> Column:
    """Which table column a category belongs to; unknown categories are content categories."""
    if category == TUNNEL_CATEGORY:
        return Column.TUNNEL
    if category == DDNS_CATEGORY:
        return Column.DDNS
    if category in SECURITY_CATEGORIES or category in extra_security:
        return Column.SECURITY
    return Column.CONTENT


class DomainSet:
    """A set of domains where each entry covers itself and every subdomain."""

    def __init__(self, names=()):
        self._names: set[str] = set()
        for n in names:
            self.add(n)

    def add(self, name: str) -> None:
        n = normalize(name)
        if n:
            self._names.add(n)

    def match(self, name: str) -> str | None:
        """The entry covering ``name`` (already normalised), most specific first."""
        for s in suffixes(name):
            if s in self._names:
                return s
        return None

    def __len__(self) -> int:
        return len(self._names)


class CategoryDB:
    """Domain -> categories; a domain's categories cover its subdomains too."""

    def __init__(self):
        self._cats: dict[str, set[str]] = {}

    def add(self, domain: str, *categories: str) -> None:
        d = normalize(domain)
        if d:
            self._cats.setdefault(d, set()).update(c.strip().lower() for c in categories if c.strip())

    def categories(self, name: str) -> dict[str, str]:
        """category -> the database entry that gave it, for ``name`` and its parents."""
        out: dict[str, str] = {}
        for s in suffixes(name):
            for c in self._cats.get(s, ()):
                out.setdefault(c, s)
        return out

    def __len__(self) -> int:
        return len(self._cats)


@dataclass
class Policy:
    """What one identity (networks or devices) may resolve."""

    name: str
    networks: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = field(default_factory=list)
    devices: frozenset[str] = frozenset()
    block_categories: frozenset[str] = frozenset()
    block_lists: list[tuple[str, DomainSet]] = field(default_factory=list)
    allow_lists: list[tuple[str, DomainSet]] = field(default_factory=list)


@dataclass(frozen=True)
class Verdict:
    """The decision for one name under one policy.

    ``column`` is None when the name is allowed.  ``reason`` names the list or
    category, ``matched`` the entry that matched (the name or a parent).
    """

    policy: str
    column: Column | None
    reason: str = ""
    matched: str = ""
    allowed_by: str = ""
    detected: bool = False  # the tunnelling detector's verdict on this client's own queries, not a list's

    @property
    def blocked(self) -> bool:
        return self.column is not None


class PolicySet:
    """Every policy plus the shared category database: the resolver's whole judgement."""

    def __init__(self, policies: list[Policy], categories: CategoryDB, *, extra_security: frozenset[str] = frozenset()):
        self.policies = policies
        self.categories = categories
        self.extra_security = extra_security
        self._by_device = {d: p for p in policies for d in p.devices}
        # Most specific network first; stable sort keeps file order for ties.
        self._by_net = sorted(((n, p) for p in policies for n in p.networks), key=lambda np: -np[0].prefixlen)

    def select(self, source: str, device: str | None) -> Policy | None:
        """The policy for a query from ``source`` carrying ``device``; None if not served."""
        try:
            addr = ipaddress.ip_address(source)
        except ValueError:
            return None
        if isinstance(addr, ipaddress.IPv6Address) and addr.ipv4_mapped:
            addr = addr.ipv4_mapped
        net_policy = next((p for n, p in self._by_net if addr.version == n.version and addr in n), None)
        if net_policy is None:
            return None  # a device identity never opens the resolver to an unserved network
        if device is not None and device in self._by_device:
            return self._by_device[device]
        return net_policy

    def decide(self, policy: Policy, name: str, *, tunnel_parent: str | None = None) -> Verdict:
        """Judge ``name`` (normalised) for ``policy``; ``tunnel_parent`` is the detector's verdict."""
        for list_name, ds in policy.allow_lists:
            hit = ds.match(name)
            if hit is not None:
                return Verdict(policy.name, None, allowed_by=f"allow list {list_name} ({hit})")
        found: list[tuple[Column, str, str]] = []
        for list_name, ds in policy.block_lists:
            hit = ds.match(name)
            if hit is not None:
                found.append((Column.LIST, list_name, hit))
        for cat, entry in sorted(self.categories.categories(name).items()):
            if cat in policy.block_categories:
                found.append((column_of_category(cat, self.extra_security), cat, entry))
        if tunnel_parent is not None and TUNNEL_CATEGORY in policy.block_categories:
            found.append((Column.TUNNEL, TUNNEL_CATEGORY, f"{tunnel_parent} (detected)", True))
        col = strictest(f[0] for f in found)
        if col is None:
            return Verdict(policy.name, None)
        _, reason, hit, *detected = next(f for f in found if f[0] == col)
        return Verdict(policy.name, col, reason, hit, detected=bool(detected))
