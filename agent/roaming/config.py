"""roaming.toml: every setting, its default, and a clear error for a bad one."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, load_file

from .conflict import ConflictPolicy

EGRESS_ROUTE = "route"      # internal queries follow the routing table (the kernel's choice)
EGRESS_LEARNED = "learned"  # internal queries leave by the interface their server was learned from




@dataclass
class Config:
    """The roaming client's settings (see docs/roaming.md for each)."""

    resolv_conf: Path = Path("/etc/resolv.conf")
    state_dir: Path = Path("/var/lib/ztna/roaming")
    listen: str = "127.0.0.1"
    port: int = 53
    cloud: list[str] = field(default_factory=lambda: ["208.67.222.222", "208.67.220.220"])
    cloud_port: int = 53
    device_id: str = ""
    internal_domains: list[str] = field(default_factory=list)
    private_reverse: bool = True
    fail_open: bool = True
    egress: str = EGRESS_ROUTE
    interface_dir: Path | None = None
    machine_id_file: Path = Path("/etc/machine-id")
    backend: str = "auto"
    resolvectl: str = "resolvectl"   # the command the resolved backend runs
    resolved_link: str = "ztna-dns"  # the TUN link the resolved backend puts the stub on
    conflict: ConflictPolicy = field(default_factory=ConflictPolicy)
    upstream_timeout: float = 1.5
    poll_interval: float = 0.25
    cloud_fail_after: int = 2
    cloud_probe_every: float = 5.0

    @property
    def state_file(self) -> Path:
        return self.state_dir / "state.json"

    @property
    def status_file(self) -> Path:
        return self.state_dir / "status.json"


def _addr(value, what: str) -> str:
    try:
        return str(ipaddress.ip_address(str(value)))
    except ValueError:
        raise ConfigError(f"{what}: {value!r} is not an IP address") from None


def from_dict(doc: dict) -> Config:
    """Validate a parsed roaming.toml."""
    c = Config()
    known = {"resolv_conf", "state_dir", "listen", "port", "cloud", "cloud_port", "device_id", "internal_domains",
             "private_reverse", "fail_open", "egress", "interface_dir", "machine_id_file", "backend", "conflict",
             "resolvectl", "resolved_link",
             "upstream_timeout", "poll_interval", "cloud_fail_after", "cloud_probe_every"}
    unknown = sorted(set(doc) - known)
    if unknown:
        raise ConfigError(f"unknown setting(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    try:
        for key in ("resolv_conf", "state_dir", "machine_id_file", "interface_dir"):
            if key in doc:
                setattr(c, key, Path(str(doc[key])) if doc[key] else None)
        if c.resolv_conf is None or c.state_dir is None or c.machine_id_file is None:
            raise ConfigError("resolv_conf, state_dir and machine_id_file may not be empty")
        if "listen" in doc:
            c.listen = _addr(doc["listen"], "listen")
            if not ipaddress.ip_address(c.listen).is_loopback:
                raise ConfigError(f"listen: {c.listen} is not a loopback address; the stub must not serve the network")
        for key in ("port", "cloud_port", "cloud_fail_after"):
            if key in doc:
                v = doc[key]
                if not isinstance(v, int) or isinstance(v, bool) or not 1 <= v <= 65535:
                    raise ConfigError(f"{key}: {v!r} is not a number from 1 to 65535")
                setattr(c, key, v)
        if "cloud" in doc:
            if not isinstance(doc["cloud"], list) or not doc["cloud"]:
                raise ConfigError("cloud: give a list of one or more resolver addresses")
            c.cloud = [_addr(a, "cloud") for a in doc["cloud"]]
        if "device_id" in doc:
            c.device_id = str(doc["device_id"])
        if "internal_domains" in doc:
            if not isinstance(doc["internal_domains"], list):
                raise ConfigError("internal_domains: give a list of domain names")
            c.internal_domains = [str(d).rstrip(".").lower() for d in doc["internal_domains"]]
        for key in ("private_reverse", "fail_open"):
            if key in doc:
                if not isinstance(doc[key], bool):
                    raise ConfigError(f"{key}: must be true or false")
                setattr(c, key, doc[key])
        if "egress" in doc:
            if doc["egress"] not in (EGRESS_ROUTE, EGRESS_LEARNED):
                raise ConfigError(f"egress: {doc['egress']!r} is not 'route' or 'learned'")
            c.egress = doc["egress"]
        for key in ("resolvectl", "resolved_link"):
            if key in doc:
                v = doc[key]
                if not isinstance(v, str) or not v or (key == "resolved_link" and (len(v) > 15 or "/" in v or " " in v)):
                    raise ConfigError(f"{key}: {v!r} is not a usable {'command' if key == 'resolvectl' else 'interface name'}")
                setattr(c, key, v)
        if "backend" in doc:
            if doc["backend"] not in ("auto", "resolvconf", "resolved"):
                raise ConfigError(f"backend: {doc['backend']!r} is not 'auto', 'resolvconf' or 'resolved'")
            c.backend = doc["backend"]
        for key in ("upstream_timeout", "poll_interval", "cloud_probe_every"):
            if key in doc:
                v = doc[key]
                if not isinstance(v, (int, float)) or isinstance(v, bool) or v <= 0:
                    raise ConfigError(f"{key}: {v!r} must be a positive number of seconds")
                setattr(c, key, float(v))
        if "conflict" in doc:
            cf = doc["conflict"]
            if not isinstance(cf, dict) or set(cf) - {"threshold", "window"}:
                raise ConfigError("[conflict] takes threshold (count) and window (seconds)")
            try:
                c.conflict = ConflictPolicy(threshold=int(cf.get("threshold", 3)), window=float(cf.get("window", 30.0)))
            except (TypeError, ValueError) as exc:
                raise ConfigError(f"[conflict]: {exc}") from None
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad setting: {exc}") from None
    return c


def load(path: Path) -> Config:
    """Read and validate a roaming.toml."""
    return from_dict(load_file(Path(path)))
