"""Live reload of dns.toml, decided purely: is the new file applicable, and what changes.

The shell (``server.Resolver.reload``) loads the file; :func:`plan` compares it
with the configuration in force and either returns the changes to announce or
raises :class:`ReloadRefused` when a setting the running process was built from
differs (its sockets, its block-page listeners, its query log, its cache and
tunnelling detector).  Only then does ``Engine.apply`` put the new policies,
lists and categories in force; the remembered verdicts and answers of the old
policies go with them, the upstream answer cache stays (it does not depend on
policy), and TCP sessions stay open.
"""

from __future__ import annotations

from .config import Config

# What the running process was built from: sockets, listeners, files, sizes.
RESTART_ONLY = ("listen", "port", "udp_batch", "query_log", "blockpage", "cache_size", "max_ttl", "tunnel",
                "metrics_listen")
LIVE = ("upstreams", "upstream_timeout", "block_ttl", "negative_ttl", "rate_qps", "rate_burst", "tcp_idle",
        "tcp_per_client", "device_id_networks")


class ReloadRefused(ValueError):
    """The new configuration is valid but cannot be applied to the running resolver; the message says why."""


def _policy_summary(cfg: Config) -> dict[str, tuple]:
    """name -> what the policy is made of (its lists by name: their contents are compared apart)."""
    return {p.name: (tuple(map(str, p.networks)), tuple(sorted(p.devices)), tuple(sorted(p.block_categories)),
                     tuple(n for n, _ in p.block_lists), tuple(n for n, _ in p.allow_lists))
            for p in cfg.policies.policies}


def _lists(cfg: Config) -> dict[str, set]:
    """list name -> its domains (a list file can change without a line of dns.toml changing)."""
    out: dict[str, set] = {}
    for p in cfg.policies.policies:
        for n, d in (*p.block_lists, *p.allow_lists):
            out[n] = d._names
    return out


def plan(old: Config, new: Config) -> list[str]:
    """The changes reloading ``old`` into ``new`` makes, for people; ReloadRefused if it takes a restart."""
    differ = [k for k in RESTART_ONLY if getattr(old, k) != getattr(new, k)]
    if differ:
        raise ReloadRefused(f"{', '.join(differ)} changed, which takes a restart of the resolver "
                            f"(`systemctl restart ztna-dns` or stop and run again); put "
                            f"{'it' if len(differ) == 1 else 'them'} back to reload the rest")
    changes = []
    po, pn = _policy_summary(old), _policy_summary(new)
    changes += [f"policy {n}: added" for n in pn if n not in po]
    changes += [f"policy {n}: removed" for n in po if n not in pn]
    changes += [f"policy {n}: changed" for n in pn if n in po and po[n] != pn[n]]
    lo, ln = _lists(old), _lists(new)
    for n in sorted(ln):
        was = lo.get(n, set())
        if was != ln[n]:
            changes.append(f"list {n}: {len(was)} -> {len(ln[n])} domains "
                           f"(+{len(ln[n] - was)} -{len(was - ln[n])})")
    co, cn = old.policies.categories._cats, new.policies.categories._cats
    if co != cn:
        changed = sum(1 for d in set(co) | set(cn) if co.get(d) != cn.get(d))
        changes.append(f"categories: {len(co)} -> {len(cn)} domains ({changed} changed)")
    if old.policies.extra_security != new.policies.extra_security:
        changes.append(f"categories.security: {sorted(new.policies.extra_security)}")
    changes += [f"server {k}: {getattr(old, k)!r} -> {getattr(new, k)!r}" for k in LIVE
                if getattr(old, k) != getattr(new, k)]
    return changes
