"""The PoP's network rules and internet firewall: the rules file compiled, and each new flow's exit (pure).

Theory of operation
-------------------
``[pop] rules`` names a TOML file of ordered ``[[firewall_rule]]`` and
``[[network_rule]]`` tables (docs/backhaul.md has the format).  :func:`load`
checks every table and every value and refuses a bad file with
``path:line: reason``; tomllib keeps no line numbers, so each table's header
line is found in the raw text by order, and a key's line by its name inside
that table's lines.

:meth:`RuleSet.decide` gives a new flow's :class:`pop.sitehub.Exit`:

1. the firewall first, first match wins: ``block`` is the DROP exit whatever
   the network rules say (the Exit still names the network rule that would
   have matched, so the flow line shows both); ``allow`` ends the firewall;
2. then the network rules, first match wins: ``routing = "pop-egress"`` or
   ``backhaul_via = "SITE"``; no match leaves by the PoP's egress;
3. a backhaul to a gateway site that is not connected (``up`` does not hold
   it) takes that site's ``fallback``: the PoP's egress or drop.  The Exit
   keeps ``site`` set to the gateway site it could not reach, with kind
   pop-egress or drop, so the log says whose fallback it was.

Destinations that are domains (``domain:X``: X and below it; ``fqdn:X``: X
only) match an address through the names the PoP's own DNS answers gave it
(``names_of(address)``; pop/dnsmap.py keeps them); bare IPs and CIDRs match
the address itself.

Lookup stays fast at thousands of rules: each rule set indexes its bare
address destinations by prefix length (one dict per length, keyed by the
masked address), its ``domain:`` destinations by name (a flow's names are
walked label by label) and its ``fqdn:`` ones by name.  The candidates of a
flow are the rules any of its destination keys names, plus the rules with no
destination; they are tried in rule order (lowest index first) against the
rest of the rule (source, protocol, ports) and the first that matches wins,
which is exactly first-match over the whole ordered list.
"""

from __future__ import annotations

import heapq
import ipaddress
import re
import socket
import tomllib
from dataclasses import dataclass, field

from ztna.names import BadName, is_hostname, normalize

from .sitehub import BACKHAUL, DROP, POP_EGRESS, Exit

PROTOS = {"tcp": 6, "udp": 17, "icmp": 1}
PROTO_NAMES = {v: k for k, v in PROTOS.items()}
FALLBACKS = (POP_EGRESS, DROP)
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,127}$")  # user:/group: names


class RulesError(ValueError):
    """The rules file is refused; the message is ``path:line: reason``."""


@dataclass(frozen=True)
class GatewaySite:
    """What the rules need to know of a ``[sites]`` entry."""
    name: str
    backhaul_gateway: bool = False
    fallback: str = POP_EGRESS


@dataclass
class Rule:
    index: int                  # position among the rules of its kind
    kind: str                   # "firewall" | "network"
    name: str
    line: int
    action: str = ""            # firewall: "block" | "allow"
    via: str | None = None      # network: the gateway site, or None for pop-egress
    sites: frozenset = frozenset()
    users: frozenset = frozenset()
    groups: frozenset = frozenset()
    src_nets: tuple = ()
    any_source: bool = True
    proto: int | None = None
    ports: tuple = ()           # of (lo, hi); () = any
    dst_nets: tuple = ()
    domains: tuple = ()
    fqdns: tuple = ()
    any_destination: bool = True

    def routing(self) -> str:
        if self.kind == "firewall":
            return self.action
        return f"backhaul via {self.via}" if self.via else POP_EGRESS

    def source_matches(self, site: str | None, src: int | None, groups) -> bool:
        if self.any_source:
            return True
        if site is not None:
            if site.startswith("user:"):
                user = site[5:]
                if user in self.users:
                    return True
                if self.groups and not self.groups.isdisjoint(groups.get(user, ())):
                    return True
            elif site in self.sites:
                return True
        if src is not None:
            for net, mask in self.src_nets:
                if src & mask == net:
                    return True
        return False

    def rest_matches(self, site, src, proto, dport, groups) -> bool:
        if self.proto is not None and proto != self.proto:
            return False
        if self.ports and not any(lo <= dport <= hi for lo, hi in self.ports):
            return False
        return self.source_matches(site, src, groups)


