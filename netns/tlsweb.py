"""A small real web server for lab scenarios: HTTPS with a certificate per name, and plain HTTP.

    python -m netns.tlsweb --listen 203.0.113.80 --cert a.example=a.pem,a.key [--cert ...] [--http-port 80]

``GET /`` answers ``hello from <Host> over https: served by <address> to client
<address>`` (the server and the client address it saw); ``GET /bytes/N`` answers
N bytes (for benchmarks).  Behind the agentless gateway: the page names the identity the
gateway asserted (``--identity-header``, default ``X-Ztna-User``); ``GET /headers`` answers the
request's header fields as JSON; ``POST /upload`` reads a body (Content-Length or chunked) as it
streams and answers its size and SHA-256; ``GET /chunked/N`` answers N bytes chunked;
``GET /slow/S`` answers after S seconds; ``GET /ws`` is a WebSocket echo.  Without ``--cert`` it serves plain HTTP only
(``--http-port``).  ``--reset-port P`` opens a listener that reads the ClientHello and
resets the connection (a server dying mid-handshake).  The certificate is
chosen by SNI; the first ``--cert`` is the default.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"z" * (1024 * 1024)
WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    """Answers / and /bytes/N."""

    protocol_version = "HTTP/1.1"
    identity_header = "X-Ztna-User"

    def log_message(self, fmt, *args):  # one line per request is enough
        print(f"{self.client_address[0]} {self.command} {self.path} Host={self.headers.get('Host')}", flush=True)

    def _closing(self):
        # Say so when the client asked to close: a client that is not told may reuse
        # the connection after we closed it and fail (curl: "Connection died").
        if self.close_connection:
            self.send_header("Connection", "close")

    def do_GET(self):
        host = (self.headers.get("Host") or "").split(":")[0]
        if self.path.startswith("/bytes/"):
            try:
                n = int(self.path[7:])
            except ValueError:
                self.send_error(400)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(n))
            self._closing()
            self.end_headers()
            while n > 0:
                part = CHUNK[:min(n, len(CHUNK))]
                self.wfile.write(part)
                n -= len(part)
            return
        if self.path == "/headers":
            return self._text(json.dumps([[k, v] for k, v in self.headers.items()]), "application/json")
        if self.path.startswith("/slow/"):
            time.sleep(float(self.path[6:]))
            return self._text(f"slow answer after {self.path[6:]}s\n")
        if self.path.startswith("/chunked/"):
            return self._chunked(int(self.path[9:]))
        if self.path == "/ws":
            return self._websocket()
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        text = (f"hello from {host} over {scheme}: served by {self.server.server_address[0]} "
                f"to client {self.client_address[0]}\n")
        who = self.headers.get(self.identity_header)
        if who is not None:
            text += f"identity asserted by the gateway ({self.identity_header}): {who}\n"
        self._text(text)

    def _text(self, text: str, ctype: str = "text/plain") -> None:
        body = text.encode()
        self.send_response(200)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self._closing()
        self.end_headers()
        self.wfile.write(body)


    def _chunked(self, n: int) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self._closing()
        self.end_headers()
        while n > 0:
            part = CHUNK[:min(n, 65536)]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(part), part))
            n -= len(part)
        self.wfile.write(b"0\r\n\r\n")

    def do_POST(self):
        if self.path != "/upload":
            self.send_error(404)
            return
        digest, size = hashlib.sha256(), 0
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                n = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if n == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                left = n
                while left:
                    part = self.rfile.read(min(left, 1 << 16))
                    if not part:
                        return
                    digest.update(part)
                    left -= len(part)
                size += n
                self.rfile.readline()
        else:
            left = int(self.headers.get("Content-Length") or 0)
            while left:
                part = self.rfile.read(min(left, 1 << 16))
                if not part:
                    return
                digest.update(part)
                size += len(part)
                left -= len(part)
        self._text(json.dumps({"bytes": size, "sha256": digest.hexdigest(),
                               "identity": self.headers.get(self.identity_header)}) + "\n", "application/json")

    def _websocket(self) -> None:
        key = self.headers.get("Sec-WebSocket-Key", "")
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept)
        self.end_headers()
        self.wfile.flush()
        while True:  # echo every frame back unmasked (RFC 6455 5.1: a server never masks)
            hdr = self.rfile.read(2)
            if len(hdr) < 2:
                break
            op, n = hdr[0], hdr[1] & 0x7F
            if n == 126:
                n = int.from_bytes(self.rfile.read(2), "big")
            elif n == 127:
                n = int.from_bytes(self.rfile.read(8), "big")
            mask = self.rfile.read(4) if hdr[1] & 0x80 else b"\0\0\0\0"
            data = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
            size = bytes([n]) if n < 126 else b"\x7e" + n.to_bytes(2, "big") if n < 65536 else b"\x7f" + n.to_bytes(8, "big")
            self.wfile.write(bytes([op]) + size + data)
            self.wfile.flush()
            if op & 0x0F == 8:  # close
                break
        self.close_connection = True


class PlainServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 256

    def server_bind(self):
        # HTTPServer.server_bind looks up its own name (a PTR query); the lab needs none.
        self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()
        self.server_name, self.server_port = self.server_address[0], self.server_address[1]


class TLSServer(PlainServer):
    def __init__(self, addr, ctx: ssl.SSLContext):
        self.ctx = ctx
        super().__init__(addr, Handler)

    nodelay = False

    def get_request(self):
        sock, addr = self.socket.accept()
        if self.nodelay:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return sock, addr

    def finish_request(self, request, client_address):
        # The handshake runs in the request's own thread, so a slow client never blocks accept().
        request.settimeout(30)
        try:
            tls = self.ctx.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError) as exc:
            print(f"{client_address[0]} TLS handshake failed: {exc}", flush=True)
            return
        super().finish_request(tls, client_address)


def _reset_server(addr):
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind(addr)
    ls.listen(64)
    while True:
        c, a = ls.accept()
        c.settimeout(5)
        try:
            c.recv(65536)  # the ClientHello
        except OSError:
            pass
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        c.close()  # RST
        print(f"{a[0]} reset after the ClientHello", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, default=443)
    ap.add_argument("--http-port", type=int, default=0)
    ap.add_argument("--reset-port", type=int, default=0)
    ap.add_argument("--cert", action="append", default=[], help="NAME=CERT.pem,KEY.pem (none: plain HTTP only)")
    ap.add_argument("--nodelay", action="store_true",
                    help="TCP_NODELAY on HTTPS connections (http.server writes head and body apart; benchmarks)")
    ap.add_argument("--identity-header", default="X-Ztna-User", help="the header naming the user the gateway asserted")
    a = ap.parse_args()
    Handler.identity_header = a.identity_header
    TLSServer.nodelay = a.nodelay
    contexts = {}
    for spec in a.cert:
        name, _, files = spec.partition("=")
        cert, _, key = files.partition(",")
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        ctx.set_alpn_protocols(["http/1.1"])
        contexts[name.lower()] = ctx
    threads = []
    if contexts:
        default = next(iter(contexts.values()))

        def pick(sslobj, server_name, _ctx):
            if server_name and server_name.lower() in contexts:
                sslobj.context = contexts[server_name.lower()]

        default.sni_callback = pick
        threads.append(threading.Thread(target=TLSServer((a.listen, a.port), default).serve_forever, daemon=True))
    elif not a.http_port:
        ap.error("give --cert (HTTPS) or --http-port (plain HTTP), or both")
    if a.http_port:
        plain = PlainServer((a.listen, a.http_port), Handler)
        threads.append(threading.Thread(target=plain.serve_forever, daemon=True))
    if a.reset_port:
        threads.append(threading.Thread(target=_reset_server, args=((a.listen, a.reset_port),), daemon=True))
    for t in threads:
        t.start()
    print(f"serving {', '.join(contexts)} on {a.listen}:{a.port}", flush=True)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
