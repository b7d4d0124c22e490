"""Which identities may reach which applications.

The identity is the common name of the agent's certificate (proved by mutual
TLS); each identity has a list of application patterns (exact or ``*.domain``).
An identity not in the table reaches nothing.
"""

from __future__ import annotations

from ztna.names import BadName, PatternSet, normalize


class Policy:
    """identity -> application patterns."""

    def __init__(self, table: dict[str, list[str]]):
        self.source = {ident: list(pats) for ident, pats in table.items()}  # as written, for reload's diff
        self.table = {ident: PatternSet(pats) for ident, pats in table.items()}

    def allows(self, identity: str, fqdn: str) -> tuple[bool, str]:
        """(allowed, reason) for ``identity`` reaching ``fqdn``."""
        try:
            name = normalize(fqdn)
        except BadName as exc:
            return False, f"not a valid name: {exc}"
        pats = self.table.get(identity)
        if pats is None:
            return False, f"identity {identity!r} has no policy"
        hit = pats.match(name)
        if hit is None:
            return False, f"identity {identity!r} is not allowed to reach {name}"
        return True, f"allowed by {hit!r}"
