"""``dns.toml``: the resolver's one configuration file (format in docs/dns-security.md).

Loading is pure apart from reading the files the config names; every error
names the file, the key and what to write instead.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file
from ztna.metrics import parse_listen

from .answers import Column
from .names import BadName
from .policy import CategoryDB, DomainSet, Policy, PolicySet
from .tunnel import TunnelConfig




@dataclass
class BlockPage:
    """Where blocked A/AAAA answers point, and the block-page server's settings."""

    address: str = "192.0.2.80"
    address6: str = ""
    by_reason: dict[str, str] = field(default_factory=dict)
    by_reason6: dict[str, str] = field(default_factory=dict)
    serve: bool = True
    http_port: int = 80
    https_port: int = 443
    ca_cert: Path | None = None
    ca_key: Path | None = None

    def addresses(self, reason: str, column: Column | None) -> tuple[str, str]:
        """(IPv4, IPv6) for a block: by list/category name, then by column, then the default."""
        for key in (reason, column.value if column else None):
            if key and key in self.by_reason:
                v4 = self.by_reason[key]
                return v4, self.by_reason6.get(key) or f"::ffff:{v4}"
        return self.address, self.address6 or f"::ffff:{self.address}"

    def all_addresses(self) -> list[str]:
        return list(dict.fromkeys([self.address, *self.by_reason.values()]))


@dataclass
class Config:
    """Everything ``ztna dns run`` needs."""

    listen: list[str]
    port: int
    upstreams: list[tuple[str, int]]
    policies: PolicySet
    blockpage: BlockPage
    tunnel: TunnelConfig
    upstream_timeout: float = 2.0
    block_ttl: int = 30
    negative_ttl: int = 60
    max_ttl: int = 86_400
    cache_size: int = 100_000
    query_log: Path | None = None
    rate_qps: float = 0.0
    rate_burst: float = 0.0
    tcp_idle: float = 10.0
    tcp_per_client: int = 16
    udp_batch: bool = True
    # Sources whose EDNS0 device ids are believed (None: every served source, the behaviour before the option).
    device_id_networks: tuple | None = None
    metrics_listen: tuple[str, int] | None = None  # [metrics] listen: the Prometheus endpoint, off when None
    source: str = "dns.toml"


def _get(table: dict, key: str, kind, default, where: str):
    v = table.get(key, default)
    if kind is float and isinstance(v, int) and not isinstance(v, bool):
        v = float(v)
    if not isinstance(v, kind) or (kind is int and isinstance(v, bool)):
        raise ConfigError(f"{where}.{key} must be {kind.__name__}, got {v!r}")
    return v


def _strs(table: dict, key: str, where: str) -> list[str]:
    v = table.get(key, [])
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise ConfigError(f"{where}.{key} must be a list of strings, got {v!r}")
    return v


def _addr(text: str, where: str) -> str:
    try:
        return str(ipaddress.ip_address(text))
    except ValueError as exc:
        raise ConfigError(f"{where}: {text!r} is not an IP address") from exc


def _hostport(text: str, where: str) -> tuple[str, int]:
    host, port = text, 53
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = int(rest[1:]) if rest.startswith(":") else 53
    elif text.count(":") == 1:
        host, p = text.split(":")
        port = int(p)
    return _addr(host, where), port


def read_domain_file(path: Path) -> list[str]:
    """One domain a line; ``#`` starts a comment; a leading ``*.`` is allowed (subdomains are covered anyway)."""
    out = []
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            out.append(line.removeprefix("*."))
    return out


def read_category_file(path: Path, db: CategoryDB) -> None:
    """Lines ``domain category[,category...]``; ``#`` starts a comment."""
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.replace(",", " ").split()
        if len(parts) < 2:
            raise ConfigError(f"{path}:{n}: expected 'domain category[,category...]', got {line!r}")
        try:
            db.add(parts[0].removeprefix("*."), *parts[1:])
        except BadName as exc:
            raise ConfigError(f"{path}:{n}: {exc}") from exc


