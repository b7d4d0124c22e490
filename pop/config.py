"""The PoP's configuration: ``[pop]``, ``[policy]``, ``[connectors]`` and ``[agentless]`` in pop.toml (docs/pop.md).

``[agentless]`` with its ``[[agentless.app]]`` tables is the gateway's section
(gateway/agentless/config.py, the same parser): each app's ``name`` is its public
name, served at the PoP (login form or client certificate, then ``[policy]``)
and relayed on a ``stream`` channel to a connector publishing it.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file, section
from ztna.names import BadName, PatternSet, normalize

from .policy import PopPolicy


@dataclass
class PopConfig:
    listen: str
    cert: str                  # the PoP's certificate: its SANs hold tunnel_name and connector_name
    key: str
    ca: str                    # agents' and connectors' client certificates chain to this CA
    tunnel_name: str           # SNI of agents' tunnels
    connector_name: str        # SNI of connector tunnels
    port: int = 443
    handshake_timeout: float = 10.0
    max_pending: int = 512               # connections between accept and an established tunnel, in total
    max_pending_per_source: int = 32     # ... and from one source address
    pressure_handshake_timeout: float = 2.0  # the deadline of new ones while half of max_pending wait
    keepalive: float = 15.0
    queue_limit: int = 4 * 1024 * 1024
    window: int = 1024 * 1024  # credit granted per channel
    flow_log: str = ""         # JSON lines, one per flow; "" = the log only
    log_level: str = "INFO"
    alias_names: list[str] = field(default_factory=list)  # names routed to the agentless front (with its apps')
    site_name: str = ""        # SNI of site routers' tunnels (ztna site run); "" = no sites
    tun: str = "ztna-pop0"     # the TUN the sites' packets enter the PoP's routing by
    tun_address: str = "100.127.255.254/32"
    egress_address: str = ""   # sites' internet traffic leaves with this source (nft masquerade/SNAT)
    egress_interface: str = ""  # ... out of this interface
    crl: str = ""              # the CA's CRL (ztna pki revoke): checked at each handshake, re-read each second
    rules: str = ""            # the network rules and internet firewall file (pop/netrules.py); "" = all via egress
    dns_upstream: str = ""     # "IP" or "IP:PORT": the PoP answers its sites' DNS on tun_address, forwarding here
    dns_max_entries: int = 100_000  # address/name pairs learnt from those answers (pop/dnsmap.py), at most
    sites: dict = field(default_factory=dict, init=False)  # from [sites]: identity -> SiteEntry
    rule_set: object = field(default=None, init=False)  # pop.netrules.RuleSet from ``rules``, or None
    agentless: object = field(default=None, init=False)  # gateway.agentless.config.AgentlessConfig or None


@dataclass(frozen=True)
class SiteEntry:
    name: str
    lan: tuple
    backhaul_gateway: bool = False   # network rules may send internet traffic out of this site's own line
    fallback: str = "pop-egress"     # a gateway site not connected: "pop-egress" or "drop"


SITE_KEYS = ("lan", "backhaul_gateway", "fallback")


def _sites(data: dict, path: Path, cfg: PopConfig) -> dict:
    """``[sites]``: certificate identity -> {lan = [prefixes]}; the identity is the site's name."""
    table = data.get("sites", {})
    if table and not cfg.site_name:
        raise ConfigError(f"{path}: [sites] needs [pop] site_name, the SNI site routers dial")
    if cfg.site_name and not cfg.egress_interface:
        raise ConfigError(f"{path}: [pop] site_name needs egress_interface (and egress_address) for the sites' "
                          "internet traffic")
    out = {}
    seen: list[tuple[ipaddress.IPv4Network, str]] = []
    for ident, entry in table.items():
        if not isinstance(entry, dict) or not isinstance(entry.get("lan"), list) or not entry["lan"]:
            raise ConfigError(f"{path}: [sites] {ident} needs lan = [\"10.10.0.0/24\"], the prefixes it routes")
        unknown = sorted(set(entry) - set(SITE_KEYS))
        if unknown:
            raise ConfigError(f"{path}: [sites] {ident} has unknown key(s) {', '.join(unknown)}; known: "
                              f"{', '.join(SITE_KEYS)}")
        gw = entry.get("backhaul_gateway", False)
        if not isinstance(gw, bool):
            raise ConfigError(f"{path}: [sites] {ident} backhaul_gateway = {gw!r} should be true or false")
        fallback = entry.get("fallback", "pop-egress")
        if fallback not in ("pop-egress", "drop"):
            raise ConfigError(f"{path}: [sites] {ident} fallback = {fallback!r} should be \"pop-egress\" or \"drop\"")
        if "fallback" in entry and not gw:
            raise ConfigError(f"{path}: [sites] {ident} fallback is only for a gateway site (backhaul_gateway = true)")
        try:
            nets = tuple(ipaddress.IPv4Network(p) for p in entry["lan"])
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: [sites] {ident} lan: {exc}") from exc
        for n in nets:
            for m, other in seen:
                if n.overlaps(m):
                    raise ConfigError(f"{path}: [sites] {ident} lan {n} overlaps {other}'s {m}: "
                                      "the PoP could not tell whose replies are whose")
            seen.append((n, ident))
        out[ident] = SiteEntry(ident, nets, gw, fallback)
    return _mobile(data, path, cfg, out, seen)


