"""The agent's configuration (``[agent]`` in agent.toml)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file, section
from ztna.names import BadName, PatternSet, normalize


@dataclass
class AgentConfig:
    """Every setting of the agent; see docs/agent.md for each."""

    cert: str
    key: str
    ca: str
    gateway: str
    apps: list[str]
    gateway_port: int = 443
    udp: bool = False                     # the UDP data channel (docs/datachannel.md); off: all data in TLS
    udp_mtu: int = 1400                   # the largest inner packet sent in one datagram
    tun: str = "ztna0"
    network: str = "100.64.0.0/10"
    address: str = "100.64.0.1"
    dns_stub: str = "100.64.0.2"
    resolv_conf: str = "/etc/resolv.conf"
    dns_backend: str = "auto"            # auto | resolvconf | resolved (ztna/resolved.py)
    resolvectl: str = "resolvectl"       # the command the resolved backend runs
    state_dir: str = "/run/ztna-agent"
    dns_ttl: int = 10
    idle_timeout: float = 300.0
    keepalive: float = 15.0
    connect_timeout: float = 5.0
    max_leases: int = 4096                # leases at once, in total
    max_leases_per_wildcard: int = 256    # leases at once for the names below one *.domain
    log_level: str = "INFO"
    patterns: PatternSet = field(default_factory=PatternSet, repr=False, init=False)  # derived from apps
    metrics_listen: tuple | None = field(default=None, init=False)  # [metrics] listen: Prometheus, off when None
    internet: object = field(default=None, init=False)  # InternetConfig from [internet], or None (split tunnel)


@dataclass
class InternetConfig:
    """``[internet]``: full-tunnel internet through the PoP (docs/backhaul.md, "Mobile users").

    The agent runs a site tunnel of its own (backhaul/site.py) to the PoP's ``pop_name`` with its
    certificate; a second TUN takes 0.0.0.0/1 and 128.0.0.0/1 with ``address`` (the address the PoP's
    ``[mobile]`` table gives this identity), the PoP's address stays on today's route.  The private
    apps' 100.64/10 leases and the DNS stub stay as they are."""
    pop: str                       # the PoP's address
    pop_name: str                  # SNI of site tunnels at the PoP ([pop] site_name)
    address: str                   # this user's address at the PoP ([mobile] there)
    mode: str = "full"             # "full": every internet destination through the PoP
    tun: str = "ztna-inet0"
    port: int = 443


def load(path: Path) -> AgentConfig:
    data = load_file(path)
    cfg: AgentConfig = section(AgentConfig, data, "agent", path)
    cfg.internet = _internet(data, path) if "internet" in data else None
    if cfg.internet is not None and ipaddress.IPv4Address(cfg.internet.address) in ipaddress.IPv4Network(cfg.network):
        raise ConfigError(f"{path}: [internet] address {cfg.internet.address} is inside the private apps' network "
                          f"{cfg.network}: take the one the PoP's [mobile] table gives you")
    from ztna.metrics import listen_from

    cfg.metrics_listen = listen_from(data, str(path))
    try:
        net = ipaddress.IPv4Network(cfg.network)
        for key in ("address", "dns_stub"):
            if ipaddress.IPv4Address(getattr(cfg, key)) not in net:
                raise ConfigError(f"{path}: [agent] {key} = {getattr(cfg, key)} is not inside network {cfg.network}")
    except ValueError as exc:
        raise ConfigError(f"{path}: [agent] bad address or network: {exc}") from exc
    for key in ("max_leases", "max_leases_per_wildcard"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{path}: [agent] {key} = {getattr(cfg, key)} must be at least 1")
    if cfg.dns_backend not in ("auto", "resolvconf", "resolved"):
        raise ConfigError(f"{path}: [agent] dns_backend = {cfg.dns_backend!r} is not 'auto', 'resolvconf' or 'resolved'")
    if cfg.address == cfg.dns_stub:
        raise ConfigError(f"{path}: [agent] address and dns_stub must differ")
    try:
        cfg.patterns = PatternSet(cfg.apps)
        gw = normalize(cfg.gateway)
    except BadName as exc:
        raise ConfigError(f"{path}: [agent] {exc}") from exc
    if gw in cfg.patterns:
        raise ConfigError(f"{path}: [agent] apps cover the gateway's own name {gw}; the tunnel could never be built")
    if not cfg.apps:
        raise ConfigError(f"{path}: [agent] apps is empty: name at least one private application")
    for key in ("cert", "key", "ca"):
        if not Path(getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: [agent] {key} = {getattr(cfg, key)} does not exist")
    return cfg


def _internet(data: dict, path: Path) -> InternetConfig:
    inet: InternetConfig = section(InternetConfig, data, "internet", path)
    if inet.mode != "full":
        raise ConfigError(f"{path}: [internet] mode = {inet.mode!r}: only \"full\" exists (remove [internet] for "
                          "private apps only)")
    for key in ("pop", "address"):
        try:
            ipaddress.IPv4Address(getattr(inet, key))
        except ValueError:
            raise ConfigError(f"{path}: [internet] {key} = {getattr(inet, key)!r} should be an IPv4 address") from None
    try:
        normalize(inet.pop_name)
    except BadName as exc:
        raise ConfigError(f"{path}: [internet] pop_name: {exc}") from exc
    return inet
