"""``[agentless]`` and its ``[[agentless.app]]`` tables in gateway.toml.

Optional: a gateway without ``[agentless]`` serves only the tunnel, exactly
as before.  Paths are checked at load, so a typo fails at start, not at the
first browser.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from ztna.config import ConfigError, section
from ztna.names import BadName, normalize

AUTH_PASSWORD, AUTH_CERTIFICATE = "password", "certificate"


@dataclass
class AppConfig:
    """One published application."""

    name: str
    cert: str  # the certificate the gateway presents for ``name``
    key: str
    upstream_ca: str  # the internal CA the app's certificate must chain to
    upstream_port: int = 443
    auth: str = AUTH_PASSWORD  # password (login form, session cookie) | certificate (browser client certificate)
    identity_header: str = "X-Ztna-User"


@dataclass
class AgentlessConfig:
    """The reverse proxy's settings; see docs/agentless.md."""

    tunnel_names: list[str]
    users: str  # the users file (``ztna gateway user add``)
    session_key: str  # HMAC key for cookies, made 0600 on first start
    access_log: str
    revoked_sessions: str = ""  # the journal of sessions ended by logout (default: session_key + ".revoked")
    client_ca: str = ""  # CA for browser client certificates (default: the gateway's [gateway] ca)
    session_ttl: float = 8 * 3600.0
    header_timeout: float = 10.0  # a request head must be whole within this (slowloris)
    idle_timeout: float = 60.0  # a kept-alive connection with no new request is closed after this
    body_timeout: float = 30.0  # a body that stops moving for this long ends the connection
    upstream_connect_timeout: float = 5.0
    upstream_timeout: float = 30.0  # the app's response head within this, else 504
    login_user_limit: int = 5  # failed logins per user name ...
    login_addr_limit: int = 20  # ... and per source address ...
    login_window: float = 300.0  # ... within this many seconds
    login_workers: int = 2  # threads that run password checks (scrypt), apart from the DNS lookups' ...
    login_queue: int = 16  # ... and checks that may wait for one; past that, 503 with Retry-After
    max_connections: int = 2000
    max_connections_per_source: int = 64  # browser connections from one address at once
    max_form: int = 8192
    apps: list[AppConfig] = field(default_factory=list, init=False)


def load(data: dict, path: Path, *, default_ca: str) -> AgentlessConfig | None:
    raw = data.get("agentless")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: [agentless] must be a table")
    raw = dict(raw)
    apps_raw = raw.pop("app", [])
    cfg: AgentlessConfig = section(AgentlessConfig, {"agentless": raw}, "agentless", path)
    if not isinstance(apps_raw, list) or not apps_raw:
        raise ConfigError(f"{path}: [agentless] publishes no application: add a [[agentless.app]] table with name, cert, key, upstream_ca")
    try:
        cfg.tunnel_names = [normalize(n) for n in cfg.tunnel_names]
    except BadName as exc:
        raise ConfigError(f"{path}: [agentless] tunnel_names: {exc}") from exc
    if not cfg.tunnel_names:
        raise ConfigError(f"{path}: [agentless] tunnel_names is empty: name the tunnel's TLS name (the agents' 'gateway')")
    cfg.client_ca = cfg.client_ca or default_ca
    cfg.revoked_sessions = cfg.revoked_sessions or cfg.session_key + ".revoked"
    seen = set(cfg.tunnel_names)
    for i, a in enumerate(apps_raw):
        app: AppConfig = section(AppConfig, {"app": a}, "app", path) if isinstance(a, dict) else None
        if app is None:
            raise ConfigError(f"{path}: [[agentless.app]] number {i + 1} must be a table")
        try:
            app.name = normalize(app.name)
        except BadName as exc:
            raise ConfigError(f"{path}: [[agentless.app]] name: {exc}") from exc
        if app.name in seen:
            raise ConfigError(f"{path}: [[agentless.app]] {app.name} is named twice (or is the tunnel name)")
        seen.add(app.name)
        if app.auth not in (AUTH_PASSWORD, AUTH_CERTIFICATE):
            raise ConfigError(f"{path}: [[agentless.app]] {app.name}: auth = {app.auth!r}; use \"password\" or \"certificate\"")
        for key in ("cert", "key", "upstream_ca"):
            if not Path(getattr(app, key)).is_file():
                raise ConfigError(f"{path}: [[agentless.app]] {app.name}: {key} = {getattr(app, key)} does not exist")
        if not app.identity_header or any(c in app.identity_header for c in " :\r\n"):
            raise ConfigError(f"{path}: [[agentless.app]] {app.name}: identity_header {app.identity_header!r} is not a field name")
        cfg.apps.append(app)
    if not Path(cfg.client_ca).is_file():
        raise ConfigError(f"{path}: [agentless] client_ca = {cfg.client_ca} does not exist")
    for n in ("max_connections", "max_connections_per_source", "login_workers"):
        if getattr(cfg, n) < 1:
            raise ConfigError(f"{path}: [agentless] {n} must be 1 or more")
    if cfg.login_queue < 0:
        raise ConfigError(f"{path}: [agentless] login_queue must be 0 or more")
    for t in ("header_timeout", "idle_timeout", "body_timeout", "upstream_connect_timeout", "upstream_timeout", "session_ttl"):
        if getattr(cfg, t) <= 0:
            raise ConfigError(f"{path}: [agentless] {t} must be positive")
    return cfg
