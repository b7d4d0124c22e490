"""A small real web server for lab scenarios: HTTPS with a certificate per name, and plain HTTP.

    python -m netns.tlsweb --listen 203.0.113.80 --cert a.example=a.pem,a.key [--cert ...] [--http-port 80]

``GET /`` answers ``hello from <Host> over https: served by <address> to client
<address>`` (the server and the client address it saw); ``GET /bytes/N`` answers
N bytes (for benchmarks).  Without ``--cert`` it serves plain HTTP only
(``--http-port``).  ``--reset-port P`` opens a listener that reads the ClientHello and
resets the connection (a server dying mid-handshake).  The certificate is
chosen by SNI; the first ``--cert`` is the default.
"""

from __future__ import annotations

import argparse
import socket
import ssl
import struct
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

CHUNK = b"z" * (1024 * 1024)


class Handler(BaseHTTPRequestHandler):
    """Answers / and /bytes/N."""

    protocol_version = "HTTP/1.1"

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
        scheme = "https" if isinstance(self.connection, ssl.SSLSocket) else "http"
        body = (f"hello from {host} over {scheme}: served by {self.server.server_address[0]} "
                f"to client {self.client_address[0]}\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self._closing()
        self.end_headers()
        self.wfile.write(body)


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

    def get_request(self):
        sock, addr = self.socket.accept()
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
    a = ap.parse_args()
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
