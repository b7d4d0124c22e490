"""What a gateway reload changes, decided without I/O (the shell is ``Gateway.reload``).

Only ``[policy]`` is taken live.  Anything else in the file (``[gateway]``'s
addresses, certificates, TUN, limits, the CRL path, ``[agentless]``) is bound
to sockets, devices or contexts made at start: a change there refuses the whole
reload, so what runs is always exactly one file's content.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from .config import GatewayConfig


@dataclass(frozen=True)
class Plan:
    ok: bool
    message: str
    changes: list[str]


def policy_changes(old: dict[str, list[str]], new: dict[str, list[str]]) -> list[str]:
    """One line per identity whose patterns changed: ``[policy] bob: +a -b`` (or added / removed)."""
    out = []
    for ident in sorted(set(old) | set(new)):
        if ident not in new:
            out.append(f"[policy] {ident}: removed (reaches nothing now)")
        elif ident not in old:
            out.append(f"[policy] {ident}: added: {', '.join(new[ident]) or 'nothing'}")
        else:
            plus = [f"+{p}" for p in new[ident] if p not in old[ident]]
            minus = [f"-{p}" for p in old[ident] if p not in new[ident]]
            if plus or minus:
                out.append(f"[policy] {ident}: {' '.join(plus + minus)}")
    return out


def plan(path, old_cfg: GatewayConfig, old_table: dict, new_cfg: GatewayConfig, new_table: dict) -> Plan:
    """Whether the new file may be taken live, and what changes."""
    for f in dataclasses.fields(GatewayConfig):
        if f.name == "agentless":
            continue
        if getattr(old_cfg, f.name) != getattr(new_cfg, f.name):
            return Plan(False, f"reload refused: {path}: [gateway] {f.name} changed, which takes a restart; "
                               "the running configuration stays", [])
    if old_cfg.agentless != new_cfg.agentless:
        return Plan(False, f"reload refused: {path}: [agentless] changed, which takes a restart; "
                           "the running configuration stays", [])
    changes = policy_changes(old_table, new_table)
    return Plan(True, f"reloaded {path}: {len(changes) or 'no'} polic{'y' if len(changes) == 1 else 'ies'} changed",
                changes)