def _mobile(data: dict, path: Path, cfg: PopConfig, out: dict, seen: list) -> dict:
    """``[mobile]``: agent identity -> its address for full-tunnel internet (``[internet]`` in agent.toml).

    Each mobile user is a site of one address to the hub, named ``user:IDENTITY``: the same tunnel
    (SNI ``site_name``), anti-spoofing, network rules (``user:`` sources), egress and flow lines."""
    table = data.get("mobile", {})
    if not isinstance(table, dict):
        raise ConfigError(f"{path}: [mobile] must be a table of identity = \"10.99.0.10\"")
    if table and not cfg.site_name:
        raise ConfigError(f"{path}: [mobile] needs [pop] site_name, the SNI full-tunnel agents dial")
    for ident, addr in table.items():
        if ident in out:
            raise ConfigError(f"{path}: [mobile] {ident} is also a site in [sites]: one identity, one role")
        try:
            net = ipaddress.IPv4Network(f"{addr}/32")
        except (ValueError, TypeError) as exc:
            raise ConfigError(f"{path}: [mobile] {ident} = {addr!r} should be one IPv4 address: {exc}") from exc
        for m, other in seen:
            if net.overlaps(m):
                raise ConfigError(f"{path}: [mobile] {ident} {net.network_address} is inside {other}'s {m}: "
                                  "the PoP could not tell whose replies are whose")
        seen.append((net, f"user:{ident}"))
        out[ident] = SiteEntry(f"user:{ident}", (net,))
    return out


def dns_upstream(cfg: PopConfig, path="pop.toml") -> tuple[str, int]:
    """``[pop] dns_upstream`` as (address, port)."""
    host, _, port = cfg.dns_upstream.partition(":")
    try:
        ipaddress.IPv4Address(host)
        p = int(port) if port else 53
        if not 0 < p < 65536:
            raise ValueError(f"port {p} is not 1..65535")
    except ValueError as exc:
        raise ConfigError(f"{path}: [pop] dns_upstream = {cfg.dns_upstream!r}: write \"IP\" or \"IP:PORT\" ({exc})") \
            from None
    return host, p


def rule_sites(cfg: PopConfig) -> dict:
    """[sites] as the rules see them (pop/netrules.py)."""
    from .netrules import GatewaySite

    return {n: GatewaySite(n, e.backhaul_gateway, e.fallback) for n, e in cfg.sites.items()
            if not e.name.startswith("user:")}  # [mobile] users are sources (user:NAME), never sites