class _Index:
    """One kind's rules, indexed by destination."""

    def __init__(self, rules: list[Rule]):
        self.rules = rules
        self.any_dst: list[int] = [r.index for r in rules if r.any_destination]
        by_len: dict[int, dict[int, list[int]]] = {}
        self.domains: dict[str, list[int]] = {}
        self.fqdns: dict[str, list[int]] = {}
        for r in rules:
            for net, mask in r.dst_nets:
                plen = bin(mask).count("1")
                by_len.setdefault(plen, {}).setdefault(net, []).append(r.index)
            for d in r.domains:
                self.domains.setdefault(d, []).append(r.index)
            for d in r.fqdns:
                self.fqdns.setdefault(d, []).append(r.index)
        self.lengths = [(_mask(plen), table) for plen, table in sorted(by_len.items(), reverse=True)]

    def candidates(self, dst: int | None, names) -> list[list[int]]:
        lists = [self.any_dst] if self.any_dst else []
        if dst is not None:
            for mask, table in self.lengths:
                hit = table.get(dst & mask)
                if hit:
                    lists.append(hit)
        if names and (self.domains or self.fqdns):
            for name in names:
                hit = self.fqdns.get(name)
                if hit:
                    lists.append(hit)
                if self.domains:
                    labels = name.split(".")
                    for i in range(len(labels)):
                        hit = self.domains.get(".".join(labels[i:]))
                        if hit:
                            lists.append(hit)
        return lists

    def first(self, site, src, proto, dst, dport, names, groups) -> Rule | None:
        lists = self.candidates(dst, names)
        if not lists:
            return None
        seq = lists[0] if len(lists) == 1 else heapq.merge(*lists)
        for i in seq:
            r = self.rules[i]
            if r.rest_matches(site, src, proto, dport, groups):
                return r
        return None


def _mask(plen: int) -> int:
    return (0xFFFFFFFF << (32 - plen)) & 0xFFFFFFFF if plen else 0


@dataclass
class Match:
    """What explain prints: the rules that matched and the exit."""
    firewall: Rule | None
    network: Rule | None
    exit: Exit
    fallback: bool = False  # the exit is the gateway site's fallback: the site is not connected


@dataclass
class RuleSet:
    firewall: list[Rule] = field(default_factory=list)
    network: list[Rule] = field(default_factory=list)
    sites: dict = field(default_factory=dict)  # name -> GatewaySite
    path: str = ""
    groups: dict = field(default_factory=dict)  # user -> set of groups (no group directory yet: empty)

    def __post_init__(self):
        self._fw = _Index(self.firewall)
        self._net = _Index(self.network)

    def __len__(self) -> int:
        return len(self.firewall) + len(self.network)

    def match(self, site: str | None, proto: int, src: str | None, dst: str | None, dport: int = 0,
              now: float = 0.0, *, up=None, names_of=None, names=()) -> Match:
        """The firewall rule, the network rule and the exit of a new flow.

        ``site`` is the source site's name (or ``user:NAME``), ``src``/``dst``
        dotted quads (None = unknown: CIDR sources / address destinations do
        not match); ``up`` the gateway sites connected now (None = assume all);
        ``names_of(dst, now)`` the names the PoP's DNS answers gave ``dst``,
        and ``names`` more names to match as if answered."""
        s = _ip(src)
        d = _ip(dst)
        got = list(names)
        if names_of is not None and dst is not None:
            got.extend(names_of(dst, now))
        fw = self._fw.first(site, s, proto, d, dport, got, self.groups) if self.firewall else None
        fw_name = fw.name if fw is not None else None
        net = self._net.first(site, s, proto, d, dport, got, self.groups) if self.network else None
        net_name = net.name if net is not None else None
        if fw is not None and fw.action == "block":
            return Match(fw, net, Exit(DROP, net_name, fw_name, None))
        if net is None or net.via is None:
            return Match(fw, net, Exit(POP_EGRESS, net_name, fw_name, None))
        if up is not None and net.via not in up:
            fb = self.sites[net.via].fallback if net.via in self.sites else POP_EGRESS
            return Match(fw, net, Exit(fb, net_name, fw_name, net.via), fallback=True)
        return Match(fw, net, Exit(BACKHAUL, net_name, fw_name, net.via))

    def decide(self, site: str, proto: int, src: str, dst: str, dport: int, now: float = 0.0, *,
               up=None, names_of=None) -> Exit:
        """A new flow's exit (pop/sitehub.py's hook, with ``now``, the sites ``up`` and the DNS names added)."""
        return self.match(site, proto, src, dst, dport, now, up=up, names_of=names_of).exit

    def domain_rules(self) -> list[Rule]:
        """Rules of either kind with a ``domain:`` or ``fqdn:`` destination (their addresses go to nft sets)."""
        return [r for r in self.firewall + self.network if r.domains or r.fqdns]

    def rules_for_name(self, name: str) -> list[Rule]:
        """The rules (firewall first, each kind in order) whose domain/fqdn destinations cover ``name``."""
        out = []
        labels = name.split(".")
        for idx in (self._fw, self._net):
            hits = set(idx.fqdns.get(name, ()))
            for i in range(len(labels)):
                hits.update(idx.domains.get(".".join(labels[i:]), ()))
            out.extend(idx.rules[i] for i in sorted(hits))
        return out

    def name_matches(self, name: str) -> bool:
        """True if some rule's domain/fqdn destination covers ``name`` (normalized)."""
        for idx in (self._fw, self._net):
            if name in idx.fqdns:
                return True
            labels = name.split(".")
            if any(".".join(labels[i:]) in idx.domains for i in range(len(labels))):
                return True
        return False


