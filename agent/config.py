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


def load(path: Path) -> AgentConfig:
    data = load_file(path)
    cfg: AgentConfig = section(AgentConfig, data, "agent", path)
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
