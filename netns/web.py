"""A lab web server: names itself and the client address it saw.

``python -m netns.web --listen ADDR --port N --name NAME [--cert C --key K]``
serves HTTPS when given a certificate, HTTP otherwise.  Used as the private
application behind the gateway and as the public site reached directly.
"""

from __future__ import annotations

import argparse
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def make_handler(name: str, server_addr: str):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self):  # noqa: N802 (http.server's naming)
            body = (f"<html><body><h1>{name}</h1>\n"
                    f"<p>served by {server_addr} to client {self.client_address[0]}</p>\n"
                    f"<p>path {self.path}</p></body></html>\n").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, fmt, *args):
            print(f"{name} {self.client_address[0]} {fmt % args}", flush=True)

    return Handler


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--listen", required=True)
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--cert")
    ap.add_argument("--key")
    a = ap.parse_args()
    httpd = ThreadingHTTPServer((a.listen, a.port), make_handler(a.name, a.listen))
    if a.cert:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(a.cert, a.key)
        httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    print(f"{a.name} on {a.listen}:{a.port} ({'https' if a.cert else 'http'})", flush=True)
    httpd.serve_forever()


if __name__ == "__main__":
    main()
