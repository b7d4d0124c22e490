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
    crl: str = ""              # the CA's CRL (ztna pki revoke): checked at each handshake, re-read each second
    agentless: object = field(default=None, init=False)  # gateway.agentless.config.AgentlessConfig or None


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
    if "agentless" in data:
        from gateway.agentless import config as agentless_config

        raw = data["agentless"]
        if isinstance(raw, dict) and "tunnel_names" not in raw:
            # Names the front hands back untouched: at the PoP, the agent and connector endpoints.
            raw = {**raw, "tunnel_names": [cfg.tunnel_name, cfg.connector_name]}
        cfg.agentless = agentless_config.load({"agentless": raw}, path, default_ca=cfg.ca)
    return cfg, PopPolicy(tables["policy"], tables["connectors"])
