"""Live reload of proxy.toml, decided purely: what changes, and which open connections end.

The shell (``server.Proxy.reload``) reads the file, asks :func:`plan` and, only
when it returns, puts the new configuration and policy in force: every open
connection is judged by the new policy from then on, and :func:`to_end` names
those whose destination it now refuses (a spliced or decrypted tunnel to a name
taken off the allow list is ended, not left running on the old policy).

What cannot change without a restart (the listener, the mode, the transparent
redirect, the certificates) is refused as a whole: the old configuration stays
in force and the message says which keys differ.
"""

from __future__ import annotations

from dataclasses import dataclass

from .config import Config
from .policy import Policy

# Config fields a running proxy cannot take over: its listening socket, its nft
# table and its decryptor were made from them at start.
RESTART_ONLY = ("mode", "listen", "transparent", "trust_store", "ca_cert", "ca_key", "log", "metrics_listen")


class ReloadRefused(ValueError):
    """The new configuration is valid but cannot be applied to the running proxy; the message says why."""


@dataclass(frozen=True)
class Plan:
    """The new configuration and policy, and what a person should read about the change."""

    config: Config
    policy: Policy
    changes: tuple[str, ...]


def _diff_patterns(what: str, old, new) -> list[str]:
    o = old.exact | {f"*.{d}" for d in old.suffixes}
    n = new.exact | {f"*.{d}" for d in new.suffixes}
    parts = [f"+{p}" for p in sorted(n - o)] + [f"-{p}" for p in sorted(o - n)]
    return [f"[policy] {what}: {' '.join(parts)}"] if parts else []


def plan(old: Config, new: Config, *, own_addresses=(), decrypting: bool) -> Plan:
    """What reloading ``old`` into ``new`` means; ``decrypting``: the running proxy has a decryptor.

    Raises ReloadRefused when a restart-only setting differs, or when the new
    policy decrypts while the running proxy was started without decryption."""
    differ = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
    if differ:
        raise ReloadRefused(f"{', '.join(differ)} changed, which takes a restart of the proxy "
                            f"(`systemctl restart ztna-proxy` or stop and run again); put "
                            f"{'it' if len(differ) == 1 else 'them'} back to reload the rest")
    pol_old, pol_new = old.policy(own_addresses=own_addresses), new.policy(own_addresses=own_addresses)
    if new.mode == "transparent" and pol_old.client_networks != pol_new.client_networks:
        # the nft redirect was rendered from them at start
        raise ReloadRefused("[policy] client_networks changed, which in transparent mode takes a restart "
                            "(the nft redirect names them); put them back to reload the rest")
    if pol_new.decrypt and not decrypting:
        raise ReloadRefused("[policy] decrypt is now on, but the proxy was started with decryption off "
                            "(no proxy CA loaded): restart it to decrypt")
    changes: list[str] = []
    for what in ("allow", "deny", "no_decrypt"):
        changes += _diff_patterns(what, getattr(pol_old, what), getattr(pol_new, what))
    for key in sorted(set(old.policy_table) | set(new.policy_table)):
        if key in ("allow", "deny", "no_decrypt"):
            continue
        if old.policy_table.get(key) != new.policy_table.get(key):
            changes.append(f"[policy] {key}: {old.policy_table.get(key)!r} -> {new.policy_table.get(key)!r}")
    for key in ("limits", "max_connections", "connect_timeout", "handshake_timeout", "idle_timeout", "busy_poll_us"):
        if getattr(old, key) != getattr(new, key):
            changes.append(f"[proxy] {key}: {getattr(old, key)!r} -> {getattr(new, key)!r}")
    return Plan(new, pol_new, tuple(changes))


@dataclass(frozen=True)
class Open:
    """What the reload needs to know of one open connection (``name`` None: not decided yet)."""

    client: str
    name: str | None
    port: int
    kind: str


def to_end(policy: Policy, conns: list[Open]) -> list[tuple[int, str]]:
    """(index, why) of every open connection the new ``policy`` refuses."""
    out = []
    for i, c in enumerate(conns):
        if not policy.client_allowed(c.client):
            out.append((i, f"policy reloaded: client {c.client} is no longer in a client network"))
        elif c.name is not None and c.kind in ("connect", "http", "tls"):
            v = policy.decide(c.name, c.port, kind=c.kind)
            if not v.allowed:
                out.append((i, f"policy reloaded: {v.reason}"))
    return out
