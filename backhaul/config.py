"""A site router's configuration: ``[site]`` in site.toml, and a gateway site's ``[backhaul]``, ``[wan1]``,
``[wan2]`` and ``[health]`` (docs/backhaul.md)."""

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
    backhaul: object = field(default=None, init=False)  # BackhaulConfig of a gateway site, or None
    wans: dict = field(default_factory=dict, init=False)  # "wan1"/"wan2" -> WanConfig
    health: object = field(default=None, init=False)  # HealthConfig (gateway sites with WAN ports)


@dataclass
class BackhaulConfig:
    """``[backhaul]``: this site is a backhauling gateway; flows the PoP sends it leave here."""
    gateway: bool = False
    destination: str = "internet"  # "internet": out of a WAN port with SNAT; "local": to local_gateway_ip
    local_gateway_ip: str = ""     # destination = "local": the next hop on the site's LAN
    port: str = "auto"             # "wan1" | "wan2" (pinned) | "auto" (health checks, WAN1 preferred)
    table: int = 5100              # routing tables table+1..table+4, ip rule priorities table..table+8
    mark: int = 0x5A100            # connection marks mark+1 (wan1), +2 (wan2), +3 (to the TUN), +4 (local)


@dataclass
class WanConfig:
    """``[wan1]``, ``[wan2]``: a WAN port, its address and the ISP's gateway."""
    interface: str
    address: str
    gateway: str


@dataclass
class HealthConfig:
    """``[health]``: probes out of each WAN port (ICMP echo to target), bounded by timeout."""
    target: str = ""
    interval: float = 5.0
    timeout: float = 1.0
    fail_after: int = 3
    recover_after: int = 3


def _gateway(cfg: SiteConfig, data: dict, path: Path) -> None:
    from .health import MODES

    for name in ("wan1", "wan2", "health"):
        if name in data and "backhaul" not in data:
            raise ConfigError(f"{path}: [{name}] belongs to a gateway site: add [backhaul] gateway = true")
    if "backhaul" not in data:
        return
    b: BackhaulConfig = section(BackhaulConfig, data, "backhaul", path)
    if not b.gateway:
        raise ConfigError(f"{path}: [backhaul] is for a gateway site: set gateway = true (or remove the section)")
    if b.destination not in ("internet", "local"):
        raise ConfigError(f"{path}: [backhaul] destination = {b.destination!r} should be \"internet\" (breakout by "
                          "a WAN port) or \"local\" (to local_gateway_ip on the LAN)")
    if b.port not in MODES:
        raise ConfigError(f"{path}: [backhaul] port = {b.port!r} should be one of {', '.join(MODES)}")
    if not 1 <= b.table <= 0x7FFFFFF0 or not 0 < b.mark <= 0x7FFFFFF0:
        raise ConfigError(f"{path}: [backhaul] table and mark must be positive 31-bit numbers")
    for name in ("wan1", "wan2"):
        if name in data:
            w: WanConfig = section(WanConfig, data, name, path)
            try:
                ipaddress.IPv4Address(w.address)
                ipaddress.IPv4Address(w.gateway)
            except ValueError as exc:
                raise ConfigError(f"{path}: [{name}] address / gateway: {exc}") from exc
            if not w.interface or len(w.interface) > 15:
                raise ConfigError(f"{path}: [{name}] interface = {w.interface!r} is no interface name")
            cfg.wans[name] = w
    if len(cfg.wans) == 2 and cfg.wans["wan1"].interface == cfg.wans["wan2"].interface:
        raise ConfigError(f"{path}: [wan1] and [wan2] name the same interface")
    if b.destination == "local":
        try:
            ipaddress.IPv4Address(b.local_gateway_ip)
        except ValueError as exc:
            raise ConfigError(f"{path}: [backhaul] destination = \"local\" needs local_gateway_ip, the next hop on "
                              f"the LAN: {exc}") from exc
    else:
        if b.local_gateway_ip:
            raise ConfigError(f"{path}: [backhaul] local_gateway_ip is for destination = \"local\"")
        if not cfg.wans:
            raise ConfigError(f"{path}: [backhaul] destination = \"internet\" needs [wan1] (and [wan2]): interface, "
                              "address, gateway")
        if b.port != "auto" and b.port not in cfg.wans:
            raise ConfigError(f"{path}: [backhaul] port = {b.port!r} but there is no [{b.port}]")
    h: HealthConfig = section(HealthConfig, data, "health", path) if "health" in data else HealthConfig()
    if cfg.wans and b.destination == "internet":
        if not h.target:
            raise ConfigError(f"{path}: [health] target = \"IP\" is needed: the address each WAN port probes")
        try:
            ipaddress.IPv4Address(h.target)
        except ValueError as exc:
            raise ConfigError(f"{path}: [health] target: {exc}") from exc
        if not (0.1 <= h.interval <= 3600 and 0.05 <= h.timeout <= h.interval):
            raise ConfigError(f"{path}: [health] interval must be 0.1..3600 s and timeout 0.05 s..interval")
        if not (1 <= h.fail_after <= 100 and 1 <= h.recover_after <= 100):
            raise ConfigError(f"{path}: [health] fail_after and recover_after must be 1..100")
    cfg.backhaul, cfg.health = b, h


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
    _gateway(cfg, data, path)
    return cfg
