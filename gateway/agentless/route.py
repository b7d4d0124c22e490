"""Which job a connection to the gateway's port 443 is: decided from its ClientHello's SNI.

The gateway shares one port between the agents' mTLS tunnel and the reverse
proxy.  It *peeks* at the first bytes (they stay in the kernel, so the tunnel
path reads its ClientHello exactly as before) and routes:

* the tunnel name (``gateway.mycompany.net``) -> :class:`Tunnel`, unchanged;
* a published application name -> :class:`Web` (the reverse proxy, which
  presents that name's certificate);
* any other name, no SNI, or bytes that are not a ClientHello -> :class:`Refuse`
  with the TLS alert to send (``unrecognized_name`` for names, RFC 6066 3).

Pure: :func:`peek_untrusted` reads peeked bytes, :func:`route` decides.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from ztna import tlswire
from ztna.names import BadName, normalize


@dataclass(frozen=True)
class Tunnel:
    """An agent: hand the socket to the mTLS tunnel server."""
    sni: str


@dataclass(frozen=True)
class Web:
    """A browser for a published application."""
    app: str


@dataclass(frozen=True)
class Refuse:
    """Send ``alert`` (a TLS alert description), log ``reason``, close."""
    reason: str
    alert: int = tlswire.ALERT_UNRECOGNIZED_NAME


def peek_untrusted(data: bytes, max_size: int = tlswire.DEFAULT_MAX_HELLO) -> tuple[tlswire.ClientHello | None, int]:
    """(hello, 0) once the peeked bytes hold a whole ClientHello, else (None, bytes needed).

    Raises :class:`ztna.tlswire.BadTLS` when they cannot become one.
    """
    hello = tlswire.parse_client_hello_untrusted(data, max_size=max_size)
    if hello is not None:
        return hello, 0
    pos = 0
    while len(data) - pos >= 5:  # the end of the first record not yet whole
        length = struct.unpack_from("!H", data, pos + 3)[0]
        if len(data) - pos - 5 < length:
            return None, pos + 5 + length
        pos += 5 + length
    return None, pos + 5


def route(hello: tlswire.ClientHello | None, *, tunnel_names: frozenset[str], apps: frozenset[str],
          error: str | None = None) -> Tunnel | Web | Refuse:
    """Where the connection goes; ``error`` is why no ClientHello could be read."""
    if hello is None:
        return Refuse(f"no ClientHello: {error or 'nothing read'}", tlswire.ALERT_DECODE_ERROR)
    if not hello.sni:
        return Refuse("ClientHello has no SNI: the gateway serves names only (tunnel or published application)")
    try:
        name = normalize(hello.sni)
    except BadName as exc:
        return Refuse(f"SNI {hello.sni[:100]!r} is not a host name: {exc}")
    if name in tunnel_names:
        return Tunnel(name)
    if name in apps:
        return Web(name)
    return Refuse(f"SNI {name} is neither the tunnel name nor a published application")
