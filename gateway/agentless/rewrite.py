"""What the gateway changes in a request on its way to the app, and in the answer back.

Towards the app (:func:`upstream_request`):

* hop-by-hop fields go (RFC 9110 7.6.1: ``Connection`` and every field it
  names, ``Keep-Alive``, ``TE``, ``Upgrade``...), except the ``Upgrade`` of a
  WebSocket handshake, which the gateway relays on purpose; a ``Connection``
  naming ``Content-Length``, ``Transfer-Encoding`` or ``Host`` is refused
  (:func:`gateway.proxy.http1.hop_by_hop`, checked by the exchange first);
* ``X-Forwarded-For``, ``X-Forwarded-Proto``, ``X-Forwarded-Host`` and
  ``Forwarded`` (RFC 7239) are *replaced*, never appended to: the gateway is
  the first hop anybody can trust, so what a browser claims there is dropped;
* the identity header (``X-Ztna-User`` unless configured) is always the
  gateway's: any copy the client sent is removed first, whatever its case and
  whether it spells ``-`` as ``_`` (as are the forwarding fields);
* the gateway's own cookies are taken out of ``Cookie``: the app never sees
  the session token.

Towards the browser (:func:`client_response`): hop-by-hop fields go (the
framing ``Transfer-Encoding`` stays, since the body is relayed as it came),
and the app may not set the gateway's cookies.
"""

from __future__ import annotations

import ipaddress

from gateway.proxy import http1

from .message import ResponseHead

SESSION_COOKIE = "__Host-ztna_session"
CSRF_COOKIE = "__Host-ztna_csrf"
OURS = (SESSION_COOKIE, CSRF_COOKIE)
FORWARDING = frozenset({"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"})


def _response_hop_by_hop(connection_values: list[str]) -> set[str]:
    drop = set(http1.HOP_BY_HOP)
    for v in connection_values:
        drop |= {t.strip().lower() for t in v.split(",") if t.strip()}
    drop.discard("transfer-encoding")
    return drop


def is_websocket(head: http1.RequestHead) -> bool:
    conn = {t.strip().lower() for v in head.all("connection") for t in v.split(",")}
    return "upgrade" in conn and any(v.strip().lower() == "websocket" for v in head.all("upgrade"))


def cookies(head: http1.RequestHead) -> dict[str, str]:
    """The first value of each cookie name in the request's Cookie fields."""
    out: dict[str, str] = {}
    for v in head.all("cookie"):
        for part in v.split(";"):
            name, sep, value = part.strip().partition("=")
            if sep and name not in out:
                out[name] = value
    return out


def _without_our_cookies(value: str) -> str:
    return "; ".join(p.strip() for p in value.split(";") if p.strip() and p.strip().partition("=")[0] not in OURS)


def _for_node(client: str) -> str:
    # The browser's address as its socket gave it; only the rare one that is not a dotted quad
    # pays for the full parse (RFC 7239 quotes IPv6 and names what is not an address "_unknown").
    if client.count(".") == 3 and client.replace(".", "").isdigit():
        return client
    try:
        if isinstance(ipaddress.ip_address(client), ipaddress.IPv6Address):
            return f'"[{client}]"'
    except ValueError:
        return '"_unknown"'
    return client


def upstream_request(head: http1.RequestHead, *, client: str, host: str, identity_header: str, identity: str) -> bytes:
    """The request head the app receives (see the module docstring)."""
    upgrade = is_websocket(head)
    drop = http1.hop_by_hop(head)
    # Compared with "_" read as "-": CGI, WSGI, PHP, Rack (and nginx with underscores_in_headers)
    # map X_Ztna_User and X-Ztna-User alike to HTTP_X_ZTNA_USER, so either spelling is a spoof.
    ours = FORWARDING | {identity_header.lower().replace("_", "-")}
    lines = [f"{head.method} {head.target} HTTP/1.1"]
    for k, v in head.headers:
        lk = k.lower()
        if lk in drop or lk.replace("_", "-") in ours:
            continue
        if lk == "cookie":
            v = _without_our_cookies(v)
            if not v:
                continue
        lines.append(f"{k}: {v}")
    if upgrade:
        lines += ["Connection: Upgrade", "Upgrade: websocket"]
    lines += [f"X-Forwarded-For: {client}", "X-Forwarded-Proto: https", f"X-Forwarded-Host: {host}",
              f"Forwarded: for={_for_node(client)};proto=https;host={host}",
              f"{identity_header}: {identity}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def client_response(head: ResponseHead, *, close: bool, upgrade: bool = False) -> bytes:
    """The response head the browser receives."""
    drop = _response_hop_by_hop(head.all("connection"))
    lines = [f"HTTP/1.1 {head.status} {head.reason}"]
    for k, v in head.headers:
        lk = k.lower()
        if lk in drop:
            continue
        if lk == "set-cookie" and v.strip().partition("=")[0] in OURS:
            continue
        lines.append(f"{k}: {v}")
    if upgrade:
        lines += ["Connection: Upgrade", "Upgrade: websocket"]
    elif close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