def load_rules(cfg: PopConfig):
    """``[pop] rules`` compiled against ``[sites]``; ConfigError ``path:line: reason`` for a bad file."""
    from .netrules import RulesError, load as load_netrules

    try:
        return load_netrules(cfg.rules, rule_sites(cfg))
    except RulesError as exc:
        raise ConfigError(str(exc)) from None


def load(path: Path) -> tuple[PopConfig, PopPolicy]:
    data = load_file(path)
    cfg: PopConfig = section(PopConfig, data, "pop", path)
    try:
        ipaddress.IPv4Address(cfg.listen)
    except ValueError as exc:
        raise ConfigError(f"{path}: [pop] listen: {exc}") from exc
    try:
        cfg.tunnel_name = normalize(cfg.tunnel_name)
        cfg.connector_name = normalize(cfg.connector_name)
    except BadName as exc:
        raise ConfigError(f"{path}: [pop] {exc}") from exc
    if cfg.tunnel_name == cfg.connector_name:
        raise ConfigError(f"{path}: [pop] tunnel_name and connector_name must differ (the PoP routes by SNI)")
    for key in ("max_pending", "max_pending_per_source"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{path}: [pop] {key} = {getattr(cfg, key)} must be at least 1")
    if not 4096 <= cfg.window <= 64 * 1024 * 1024:
        raise ConfigError(f"{path}: [pop] window = {cfg.window} must be 4096..67108864")
    tables = {}
    for name, example in (("policy", 'alice = ["app.mycompany.net"]'), ("connectors", 'gw1 = ["app.mycompany.net"]')):
        table = data.get(name, {})
        if not isinstance(table, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v)
                                                  for v in table.values()):
            raise ConfigError(f"{path}: [{name}] maps each identity to a list of patterns, e.g. {example}")
        try:
            for v in table.values():
                PatternSet(v)
        except BadName as exc:
            raise ConfigError(f"{path}: [{name}] {exc}") from exc
        tables[name] = table
    for key in ("cert", "key", "ca"):
        if not Path(getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: [pop] {key} = {getattr(cfg, key)} does not exist")
    if cfg.crl:
        from ztna.crl import check_config

        check_config(cfg.crl, cfg.ca, f"{path}: [pop] crl")
    if cfg.site_name:
        try:
            cfg.site_name = normalize(cfg.site_name)
        except BadName as exc:
            raise ConfigError(f"{path}: [pop] site_name: {exc}") from exc
        if cfg.site_name in (cfg.tunnel_name, cfg.connector_name):
            raise ConfigError(f"{path}: [pop] site_name must differ from tunnel_name and connector_name")
        try:
            ipaddress.IPv4Interface(cfg.tun_address)
            if cfg.egress_address:
                ipaddress.IPv4Address(cfg.egress_address)
        except ValueError as exc:
            raise ConfigError(f"{path}: [pop] tun_address / egress_address: {exc}") from exc
    cfg.sites = _sites(data, path, cfg)
    if cfg.dns_upstream:
        if not cfg.site_name:
            raise ConfigError(f"{path}: [pop] dns_upstream is the sites' DNS: it needs site_name")
        dns_upstream(cfg, path)
    if cfg.dns_max_entries < 1:
        raise ConfigError(f"{path}: [pop] dns_max_entries = {cfg.dns_max_entries} must be at least 1")
    if cfg.rules:
        cfg.rule_set = load_rules(cfg)
    if "agentless" in data:
        from gateway.agentless import config as agentless_config

        raw = data["agentless"]
        if isinstance(raw, dict) and "tunnel_names" not in raw:
            # Names the front hands back untouched: at the PoP, the agent and connector endpoints.
            raw = {**raw, "tunnel_names": [cfg.tunnel_name, cfg.connector_name]}
        cfg.agentless = agentless_config.load({"agentless": raw}, path, default_ca=cfg.ca)
    return cfg, PopPolicy(tables["policy"], tables["connectors"])
