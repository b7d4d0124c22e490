"""Which job a connection to the PoP's 443 is, from its ClientHello's SNI (pure).

* ``[pop] tunnel_name`` -> :class:`Agent` (mTLS, the agent tunnel protocol);
* ``[pop] connector_name`` -> :class:`Connector` (mTLS, a gateway's connector tunnel);
* ``[pop] site_name`` -> :class:`Site` (mTLS, a site router's tunnel: pop/sitehub.py);
* a name in ``[pop] alias_names`` -> :class:`Alias`: the hook where agentless
  access through the PoP goes; until it is built the shell refuses it;
* anything else, no SNI, or not a ClientHello -> :class:`gateway.agentless.route.Refuse`.
"""

from __future__ import annotations

from dataclasses import dataclass

from gateway.agentless.route import Refuse
from ztna import tlswire
from ztna.names import BadName, normalize


@dataclass(frozen=True)
class Agent:
    sni: str


@dataclass(frozen=True)
class Connector:
    sni: str


@dataclass(frozen=True)
class Site:
    sni: str


@dataclass(frozen=True)
class Alias:
    name: str


def route(hello: tlswire.ClientHello | None, *, tunnel_name: str, connector_name: str,
          aliases: frozenset[str] = frozenset(), error: str | None = None, site_name: str = ""):
    if hello is None:
        return Refuse(f"no ClientHello: {error or 'nothing read'}", tlswire.ALERT_DECODE_ERROR)
    if not hello.sni:
        return Refuse("ClientHello has no SNI: the PoP serves names only")
    try:
        name = normalize(hello.sni)
    except BadName as exc:
        return Refuse(f"SNI {hello.sni[:100]!r} is not a host name: {exc}")
    if name == tunnel_name:
        return Agent(name)
    if name == connector_name:
        return Connector(name)
    if site_name and name == site_name:
        return Site(name)
    if name in aliases:
        return Alias(name)
    return Refuse(f"SNI {name} is neither the PoP's tunnel name, its connector name nor an alias")
