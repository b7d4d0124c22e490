"""FQDN filtering policy of the forward proxy: who may use it, where to, decrypted or not.

Pure: names and addresses in, a :class:`Verdict` out.  Matching rules (chosen to
be what a network engineer expects, and written in docs/proxy.md):

* a pattern is an exact name (``bank.example.com``) or ``*.domain``, which
  matches every name *below* ``domain`` at any depth but not ``domain`` itself;
* names compare case-insensitively, without a trailing dot, international names
  as punycode (``ztna.names``, the patterns the tunnel's policy uses too);
* the deny list is read before the allow list (a deny always wins), and a name
  on neither gets the default action;
* the do-not-decrypt list only matters for allowed names, and ``decrypt = false``
  turns decryption off for everything.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field

from ztna.names import BadName, PatternSet, is_hostname, normalize, normalize_pattern

ALLOW = "allow"
DENY = "deny"

# Never reachable through the proxy unless explicitly configured otherwise:
# loopback, link-local, "this network", multicast and the unspecified address.
DEFAULT_FORBIDDEN = ("127.0.0.0/8", "169.254.0.0/16", "0.0.0.0/8", "224.0.0.0/4", "255.255.255.255/32")


class PolicyError(ValueError):
    """The policy configuration is inconsistent; the message says which entry and why."""


def valid_hostname(name: str) -> bool:
    """True for a DNS host name a proxy may be asked for (not an IP literal)."""
    try:
        return is_hostname(normalize(name))
    except BadName:
        return False


def _patterns(items, what: str) -> PatternSet:
    if isinstance(items, str) or not isinstance(items, (list, tuple)):
        raise PolicyError(f"{what} must be a list of names, got {items!r}")
    out = PatternSet()
    for item in items:
        try:
            p = normalize_pattern(item) if isinstance(item, str) else None
        except BadName as exc:
            raise PolicyError(f"{what}: {exc}") from exc
        if p is None or not is_hostname(p[2:] if p.startswith("*.") else p):
            raise PolicyError(f"{what}: {item!r} is not a host name or '*.domain' pattern")
        out.add(p)
    return out


def _nets(items, what: str) -> tuple:
    try:
        return tuple(ipaddress.ip_network(i, strict=False) for i in items)
    except (ValueError, TypeError) as exc:
        raise PolicyError(f"{what}: {exc}") from exc


@dataclass(frozen=True)
class Verdict:
    """The decision for one connection: allow or deny, decrypt or not, and why."""

    action: str
    decrypt: bool
    reason: str

    @property
    def allowed(self) -> bool:
        return self.action == ALLOW


@dataclass(frozen=True)
class Policy:
    """The whole filtering policy, built from the ``[policy]`` table of proxy.toml."""

    allow: PatternSet = field(default_factory=PatternSet)
    deny: PatternSet = field(default_factory=PatternSet)
    default: str = DENY
    no_decrypt: PatternSet = field(default_factory=PatternSet)
    decrypt: bool = True
    connect_ports: frozenset[int] = frozenset({443})
    http_ports: frozenset[int] = frozenset({80})
    client_networks: tuple = ()
    forbidden: tuple = field(default_factory=lambda: _nets(DEFAULT_FORBIDDEN, "forbidden"))
    own_addresses: frozenset = frozenset()
    # Verdicts on addresses, remembered: ipaddress parsing and network tests cost tens of
    # microseconds per connection, and the same few client and server addresses recur.
    _memo: dict = field(default_factory=dict, init=False, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict, *, own_addresses=()) -> "Policy":
        known = {"allow", "deny", "default", "no_decrypt", "decrypt", "connect_ports", "http_ports",
                 "client_networks", "forbidden_destinations", "allow_proxy_addresses"}
        unknown = set(d) - known
        if unknown:
            raise PolicyError(f"unknown [policy] keys: {', '.join(sorted(unknown))} (known: {', '.join(sorted(known))})")
        default = d.get("default", DENY)
        if default not in (ALLOW, DENY):
            raise PolicyError(f"[policy] default must be 'allow' or 'deny', not {default!r}")
        ports = {}
        for key, dflt in (("connect_ports", [443]), ("http_ports", [80])):
            vals = d.get(key, dflt)
            if not isinstance(vals, list) or not all(isinstance(p, int) and 0 < p < 65536 for p in vals):
                raise PolicyError(f"[policy] {key} must be a list of port numbers, got {vals!r}")
            ports[key] = frozenset(vals)
        if "client_networks" not in d:
            raise PolicyError("[policy] client_networks is required: the proxy serves only the networks listed (no open proxy)")
        own = frozenset() if d.get("allow_proxy_addresses") else frozenset(ipaddress.ip_address(a) for a in own_addresses)
        return cls(
            allow=_patterns(d.get("allow", []), "[policy] allow"),
            deny=_patterns(d.get("deny", []), "[policy] deny"),
            default=default,
            no_decrypt=_patterns(d.get("no_decrypt", []), "[policy] no_decrypt"),
            decrypt=bool(d.get("decrypt", True)),
            connect_ports=ports["connect_ports"],
            http_ports=ports["http_ports"],
            client_networks=_nets(d["client_networks"], "[policy] client_networks"),
            forbidden=_nets(list(DEFAULT_FORBIDDEN) + list(d.get("forbidden_destinations", [])), "[policy] forbidden_destinations"),
            own_addresses=own,
        )

    # ---- decisions -----------------------------------------------------------
    def client_allowed(self, ip: str) -> bool:
        """Only configured client networks may use the proxy."""
        return self._recall(("client", ip), self._client_allowed, ip)

    def destination_allowed(self, ip: str) -> tuple[bool, str]:
        """Whether the proxy may open a connection to ``ip``, and if not why."""
        return self._recall(("dest", ip), self._destination_allowed, ip)

    def _recall(self, key: tuple, decide, *args):
        """The remembered answer for ``key``, else ``decide(*args)`` remembered (bounded)."""
        hit = self._memo.get(key)
        if hit is None:
            if len(self._memo) >= 4096:  # a scan of many addresses or names cannot grow it without end
                self._memo.clear()
            hit = self._memo[key] = decide(*args)
        return hit

    def _client_allowed(self, ip: str) -> bool:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(a in n for n in self.client_networks)

    def _destination_allowed(self, ip: str) -> tuple[bool, str]:
        try:
            a = ipaddress.ip_address(ip)
        except ValueError:
            return False, f"{ip!r} is not an address"
        if a in self.own_addresses:
            return False, f"{ip} is the proxy's own address"
        for n in self.forbidden:
            if a in n:
                return False, f"{ip} is in forbidden destination {n}"
        return True, ""

    def decide(self, name: str, port: int, *, kind: str = "connect") -> Verdict:
        """The FQDN verdict for ``name:port``; ``kind`` is ``connect``/``tls`` (TLS ports) or ``http``."""
        if len(name) > 255:  # never a host name; not worth remembering (and keeps the memo small)
            return self._decide(name, port, kind)
        # a Verdict is immutable and depends on these alone
        return self._recall(("decide", name, port, kind), self._decide, name, port, kind)

    def _decide(self, name: str, port: int, kind: str) -> Verdict:
        ports = self.http_ports if kind == "http" else self.connect_ports
        if port not in ports:
            return Verdict(DENY, False, f"port {port} is not an allowed {'HTTP' if kind == 'http' else 'TLS'} port "
                                        f"({', '.join(map(str, sorted(ports))) or 'none'})")
        try:
            name = normalize(name)
        except BadName:
            pass  # judged (and refused) below as it came
        if not is_hostname(name):
            return Verdict(DENY, False, f"{name[:80]!r} is not a host name (the policy filters names, not addresses)")
        hit = self.deny.match(name)
        if hit is not None:
            return Verdict(DENY, False, f"{name} matches deny {hit}")
        hit = self.allow.match(name)
        if hit is None:
            action, reason = self.default, f"{name} matches no rule; default {self.default}"
        else:
            action, reason = ALLOW, f"{name} matches allow {hit}"
        if action == DENY:
            return Verdict(DENY, False, reason)
        return Verdict(ALLOW, self.wants_decrypt(name), reason)

    def wants_decrypt(self, name: str) -> bool:
        """Decrypt unless decryption is off or the name is a decryption exception."""
        try:
            name = normalize(name)
        except BadName:
            return False  # not a name: nothing to show a certificate for
        return self.decrypt and name not in self.no_decrypt
