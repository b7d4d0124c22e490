"""A misbehaving tunnel client, run inside a lab namespace by the lab tests.

    python rogue.py MODE HOST PORT [CA CERT KEY]

Modes: ``tls`` (present CERT/KEY or none, send HELLO, report whether WELCOME
came), ``raw-garbage`` (non-TLS bytes), ``bad-frame`` / ``truncated-frame`` /
``spoof`` (a valid tunnel, then a protocol violation).  Prints one JSON line.
"""

import json
import os
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from ztna import wire  # noqa: E402


def tls(host, port, ca, cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    if cert and cert != "-":
        ctx.load_cert_chain(cert, key)
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname="gateway.mycompany.net")
    return s


def hello(s):
    s.sendall(wire.control(wire.HELLO, version=1, tunnel_addr="100.64.0.1"))
    d = wire.Decoder()
    deadline = time.time() + 5
    while time.time() < deadline:
        data = s.recv(65536)
        if not data:
            return None
        for f in d.feed_untrusted(data):
            if f.type == wire.WELCOME:
                return f.fields
    return None


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    out = {"mode": mode}
    try:
        if mode == "raw-garbage":
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(os.urandom(3000))
            out["closed_by_server"] = s.recv(100) == b""
        elif mode == "tls":
            s = tls(host, port, *rest)
            out["welcome"] = hello(s)
        else:
            s = tls(host, port, *rest)
            out["welcome"] = hello(s)
            if mode == "bad-frame":
                s.sendall(bytes([0x7E, 0, 0, 4]) + b"evil")
            elif mode == "truncated-frame":
                s.sendall(wire.data_header(1400) + b"\x00" * 100)
                time.sleep(0.2)
                s.close()
                out["after"] = "client closed"
                print(json.dumps(out))
                return
            elif mode == "spoof":
                # DATA to an address never leased (the private DNS server) from a forged source.
                pkt = bytes(10) + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                                              socket.inet_aton("100.64.0.9"), socket.inet_aton("192.168.1.53")) + bytes(8)
                s.sendall(wire.data_header(len(pkt)) + pkt)
                pkt2 = bytes(10) + struct.pack("!BBHHHBBH4s4s", 0x45, 0, 28, 0, 0, 64, 17, 0,
                                               socket.inet_aton("100.64.0.1"), socket.inet_aton("192.168.1.53")) + bytes(8)
                s.sendall(wire.data_header(len(pkt2)) + pkt2)
                s.sendall(wire.frame(wire.KEEPALIVE))
            s.settimeout(3)
            try:
                out["after"] = "closed" if s.recv(100) == b"" else "open"
            except (socket.timeout, TimeoutError):
                out["after"] = "open"
    except ssl.SSLError as exc:
        out["ssl_error"] = exc.reason or str(exc)
    except OSError as exc:
        out["os_error"] = str(exc)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
