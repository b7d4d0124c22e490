"""Hostile clients of the PoP's port 443 for the lab (``python -m netns.popprobe``); prints one JSON line.

* ``garbage``: bytes that are not TLS; reports what came back (a TLS alert) and the close;
* ``connector``: mTLS with a client certificate, then HELLO {version, resource}; reports the PoP's answer frame;
* ``tls``: mTLS with a client certificate (an unknown CA's, say); reports whether the handshake held;
* ``halfopen``: many TCP connections that never send a ClientHello, held until the probe is killed.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl

from ztna import wire


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["garbage", "connector", "tls", "halfopen"])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--sni", default="")
    ap.add_argument("--cert", default="")
    ap.add_argument("--key", default="")
    ap.add_argument("--ca", default="")
    ap.add_argument("--resource", default="")
    a = ap.parse_args()
    out: dict = {"mode": a.mode}
    if a.mode == "halfopen":
        halfopen(a.addr, a.count)
        return
    sock = socket.create_connection((a.addr, 443), timeout=5)
    try:
        if a.mode == "garbage":
            sock.sendall(b"GET / HTTP/1.0\r\n\r\n" + bytes(range(256)))
            data = b""
            try:
                while chunk := sock.recv(4096):
                    data += chunk
            except OSError as exc:
                out["error"] = str(exc)
            out["reply_hex"] = data[:16].hex()
            out["alert"] = data[:1] == b"\x15"
        else:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.minimum_version = ssl.TLSVersion.TLSv1_3
            ctx.load_verify_locations(a.ca)
            ctx.load_cert_chain(a.cert, a.key)
            try:
                s = ctx.wrap_socket(sock, server_hostname=a.sni)
                if a.mode == "connector":
                    s.sendall(wire.control(wire.HELLO, version=wire.VERSION, resource=a.resource))
                d = wire.Decoder()
                frames = []
                while not frames:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    frames = d.feed_untrusted(chunk)
                out["handshake"] = True
                out["frames"] = [{"type": wire.NAMES.get(f.type), **(f.fields or {})} for f in frames]
            except (ssl.SSLError, OSError) as exc:
                out.setdefault("handshake", False)
                out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    print(json.dumps(out))


def halfopen(addr: str, count: int) -> None:
    """Open ``count`` TCP connections to 443 that never send a ClientHello; hold them until killed."""
    import time

    held = []
    for _ in range(count):
        try:
            held.append(socket.create_connection((addr, 443), timeout=3))
        except OSError:
            pass
    time.sleep(0.5)
    alive = 0
    for s in held:  # the PoP closed the ones it refused (recv sees the end at once)
        s.setblocking(False)
        try:
            alive += s.recv(1) != b""
        except BlockingIOError:
            alive += 1
        except OSError:
            pass
    print(json.dumps({"mode": "halfopen", "opened": len(held), "still_open": alive}), flush=True)
    while True:
        time.sleep(60)


if __name__ == "__main__":
    main()
