"""The gateway's configuration: ``[gateway]`` and ``[policy]`` in gateway.toml."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file, section
from ztna.names import BadName, PatternSet

from .policy import Policy


@dataclass
class GatewayConfig:
    """Every setting of the gateway; see docs/agent.md ("The gateway")."""

    listen: str
    cert: str
    key: str
    ca: str
    private_dns: list[str]
    port: int = 443
    udp_port: int = 0                    # the UDP data channel's port (docs/datachannel.md), e.g. 51820; 0 = off
    udp_mtu: int = 1400                  # the largest inner packet sent in one datagram
    tun: str = "ztgw0"
    inside_network: str = "10.254.0.0/16"
    agent_network: str = "100.64.0.0/10"
    handshake_timeout: float = 10.0
    keepalive: float = 15.0
    max_sessions: int = 1000
    max_pending: int = 256               # TLS handshakes waiting at once, in total
    max_pending_per_source: int = 32     # ... and from one source address
    pressure_handshake_timeout: float = 2.0  # the deadline of new handshakes while half of max_pending wait
    queue_limit: int = 8 * 1024 * 1024
    crl: str = ""                        # the CA's CRL (`ztna pki revoke`), re-read when it changes; "" = none
    log_level: str = "INFO"
    agentless: object = field(default=None, init=False)  # gateway.agentless.config.AgentlessConfig, from [agentless]
    metrics_listen: tuple | None = field(default=None, init=False)  # [metrics] listen: Prometheus, off when None
    pop: object = field(default=None, init=False)  # gateway.connector.PopLink, from [pop]: connector mode


def load(path: Path) -> tuple[GatewayConfig, Policy]:
    data = load_file(path)
    cfg: GatewayConfig = section(GatewayConfig, data, "gateway", path)
    try:
        ipaddress.IPv4Address(cfg.listen)
        ipaddress.IPv4Network(cfg.inside_network)
        ipaddress.IPv4Network(cfg.agent_network)
        for s in cfg.private_dns:
            ipaddress.IPv4Address(s)
    except ValueError as exc:
        raise ConfigError(f"{path}: [gateway] bad address: {exc}") from exc
    for key in ("max_pending", "max_pending_per_source"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{path}: [gateway] {key} = {getattr(cfg, key)} must be at least 1")
    if not cfg.private_dns:
        raise ConfigError(f"{path}: [gateway] private_dns is empty: name the private DNS server(s)")
    table = data.get("policy", {})
    if not isinstance(table, dict) or not all(isinstance(v, list) and all(isinstance(x, str) for x in v) for v in table.values()):
        raise ConfigError(f"{path}: [policy] maps each identity to a list of application patterns, e.g. alice = [\"app.mycompany.net\"]")
    try:
        for v in table.values():
            PatternSet(v)
    except BadName as exc:
        raise ConfigError(f"{path}: [policy] {exc}") from exc
    for key in ("cert", "key", "ca"):
        if not Path(getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: [gateway] {key} = {getattr(cfg, key)} does not exist")
    if cfg.crl:
        from ztna.crl import check_config

        check_config(cfg.crl, cfg.ca, f"{path}: [gateway] crl")
    from .agentless.config import load as load_agentless

    cfg.agentless = load_agentless(data, path, default_ca=cfg.ca)
    from ztna.metrics import listen_from

    cfg.metrics_listen = listen_from(data, str(path))
    from .connector import load_pop

    cfg.pop = load_pop(data, path, default_ca=cfg.ca)
    return cfg, Policy(table)
