"""The PoP's two tables: which identity may reach which resource, which connector may publish which.

``[policy]`` maps an agent identity (its certificate's common name) to resource
patterns (exact names or ``*.domain``), as the gateway's table does.
``[connectors]`` maps a connector identity (the gateway's client certificate's
common name) to the resources it may publish; a connector announces one resource
per tunnel, an exact name or a pattern, and may publish it when the table names
it, or names a pattern covering it.
"""

from __future__ import annotations

from gateway.policy import Policy
from ztna.names import BadName, PatternSet, normalize_pattern


class PopPolicy:
    def __init__(self, policy: dict[str, list[str]], connectors: dict[str, list[str]]):
        self.agents = Policy(policy)
        self.connectors = {ident: PatternSet(pats) for ident, pats in connectors.items()}
        self.named = {ident: {normalize_pattern(p) for p in pats} for ident, pats in connectors.items()}
        self._serves: dict[str, PatternSet] = {}

    def allows(self, identity: str, fqdn: str) -> tuple[bool, str]:
        return self.agents.allows(identity, fqdn)

    def may_publish(self, identity: str, resource) -> tuple[bool, str]:
        if not isinstance(resource, str):
            return False, f"resource {resource!r} is not a name"
        try:
            res = normalize_pattern(resource)
        except BadName as exc:
            return False, f"resource {resource[:100]!r} is not a name or *.domain pattern: {exc}"
        if identity not in self.connectors:
            return False, f"connector {identity!r} is not in [connectors]"
        if res in self.named[identity]:
            return True, f"[connectors] {identity} names {res}"
        if not res.startswith("*."):
            hit = self.connectors[identity].match(res)
            if hit is not None:
                return True, f"[connectors] {identity} has {hit}"
        return False, f"connector {identity!r} may not publish {res}"

    def serves(self, resource: str, name: str) -> bool:
        ps = self._serves.get(resource)
        if ps is None:
            ps = self._serves[resource] = PatternSet([resource])
        return ps.match(name) is not None
