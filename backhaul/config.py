"""A site router's configuration: ``[site]`` in site.toml (docs/backhaul.md)."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file, section
from ztna.names import BadName, normalize


@dataclass
class SiteConfig:
    name: str                  # the site's name at the PoP ([sites] there); its certificate says who it is
    pop: str                   # the PoP's address
    pop_name: str              # SNI of site tunnels at the PoP
    cert: str
    key: str
    ca: str
    lan: list[str] = field(default_factory=list)  # the LAN prefixes whose internet traffic the tunnel carries
    tun: str = "ztna-site0"
    tun_address: str = "100.127.0.1/32"  # the TUN's own address (the router's own packets are not the LAN's)
    port: int = 443
    keepalive: float = 15.0
    queue_limit: int = 4 * 1024 * 1024
    connect_timeout: float = 10.0
    backoff_base: float = 0.5
    backoff_cap: float = 30.0
    log_level: str = "INFO"


def load(path: Path) -> SiteConfig:
    data = load_file(path)
    cfg: SiteConfig = section(SiteConfig, data, "site", path)
    try:
        ipaddress.IPv4Address(cfg.pop)
    except ValueError as exc:
        raise ConfigError(f"{path}: [site] pop: {exc}") from exc
    try:
        cfg.pop_name = normalize(cfg.pop_name)
    except BadName as exc:
        raise ConfigError(f"{path}: [site] pop_name: {exc}") from exc
    try:
        cfg.lan = [str(ipaddress.IPv4Network(p)) for p in cfg.lan]
        ipaddress.IPv4Interface(cfg.tun_address)
    except ValueError as exc:
        raise ConfigError(f"{path}: [site] lan / tun_address: {exc}") from exc
    if not cfg.lan:
        raise ConfigError(f"{path}: [site] lan lists no prefix, e.g. lan = [\"10.10.0.0/24\"]")
    for key in ("cert", "key", "ca"):
        if not Path(getattr(cfg, key)).is_file():
            raise ConfigError(f"{path}: [site] {key} = {getattr(cfg, key)} does not exist")
    return cfg
