"""The block page: HTTP and HTTPS on the block-page addresses.

It tells the user the name, why it was blocked (category or list, and the
chain link when a CNAME was the reason) and the policy.  The reason comes from
the resolver's own record of recent blocks for that client, else from asking
the policy again.  HTTPS leaves are issued on the fly by the configured CA,
one key per leaf, cached; a leaf is only ever issued for a name that is
blocked, so the CA never vouches for an arbitrary site.
"""

from __future__ import annotations

import asyncio
import html
import logging
import os
import ssl
import tempfile
import time
from collections import OrderedDict
from pathlib import Path

from ztna import pki

from .engine import Engine
from .names import BadName, normalize

log = logging.getLogger("ztna.dns.blockpage")

MAX_HEAD = 8192
CERT_CACHE = 1024


def describe(engine: Engine, client: str, host: str) -> dict | None:
    """What the page should say for ``host`` seen from ``client`` (None: not blocked)."""
    rec = engine.recent_blocks.get((client, host))
    if rec is not None:
        return rec
    policy = engine.policies.select(client, None)
    if policy is None:
        return None
    v = engine.verdict(policy, host, engine.detector.classified(host, time.time(), client))
    if not v.blocked:
        return None
    return {"name": host, "reason": v.reason, "column": v.column.value, "matched": v.matched,
            "policy": v.policy, "link": ""}


def blocked_anywhere(engine: Engine, host: str) -> bool:
    """True when some client was just blocked on ``host`` or some policy blocks it."""
    if any(name == host for _, name in engine.recent_blocks):
        return True
    return any(engine.policies.decide(p, host).blocked for p in engine.policies.policies)


def render_page(host: str, info: dict | None) -> tuple[int, str]:
    """(HTTP status, HTML body)."""
    h = html.escape
    if info is None:
        body = (f"<h1>No block recorded</h1><p>This is the DNS security block page. "
                f"<b>{h(host)}</b> is not blocked for you.</p>")
        return 404, _wrap(body)
    why = f"{info['reason']} ({info['column']})"
    rows = [("Site", host), ("Blocked because", why), ("Matched entry", info.get("matched", "")),
            ("Policy", info.get("policy", ""))]
    if info.get("link"):
        rows.append(("Via CNAME", info["link"]))
    table = "".join(f"<tr><th>{h(k)}</th><td>{h(str(v))}</td></tr>" for k, v in rows)
    body = (f"<h1>This site is blocked</h1><p>Access to <b>{h(host)}</b> was blocked by your "
            f"organisation's DNS security policy.</p><table>{table}</table>")
    return 403, _wrap(body)


def _wrap(body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>Blocked</title></head>"
            f"<body>{body}</body></html>\n")


def host_of(head: bytes) -> str:
    """The Host header's name, normalised ('' when absent or unusable)."""
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == b"host":
            text = v.strip().decode("latin-1")
            if text.startswith("["):
                return ""
            try:
                return normalize(text.rsplit(":", 1)[0] if ":" in text else text)
            except BadName:
                return ""
    return ""


class CertCache:
    """On-the-fly server contexts, one per blocked name, newest kept."""

    def __init__(self, ca: pki.Issued, default_ctx: ssl.SSLContext):
        self.ca = ca
        self.default = default_ctx
        self._ctx: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self.certs: dict[str, object] = {}   # name -> the leaf certificate served for it
        self.issued = 0

    def context_for(self, name: str) -> ssl.SSLContext:
        ctx = self._ctx.get(name)
        if ctx is not None:
            self._ctx.move_to_end(name)
            return ctx
        leaf = pki.issue(self.ca, name, kind="server", now=pki.utcnow(), dns_names=[name], days=7)
        ctx = server_context(leaf, self.ca)
        self.issued += 1
        self._ctx[name] = ctx
        self.certs[name] = leaf.cert
        if len(self._ctx) > CERT_CACHE:
            old, _ = self._ctx.popitem(last=False)
            self.certs.pop(old, None)
        return ctx


def server_context(leaf: pki.Issued, ca: pki.Issued) -> ssl.SSLContext:
    """A TLS server context for ``leaf`` (ssl loads keys only from files: a private temp dir, removed at once)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    with tempfile.TemporaryDirectory(prefix="ztna-bp-") as d:
        os.chmod(d, 0o700)
        cert, key = Path(d) / "c.pem", Path(d) / "k.pem"
        pki.write_pem(cert, leaf.cert_pem() + ca.cert_pem(), private=False)
        pki.write_pem(key, leaf.key_pem(), private=True)
        ctx.load_cert_chain(cert, key)
    return ctx


async def _handle(engine: Engine, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, scheme: str) -> None:
    peer = writer.get_extra_info("peername") or ("?", 0)
    try:
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, asyncio.TimeoutError, ConnectionError, ssl.SSLError) as exc:
        log.info("block page: no usable request from %s (%s)", peer[0], type(exc).__name__)
        writer.close()
        return
    host = host_of(head)
    info = describe(engine, peer[0], host) if host else None
    status, body = render_page(host or "(no Host header)", info)
    reason = {403: "Forbidden", 404: "Not Found"}[status]
    data = body.encode()
    extra = f"X-Blocked-Reason: {info['reason']}\r\n" if info else ""
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(data)}\r\n"
                 f"Cache-Control: no-store\r\n{extra}Connection: close\r\n\r\n".encode() + data)
    log.info("block page %s://%s for %s: %d %s", scheme, host, peer[0], status, info["reason"] if info else "-")
    try:
        await writer.drain()
    except ConnectionError:
        pass
    writer.close()


async def serve(engine: Engine) -> list:
    """Listen on every block-page address (HTTP, and HTTPS when a CA is configured)."""
    bp = engine.cfg.blockpage
    servers = []
    tls = None
    if bp.https_port:
        ca = pki.Issued(*_load_ca(bp.ca_cert, bp.ca_key))
        default = server_context(pki.issue(ca, "ztna block page", kind="server", now=pki.utcnow(),
                                           ips=bp.all_addresses(), days=30), ca)
        certs = CertCache(ca, default)

        def sni(sslobj, server_name, _ctx):
            if not server_name:
                return None
            try:
                name = normalize(server_name)
                if blocked_anywhere(engine, name):
                    sslobj.context = certs.context_for(name)
            except (BadName, pki.PKIError, ssl.SSLError) as exc:
                log.warning("block page: no certificate for %r: %s", server_name, exc)
            return None

        default.sni_callback = sni
        tls = default
    for addr in bp.all_addresses():
        servers.append(await asyncio.start_server(lambda r, w: _handle(engine, r, w, "http"), addr, bp.http_port,
                                                  limit=MAX_HEAD))
        if tls is not None:
            servers.append(await asyncio.start_server(lambda r, w: _handle(engine, r, w, "https"), addr, bp.https_port,
                                                      ssl=tls, limit=MAX_HEAD, ssl_handshake_timeout=10))
        log.info("block page on %s port %d%s", addr, bp.http_port, f" and {bp.https_port} (TLS)" if tls else "")
    return servers


def _load_ca(cert_path: Path, key_path: Path):
    d = Path(cert_path).parent
    if Path(cert_path).stem == Path(key_path).stem and Path(key_path).parent == d:
        ca = pki.load(d, Path(cert_path).stem)
        return ca.cert, ca.key
    raise pki.PKIError(f"blockpage.ca_cert and ca_key must be NAME.pem and NAME.key in one folder, got {cert_path}, {key_path}")