def _ip(text: str | None) -> int | None:
    """A dotted quad as an int (inet_aton: the flow's addresses come dotted from the packet, 4x faster than ipaddress)."""
    if text is None:
        return None
    try:
        return int.from_bytes(socket.inet_aton(text), "big") if text.count(".") == 3 else int(ipaddress.IPv4Address(text))
    except OSError:
        return int(ipaddress.IPv4Address(text))  # raises the ValueError a bad address deserves


# ---- loading ------------------------------------------------------------------------------
_HEADER = re.compile(r"^\s*\[\[\s*([A-Za-z0-9_\-\"' .]+?)\s*\]\]")
_TABLE = re.compile(r"^\s*\[\s*([^\[\]]+?)\s*\]")
_KEY = re.compile(r"^\s*(\"[^\"]*\"|'[^']*'|[A-Za-z0-9_\-]+)\s*=")


def _layout(text: str) -> tuple[dict[str, list[tuple[int, int]]], dict[str, int]]:
    """Each ``[[kind]]`` table's (header line, last line), in order, and top-level keys' / tables' lines."""
    lines = text.splitlines()
    tables: dict[str, list[list[int]]] = {}
    top: dict[str, int] = {}
    current = None
    for n, raw in enumerate(lines, 1):
        m = _HEADER.match(raw)
        if m:
            name = m.group(1).strip().strip("\"'")
            current = [n, n]
            tables.setdefault(name, []).append(current)
            top.setdefault(name, n)
            continue
        m = _TABLE.match(raw)
        if m:
            current = None
            top.setdefault(m.group(1).strip().strip("\"'").split(".")[0], n)
            continue
        if current is not None:
            current[1] = n
        else:
            k = _KEY.match(raw)
            if k:
                top.setdefault(k.group(1).strip("\"'"), n)
    return {k: [tuple(v) for v in vs] for k, vs in tables.items()}, top


def _key_line(lines: list[str], span: tuple[int, int], key: str) -> int:
    lo, hi = span
    for n in range(lo + 1, hi + 1):
        m = _KEY.match(lines[n - 1])
        if m and m.group(1).strip("\"'") == key:
            return n
    return lo


FIREWALL_KEYS = {"name", "action", "source", "destination", "protocol", "ports"}
NETWORK_KEYS = {"name", "type", "source", "destination", "protocol", "ports", "backhaul_via", "routing"}