_KNOWN = {
    "server": {"listen", "port", "upstreams", "query_log", "upstream_timeout", "block_ttl", "negative_ttl", "max_ttl",
               "cache_size", "tcp_idle", "tcp_per_client", "udp_batch", "device_id_networks"},
    "ratelimit": {"qps", "burst"},
    "metrics": {"listen"},
    "blockpage": {"address", "address6", "addresses", "addresses6", "serve", "http_port", "https_port", "ca_cert",
                  "ca_key"},
    "categories": {"files", "domains", "security"},
    "lists": {"domains", "files"},
    "policy": {"name", "networks", "devices", "block_categories", "block_lists", "allow_lists"},
}


def _known(table, kind: str, where: str, source: str) -> None:
    """A typo in a key must not be silently ignored (it would leave a setting at its default)."""
    if not isinstance(table, dict):
        raise ConfigError(f"{source}: [{where}] must be a table")
    unknown = set(table) - _KNOWN[kind]
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) in [{where}]: {', '.join(sorted(unknown))}; "
                          f"known: {', '.join(sorted(_KNOWN[kind]))}")


def load(path: Path) -> Config:
    """Read and check ``path``."""
    path = Path(path)
    doc = load_file(path)
    return from_dict(doc, path.parent, source=str(path))


def from_dict(doc: dict, base: Path = Path("."), *, source: str = "dns.toml") -> Config:
    """Build a Config from parsed TOML; relative file names are relative to ``base``."""
    def rel(p: str) -> Path:
        pp = Path(p)
        return pp if pp.is_absolute() else base / pp

    known = {"server", "ratelimit", "blockpage", "categories", "lists", "tunneling", "policy", "metrics"}
    unknown = set(doc) - known
    if unknown:
        raise ConfigError(f"{source}: unknown section(s) {sorted(unknown)}; known: {sorted(known)}")
    for kind in ("server", "ratelimit", "blockpage", "categories", "metrics"):
        _known(doc.get(kind, {}), kind, kind, source)
    for lname, ldoc in doc.get("lists", {}).items():
        _known(ldoc, "lists", f"lists.{lname}", source)
    for i, pdoc in enumerate(doc.get("policy", [])):
        _known(pdoc, "policy", f"policy[{i}]", source)
    srv = doc.get("server", {})
    listen = [_addr(a, "server.listen") for a in _strs(srv, "listen", "server")] or ["127.0.0.1"]
    upstreams = [_hostport(u, "server.upstreams") for u in _strs(srv, "upstreams", "server")]
    if not upstreams:
        raise ConfigError(f"{source}: server.upstreams is empty; name at least one DNS server to forward to")
    log_path = _get(srv, "query_log", str, "", "server")
    device_nets = None
    if "device_id_networks" in srv:
        try:
            device_nets = tuple(ipaddress.ip_network(n, strict=False)
                                for n in _strs(srv, "device_id_networks", "server"))
        except ValueError as exc:
            raise ConfigError(f"{source}: server.device_id_networks: {exc}") from exc

    bp_doc = doc.get("blockpage", {})
    by_reason = {k: _addr(v, f"blockpage.addresses.{k}") for k, v in bp_doc.get("addresses", {}).items()}
    by_reason6 = {k: _addr(v, f"blockpage.addresses6.{k}") for k, v in bp_doc.get("addresses6", {}).items()}
    bp = BlockPage(
        address=_addr(_get(bp_doc, "address", str, "192.0.2.80", "blockpage"), "blockpage.address"),
        address6=_get(bp_doc, "address6", str, "", "blockpage"),
        by_reason=by_reason, by_reason6=by_reason6,
        serve=_get(bp_doc, "serve", bool, True, "blockpage"),
        http_port=_get(bp_doc, "http_port", int, 80, "blockpage"),
        https_port=_get(bp_doc, "https_port", int, 443, "blockpage"),
        ca_cert=rel(bp_doc["ca_cert"]) if bp_doc.get("ca_cert") else None,
        ca_key=rel(bp_doc["ca_key"]) if bp_doc.get("ca_key") else None,
    )
    if bp.address6:
        bp.address6 = _addr(bp.address6, "blockpage.address6")
    if bp.https_port and bp.serve and not (bp.ca_cert and bp.ca_key):
        raise ConfigError(f"{source}: the HTTPS block page needs blockpage.ca_cert and blockpage.ca_key (or https_port = 0)")

    cats = CategoryDB()
    cat_doc = doc.get("categories", {})
    for f in _strs(cat_doc, "files", "categories"):
        try:
            read_category_file(rel(f), cats)
        except OSError as exc:
            raise ConfigError(f"categories.files: cannot read {rel(f)}: {exc.strerror}") from exc
    for dom, cs in cat_doc.get("domains", {}).items():
        cs = [cs] if isinstance(cs, str) else cs
        try:
            cats.add(dom, *cs)
        except BadName as exc:
            raise ConfigError(f"categories.domains: {exc}") from exc
    extra_security = frozenset(c.lower() for c in _strs(cat_doc, "security", "categories"))

    lists: dict[str, DomainSet] = {}
    for lname, ldoc in doc.get("lists", {}).items():
        names = list(_strs(ldoc, "domains", f"lists.{lname}"))
        for f in _strs(ldoc, "files", f"lists.{lname}"):
            try:
                names += read_domain_file(rel(f))
            except OSError as exc:
                raise ConfigError(f"lists.{lname}.files: cannot read {rel(f)}: {exc.strerror}") from exc
        try:
            lists[lname] = DomainSet(names)
        except BadName as exc:
            raise ConfigError(f"lists.{lname}: {exc}") from exc

    policies = []
    for i, p in enumerate(doc.get("policy", [])):
        where = f"policy[{i}]"
        name = _get(p, "name", str, f"policy-{i}", where)
        try:
            nets = [ipaddress.ip_network(n, strict=False) for n in _strs(p, "networks", where)]
        except ValueError as exc:
            raise ConfigError(f"{where}.networks: {exc}") from exc

        def pick(key: str) -> list[tuple[str, DomainSet]]:
            out = []
            for ln in _strs(p, key, where):
                if ln not in lists:
                    raise ConfigError(f"{where}.{key} names list {ln!r}, which no [lists.{ln}] section defines")
                out.append((ln, lists[ln]))
            return out

        policies.append(Policy(
            name=name, networks=nets, devices=frozenset(_strs(p, "devices", where)),
            block_categories=frozenset(c.lower() for c in _strs(p, "block_categories", where)),
            block_lists=pick("block_lists"), allow_lists=pick("allow_lists"),
        ))
    if not policies:
        raise ConfigError(f"{source}: no [[policy]]; without one the resolver serves nobody")

    tdoc = doc.get("tunneling", {})
    tc = TunnelConfig()
    for k, v in tdoc.items():
        if not hasattr(tc, k):
            raise ConfigError(f"tunneling.{k} is not a setting; known: {sorted(vars(tc))}")
        setattr(tc, k, _get(tdoc, k, type(getattr(tc, k)), None, "tunneling"))

    rl = doc.get("ratelimit", {})
    return Config(
        listen=listen, port=_get(srv, "port", int, 53, "server"), upstreams=upstreams,
        policies=PolicySet(policies, cats, extra_security=extra_security), blockpage=bp, tunnel=tc,
        upstream_timeout=_get(srv, "upstream_timeout", float, 2.0, "server"),
        block_ttl=_get(srv, "block_ttl", int, 30, "server"),
        negative_ttl=_get(srv, "negative_ttl", int, 60, "server"),
        max_ttl=_get(srv, "max_ttl", int, 86_400, "server"),
        cache_size=_get(srv, "cache_size", int, 100_000, "server"),
        query_log=rel(log_path) if log_path else None,
        rate_qps=_get(rl, "qps", float, 0.0, "ratelimit"),
        rate_burst=_get(rl, "burst", float, 0.0, "ratelimit"),
        tcp_idle=_get(srv, "tcp_idle", float, 10.0, "server"),
        tcp_per_client=_get(srv, "tcp_per_client", int, 16, "server"),
        udp_batch=_get(srv, "udp_batch", bool, True, "server"),
        device_id_networks=device_nets,
        metrics_listen=(parse_listen(doc["metrics"]["listen"], "[metrics] listen")
                        if doc.get("metrics", {}).get("listen") else None),
        source=source,
    )
