"""A real OpenSSL ClientHello, for the lab's misbehaving clients to send, cut or stall.

Imported by the rogue_*.py programs (they run from this folder) and, through
``CLIENT_HELLO_CODE``-style snippets, by scripts the tests write elsewhere.
"""

import ssl


def client_hello(sni: str | None, alpn: list[str] | None = None) -> bytes:
    """The first flight of a TLS client for ``sni`` (None: no SNI), never sent anywhere by this function."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if alpn:
        ctx.set_alpn_protocols(alpn)
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()
