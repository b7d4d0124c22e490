"""Hostile clients of the PoP's port 443 for the lab (``python -m netns.popprobe``); prints one JSON line.

* ``garbage``: bytes that are not TLS; reports what came back (a TLS alert) and the close;
* ``connector``: mTLS with a client certificate, then HELLO {version, resource}; reports the PoP's answer frame;
* ``tls``: mTLS with a client certificate (an unknown CA's, say); reports whether the handshake held;
* ``halfopen``: many TCP connections that never send a ClientHello, held until the probe is killed;
* ``site``: mTLS as a site router, HELLO {version, site}; with ``--then spoof`` it sends DATA packets from
  ``--spoof SRC`` (another site's address) after WELCOME, with ``--then garbage`` bytes that are no frame;
  reports every frame the PoP sent and whether it closed.
"""

from __future__ import annotations

import argparse
import json
import socket
import ssl

from ztna import wire
from ztna.ippacket import checksum


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["garbage", "connector", "tls", "halfopen", "site"])
    ap.add_argument("--count", type=int, default=100)
    ap.add_argument("--addr", required=True)
    ap.add_argument("--sni", default="")
    ap.add_argument("--cert", default="")
    ap.add_argument("--key", default="")
    ap.add_argument("--ca", default="")
    ap.add_argument("--resource", default="")
    ap.add_argument("--site", default="")
    ap.add_argument("--then", choices=["", "spoof", "garbage"], default="")
    ap.add_argument("--spoof", default="10.10.0.10")
    ap.add_argument("--dst", default="203.0.113.80")
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
                if a.mode == "site":
                    s.sendall(wire.control(wire.HELLO, version=wire.VERSION, site=a.site))
                    out.update(site_session(s, a))
                    raise _Done
                d = wire.Decoder()
                frames = []
                while not frames:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    frames = d.feed_untrusted(chunk)
                out["handshake"] = True
                out["frames"] = [{"type": wire.NAMES.get(f.type), **(f.fields or {})} for f in frames]
            except _Done:
                out["handshake"] = True
            except (ssl.SSLError, OSError) as exc:
                out.setdefault("handshake", False)
                out["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        sock.close()
    print(json.dumps(out))


class _Done(Exception):
    pass


def _frames_until_quiet(s, d, wait: float) -> tuple[list, bool]:
    """Frames the PoP sends within ``wait`` seconds of quiet, and whether it closed the connection."""
    s.settimeout(wait)
    frames, closed = [], False
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                closed = True
                break
            frames += d.feed_untrusted(chunk)
    except socket.timeout:
        pass
    except (ssl.SSLError, OSError):
        closed = True
    return frames, closed


def _udp_packet(src: str, dst: str) -> bytes:
    """One IPv4/UDP packet (no UDP checksum, which IPv4 allows), with the tunnel's 10-byte virtio-net header."""
    import struct

    payload = b"spoofed"
    udp = struct.pack("!HHHH", 40000, 9, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 1, 0, 64, 17, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    ip = ip[:10] + struct.pack("!H", checksum(ip)) + ip[12:]
    return bytes(wire.VNET_HDR_LEN) + ip + udp


def site_session(s, a) -> dict:
    d = wire.Decoder()
    frames, closed = _frames_until_quiet(s, d, 1.5)
    got = {"frames": [{"type": wire.NAMES.get(f.type), **(f.fields or {})} for f in frames], "closed": closed}
    if closed or not a.then:
        return got
    if a.then == "spoof":
        pkt = _udp_packet(a.spoof, a.dst)
        s.sendall(b"".join(wire.data_header(len(pkt)) + pkt for _ in range(a.count)))
        got["sent"] = a.count
    else:
        s.sendall(b"\xff" * 64)
    more, closed = _frames_until_quiet(s, d, 1.5)
    got["after"] = [{"type": wire.NAMES.get(f.type), **(f.fields or {})} for f in more]
    got["closed"] = closed
    return got


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
