"""proxy.toml: reading and checking the proxy's configuration (pure apart from reading the file).

Example (docs/proxy.md explains every key)::

    [proxy]
    mode = "explicit"                 # or "transparent"
    listen = "198.51.100.1:3128"
    resolvers = ["203.0.113.53"]
    trust_store = "/run/ztna-lab/pki/ca.pem"
    ca_cert = "/run/ztna-lab/pki/proxy-ca.pem"
    ca_key = "/run/ztna-lab/pki/proxy-ca.key"

    [policy]
    client_networks = ["198.51.100.0/24"]
    default = "deny"
    allow = ["*.example.com"]
    deny = ["blocked.example.com"]
    no_decrypt = ["bank.example.com"]
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file
from ztna.metrics import parse_listen

from .machine import BLOCK, EXPLICIT, PASSTHROUGH, TRANSPARENT, Limits
from .policy import Policy, PolicyError


BUSY_POLL_MAX_US = 1000  # a spin longer than a millisecond is a thread's worth of CPU, not a poll




@dataclass(frozen=True)
class TransparentConfig:
    """Where transparent interception happens: ports redirected and the nft table holding the rule."""

    ports: tuple[int, ...] = (443,)
    nft_table: str = "ztna_proxy"
    quic: str = "reject"  # UDP to the same ports: "reject" (ICMP port unreachable) or "allow"; counted either way


@dataclass(frozen=True)
class Config:
    """Everything ``ztna proxy run`` needs."""

    mode: str
    listen: tuple[str, int]
    resolvers: tuple[str, ...]
    trust_store: Path | None
    ca_cert: Path | None
    ca_key: Path | None
    policy_table: dict
    limits: Limits = field(default_factory=Limits)
    log: str = "-"
    max_connections: int = 1024
    connect_timeout: float = 5.0
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    busy_poll_us: int = 20
    transparent: TransparentConfig = field(default_factory=TransparentConfig)
    metrics_listen: tuple[str, int] | None = None  # [metrics] listen: the Prometheus endpoint, off when None

    def policy(self, own_addresses=()) -> Policy:
        try:
            return Policy.from_dict(self.policy_table, own_addresses=own_addresses)
        except PolicyError as exc:
            raise ConfigError(str(exc)) from exc


_PROXY_KEYS = {"mode", "listen", "resolvers", "trust_store", "ca_cert", "ca_key", "log", "max_connections",
               "connect_timeout", "handshake_timeout", "idle_timeout", "first_bytes_timeout", "head_max", "hello_max",
               "busy_poll_us"}
_TRANSPARENT_KEYS = {"ports", "nft_table", "on_no_sni", "on_not_tls", "on_ech", "quic"}


def _hostport(text: str, what: str) -> tuple[str, int]:
    host, sep, port = str(text).rpartition(":")
    try:
        ipaddress.ip_address(host)
        if not sep or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{what} = {text!r}: write it as 'ADDRESS:PORT', e.g. '198.51.100.1:3128'") from None
    return host, int(port)


def _number(d: dict, key: str, default: float, *, minimum: float = 0.001) -> float:
    v = d.get(key, default)
    if not isinstance(v, (int, float)) or isinstance(v, bool) or v < minimum:
        raise ConfigError(f"[proxy] {key} must be a number >= {minimum}, got {v!r}")
    return v


def from_dict(doc: dict) -> Config:
    """Build and check a Config from parsed TOML."""
    unknown_tables = set(doc) - {"proxy", "policy", "transparent", "metrics"}
    if unknown_tables:
        raise ConfigError(f"unknown tables: {', '.join(sorted(unknown_tables))} "
                          "(known: proxy, policy, transparent, metrics)")
    mdoc = doc.get("metrics", {})
    if not isinstance(mdoc, dict) or set(mdoc) - {"listen"}:
        raise ConfigError(f"unknown [metrics] keys: {', '.join(sorted(set(mdoc) - {'listen'}))} (known: listen)")
    metrics_listen = parse_listen(mdoc["listen"], "[metrics] listen") if mdoc.get("listen") else None
    p = doc.get("proxy")
    if not isinstance(p, dict):
        raise ConfigError("missing [proxy] table")
    unknown = set(p) - _PROXY_KEYS
    if unknown:
        raise ConfigError(f"unknown [proxy] keys: {', '.join(sorted(unknown))}")
    mode = p.get("mode", EXPLICIT)
    if mode not in (EXPLICIT, TRANSPARENT):
        raise ConfigError(f"[proxy] mode must be 'explicit' or 'transparent', not {mode!r}")
    if "listen" not in p:
        raise ConfigError("[proxy] listen is required, e.g. listen = '198.51.100.1:3128'")
    listen = _hostport(p["listen"], "[proxy] listen")
    resolvers = p.get("resolvers", [])
    if not isinstance(resolvers, list) or not resolvers:
        raise ConfigError("[proxy] resolvers must list at least one DNS server address (the proxy resolves names itself)")
    for r in resolvers:
        try:
            ipaddress.ip_address(r)
        except ValueError:
            raise ConfigError(f"[proxy] resolvers: {r!r} is not an IP address") from None
    t = doc.get("transparent", {})
    unknown = set(t) - _TRANSPARENT_KEYS
    if unknown:
        raise ConfigError(f"unknown [transparent] keys: {', '.join(sorted(unknown))}")
    actions = {}
    for key in ("on_no_sni", "on_not_tls", "on_ech"):
        actions[key] = t.get(key, BLOCK)
        if actions[key] not in (BLOCK, PASSTHROUGH):
            raise ConfigError(f"[transparent] {key} must be 'block' or 'passthrough', not {actions[key]!r}")
    ports = t.get("ports", [443])
    if not isinstance(ports, list) or not ports or not all(isinstance(x, int) and 0 < x < 65536 for x in ports):
        raise ConfigError(f"[transparent] ports must be a list of TCP ports, got {ports!r}")
    table = t.get("nft_table", "ztna_proxy")
    if not isinstance(table, str) or not table.replace("_", "").isalnum() or len(table) > 32:
        raise ConfigError(f"[transparent] nft_table {table!r} must be letters, digits and '_'")
    quic = t.get("quic", "reject")
    if quic not in ("reject", "allow"):
        raise ConfigError(f"[transparent] quic must be 'reject' (UDP to the redirected ports refused, so browsers "
                          f"use TCP through the proxy) or 'allow' (routed past the policy), not {quic!r}")
    paths = {}
    for key in ("trust_store", "ca_cert", "ca_key"):
        paths[key] = Path(p[key]) if key in p else None
    policy_table = doc.get("policy", {})
    decrypting = policy_table.get("decrypt", True)
    if decrypting and not all(paths.values()):
        missing = [k for k, v in paths.items() if v is None]
        raise ConfigError(f"[proxy] {', '.join(missing)} required while [policy] decrypt is on "
                          "(or set decrypt = false to splice everything)")
    limits = Limits(
        head_max=int(_number(p, "head_max", 16384, minimum=512)),
        hello_max=int(_number(p, "hello_max", 32768, minimum=512)),
        first_bytes_timeout=_number(p, "first_bytes_timeout", 10.0),
        on_no_sni=actions["on_no_sni"], on_not_tls=actions["on_not_tls"], on_ech=actions["on_ech"],
    )
    busy = _number(p, "busy_poll_us", 20, minimum=0)
    if busy > BUSY_POLL_MAX_US or busy != int(busy):
        raise ConfigError(f"[proxy] busy_poll_us must be a whole number of microseconds from 0 (off) to "
                          f"{BUSY_POLL_MAX_US}, got {busy!r}")
    cfg = Config(
        mode=mode, listen=listen, resolvers=tuple(resolvers), policy_table=policy_table, limits=limits,
        log=str(p.get("log", "-")), max_connections=int(_number(p, "max_connections", 1024, minimum=1)),
        connect_timeout=_number(p, "connect_timeout", 5.0), handshake_timeout=_number(p, "handshake_timeout", 10.0),
        idle_timeout=_number(p, "idle_timeout", 300.0), busy_poll_us=int(busy),
        transparent=TransparentConfig(tuple(ports), table, quic), metrics_listen=metrics_listen, **paths,
    )
    cfg.policy()  # check the policy table now, with a clear error
    return cfg


def load(path: Path) -> Config:
    """Read and check ``path``."""
    return from_dict(load_file(Path(path)))