def loads(text: str, path: str, sites: dict[str, GatewaySite]) -> RuleSet:
    """Compile the rules file's ``text`` against the PoP's ``sites``; RulesError ``path:line: reason``."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        m = re.search(r"line (\d+)", str(exc))
        raise RulesError(f"{path}:{m.group(1) if m else 1}: not valid TOML: {exc}") from None
    layout, top = _layout(text)
    lines = text.splitlines()
    for key, value in doc.items():
        if key not in ("firewall_rule", "network_rule"):
            raise RulesError(f"{path}:{top.get(key, 1)}: unknown key or table {key!r}: a rules file holds "
                             "[[firewall_rule]] and [[network_rule]] tables only")
        if not isinstance(value, list) or not all(isinstance(t, dict) for t in value):
            raise RulesError(f"{path}:{top.get(key, 1)}: {key} must be written [[{key}]] (an array of tables)")
    out = {}
    for kind, key, allowed in (("firewall", "firewall_rule", FIREWALL_KEYS), ("network", "network_rule", NETWORK_KEYS)):
        spans = layout.get(key, [])
        tables = doc.get(key, [])
        rules: list[Rule] = []
        names: dict[str, int] = {}
        for i, t in enumerate(tables):
            span = spans[i] if i < len(spans) else (top.get(key, 1), top.get(key, 1))
            rules.append(_rule(kind, i, t, span, lines, path, allowed, sites, names))
        out[kind] = rules
    return RuleSet(out["firewall"], out["network"], dict(sites), path)


def load(path, sites: dict[str, GatewaySite]) -> RuleSet:
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise RulesError(f"{path}:0: no such rules file") from None
    except OSError as exc:
        raise RulesError(f"{path}:0: cannot read it: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise RulesError(f"{path}:{line}: not UTF-8 text") from None
    return loads(text, str(path), sites)


def _rule(kind, index, t, span, lines, path, allowed, sites, names) -> Rule:
    def fail(key: str | None, reason: str):
        line = _key_line(lines, span, key) if key else span[0]
        raise RulesError(f"{path}:{line}: {reason}")

    what = f"[[{kind}_rule]]"
    for k in t:
        if k not in allowed:
            fail(k, f"{what} has unknown key {k!r}; known: {', '.join(sorted(allowed))}")
    name = t.get("name")
    if name is None:
        fail(None, f"{what} needs name = \"...\" (the flow log and explain name the rule by it)")
    if not isinstance(name, str) or not name.strip():
        fail("name", f"{what} name must be a non-empty string")
    name = name.strip()
    label = f"{what} {name!r}"
    if name in names:
        fail("name", f"{label}: the name is taken already by the {kind} rule at line {names[name]}; names must be unique")
    names[name] = span[0]
    r = Rule(index, kind, name, span[0])
    if kind == "firewall":
        action = t.get("action")
        if action not in ("block", "allow"):
            fail("action" if "action" in t else None, f"{label}: action must be \"block\" or \"allow\", not {action!r}")
        r.action = action
    else:
        typ = t.get("type", "internet")
        if typ != "internet":
            fail("type", f"{label}: type = {typ!r}: only \"internet\" rules exist")
        via, routing = t.get("backhaul_via"), t.get("routing")
        if (via is None) == (routing is None):
            fail(None if via is None else "routing", f"{label}: give exactly one of backhaul_via = \"SITE\" or "
                 "routing = \"pop-egress\"")
        if routing is not None and routing != POP_EGRESS:
            fail("routing", f"{label}: routing = {routing!r}: the one routing is \"pop-egress\" (or use backhaul_via)")
        if via is not None:
            if not isinstance(via, str) or via not in sites:
                fail("backhaul_via", f"{label}: backhaul_via = {via!r} is not a site of this PoP ([sites] in pop.toml"
                     f" has {', '.join(sorted(sites)) or 'none'})")
            if not sites[via].backhaul_gateway:
                fail("backhaul_via", f"{label}: site {via!r} is not a gateway site: give it backhaul_gateway = true "
                     "in pop.toml's [sites]")
            r.via = via
    if "protocol" in t:
        p = t["protocol"]
        if p not in PROTOS:
            fail("protocol", f"{label}: protocol = {p!r} must be \"tcp\", \"udp\" or \"icmp\"")
        r.proto = PROTOS[p]
    if "ports" in t:
        r.ports = _ports(t["ports"], lambda why: fail("ports", f"{label}: ports {why}"))
        if r.proto not in (6, 17):
            fail("ports", f"{label}: ports need protocol = \"tcp\" or \"udp\"")
    if "source" in t:
        _sources(r, t["source"], sites, lambda why: fail("source", f"{label}: source {why}"))
    if "destination" in t:
        _destinations(r, t["destination"], lambda why: fail("destination", f"{label}: destination {why}"))
    return r


def _strings(value, fail) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(x, str) for x in value):
        fail("must be a list of strings, e.g. [\"site:branch1\"]")
    if not value:
        fail("is empty: leave the key out to mean any")
    return [x.strip() for x in value]


def _net(text: str, fail) -> ipaddress.IPv4Network:
    try:
        net = ipaddress.ip_network(text)
    except ValueError as exc:
        fail(f"{text!r} is not an IPv4 address or CIDR: {exc}")
    if net.version != 4:
        fail(f"{text!r}: the PoP routes IPv4 only")
    return net


def _is_v6(text: str) -> bool:
    try:
        return ipaddress.ip_network(text, strict=False).version == 6
    except ValueError:
        return False


def _sources(r: Rule, value, sites, fail) -> None:
    s, u, g, nets = set(), set(), set(), []
    for x in _strings(value, fail):
        kind, _, rest = x.partition(":")
        if rest and kind == "site":
            if rest not in sites:
                fail(f"site:{rest} is not a site of this PoP ([sites] has {', '.join(sorted(sites)) or 'none'})")
            s.add(rest)
        elif rest and kind in ("user", "group"):
            if not _NAME_RE.match(rest):
                fail(f"{x!r}: {kind} names are letters, digits and . _ @ -")
            (u if kind == "user" else g).add(rest)
        elif ":" in x and not _is_v6(x):
            fail(f"{x!r}: write site:NAME, user:NAME, group:NAME or an IPv4 address or CIDR")
        else:
            n = _net(x, fail)
            nets.append((int(n.network_address), _mask(n.prefixlen)))
    r.sites, r.users, r.groups, r.src_nets, r.any_source = frozenset(s), frozenset(u), frozenset(g), tuple(nets), False


def _destinations(r: Rule, value, fail) -> None:
    nets: list[ipaddress.IPv4Network] = []
    domains, fqdns = [], []
    for x in _strings(value, fail):
        kind, colon, rest = x.partition(":")
        if colon and kind in ("domain", "fqdn"):
            try:
                name = normalize(rest)
            except BadName as exc:
                fail(f"{x!r} is not a valid domain name: {exc}")
            if not is_hostname(name):
                fail(f"{x!r} is not a valid domain name (letters, digits, '-' and '_' in dot-separated labels)")
            (domains if kind == "domain" else fqdns).append(name)
        elif colon and not _is_v6(x):
            fail(f"{x!r}: write domain:NAME, fqdn:NAME or an IPv4 address or CIDR")
        else:
            try:
                looks_like_name = is_hostname(normalize(x))
            except BadName:
                looks_like_name = False
            if looks_like_name:
                fail(f"{x!r} is a name, not an address: write domain:{x} (with its subdomains) or fqdn:{x}")
            n = _net(x, fail)
            for m in nets:
                if n.overlaps(m):
                    fail(f"{n} overlaps {m} in the same list: one of them is redundant or a typo")
            nets.append(n)
    r.dst_nets = tuple((int(n.network_address), _mask(n.prefixlen)) for n in nets)
    r.domains, r.fqdns, r.any_destination = tuple(domains), tuple(fqdns), False


def _ports(value, fail) -> tuple:
    if not isinstance(value, list) or not value:
        fail("must be a non-empty list such as [443, \"8000-8080\"]")
    out = []
    for p in value:
        if isinstance(p, int) and not isinstance(p, bool):
            lo = hi = p
        elif isinstance(p, str) and re.fullmatch(r"\d{1,5}-\d{1,5}", p.strip()):
            lo, hi = (int(x) for x in p.strip().split("-"))
        else:
            fail(f"{p!r}: each is a port number or a range \"LO-HI\"")
        if not 1 <= lo <= hi <= 65535:
            fail(f"{p!r}: ports are 1..65535, a range low to high")
        out.append((lo, hi))
    return tuple(out)


# ---- explain ------------------------------------------------------------------------------
class ExplainError(ValueError):
    """SRC or DST cannot be read; the message says what to write."""


def explain(rules: RuleSet | None, lans: dict, src: str, dst: str, port: int = 0, proto: str = "tcp") -> dict:
    """What ``ztna pop explain`` prints: the flow as read, the firewall rule, the network rule and the exit.

    ``lans``: site name -> its LAN networks.  SRC is ``site:NAME``, ``user:NAME``
    or an IPv4 address (inside a site's LAN it is that site); DST an IPv4
    address, or a name matched as if the PoP's DNS had answered it.  Every
    gateway site is taken as connected; the answer says what its fallback
    would be if it were not."""
    if proto not in PROTOS:
        raise ExplainError(f"--proto {proto!r}: tcp, udp or icmp")
    site = src_ip = None
    if src.startswith("site:"):
        site = src[5:]
        if site not in lans:
            raise ExplainError(f"{src}: no such site in [sites] (known: {', '.join(sorted(lans)) or 'none'})")
    elif src.startswith("user:"):
        if not _NAME_RE.match(src[5:]):
            raise ExplainError(f"{src}: user names are letters, digits and . _ @ -")
        site = src
    else:
        try:
            addr = ipaddress.IPv4Address(src)
        except ValueError:
            raise ExplainError(f"SRC {src!r}: write site:NAME, user:NAME or an IPv4 address") from None
        src_ip = addr.compressed
        best = None
        for name, nets in lans.items():
            for n in nets:
                if addr in n and (best is None or n.prefixlen > best[1]):
                    best = (name, n.prefixlen)
        site = best[0] if best else None
    dst_ip, names = None, ()
    try:
        dst_ip = ipaddress.IPv4Address(dst).compressed
    except ValueError:
        try:
            n = normalize(dst)
        except BadName as exc:
            raise ExplainError(f"DST {dst!r} is neither an IPv4 address nor a name: {exc}") from None
        if not is_hostname(n):
            raise ExplainError(f"DST {dst!r} is neither an IPv4 address nor a name")
        names = (n,)
    out = {"source": {"site": site, "address": src_ip}, "destination": {"address": dst_ip, "name": names[0] if names
                                                                        else None},
           "proto": proto, "port": port, "rules_file": rules.path if rules is not None else None}
    if rules is None:
        out.update(firewall_rule=None, network_rule=None, exit=POP_EGRESS, site=None, fallback=None)
        return out
    m = rules.match(site, PROTOS[proto], src_ip, dst_ip, port, names=names)

    def rule(r: Rule | None):
        return None if r is None else {"name": r.name, "line": r.line, "action": r.routing()}

    out.update(firewall_rule=rule(m.firewall), network_rule=rule(m.network), exit=m.exit.kind, site=m.exit.site)
    via = m.network.via if m.network is not None else None
    out["fallback"] = (rules.sites[via].fallback if via in rules.sites else POP_EGRESS) if via else None
    return out


def explain_text(e: dict) -> str:
    """``explain``'s answer as a small table for people."""
    src = e["source"]
    who = (f"site {src['site']}" if src["site"] and not src["site"].startswith("user:") else src["site"] or "no site")
    if src["address"]:
        who += f" ({src['address']})"
    d = e["destination"]
    to = d["address"] or f"{d['name']} (an address the PoP's DNS answered for it)"
    port = f"/{e['port']}" if e["port"] else ""
    rows = [("flow", f"{who} -> {to} {e['proto']}{port}")]

    def rule(r, none):
        return none if r is None else f"{r['name']!r} ({e['rules_file']}:{r['line']}): {r['action']}"

    if e["rules_file"] is None:
        rows.append(("rules", "none ([pop] rules is not set): everything leaves by the PoP's egress"))
    else:
        rows.append(("firewall", rule(e["firewall_rule"], "no rule matches: allowed")))
        rows.append(("network", rule(e["network_rule"], "no rule matches: pop-egress")))
    ex = e["exit"]
    if ex == BACKHAUL:
        ex = f"backhaul via {e['site']} (if {e['site']} is not connected: {e['fallback']})"
    elif ex == DROP and e["firewall_rule"] is not None:
        ex = f"drop (blocked by the firewall rule {e['firewall_rule']['name']!r})"
    rows.append(("exit", ex))
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"{k:<{width}}  {v}" for k, v in rows)
