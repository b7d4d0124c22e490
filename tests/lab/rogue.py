"""A misbehaving tunnel client, run inside a lab namespace by the lab tests.

    python rogue.py MODE HOST PORT [ARGS...]

Modes on the gateway's port:
``tls CA CERT KEY [MAXVER]`` (present CERT/KEY, ``-`` for none, send HELLO,
report whether WELCOME came; MAXVER ``1.2`` offers TLS 1.2 only),
``lease CA CERT KEY FQDN ADDR`` (a valid tunnel, then one LEASE; report the
LEASE_RESULT), ``raw-garbage`` (non-TLS bytes), ``slowloris SECONDS`` (a real
ClientHello, one byte every half second), ``stall SECONDS`` (connect and say
nothing), ``flood N HOLD SRC...`` (N idle TCP connections spread over the
source addresses, held HOLD seconds, then closed),
``bad-frame`` / ``truncated-frame`` / ``spoof`` / ``nested-json`` /
``overlong-control`` / ``not-object`` / ``data-before-hello`` /
``hello-twice`` ``CA CERT KEY`` (a valid tunnel, then a protocol violation),
``crafted CA CERT KEY FQDN ADDR`` (a valid tunnel and an allowed lease, then
packets conntrack calls INVALID: SYN+FIN, SYN+RST, no flags, a bad checksum).
Mode ``raw-spoof SRC DST N`` sends N raw UDP packets with a forged source from
the host it runs on (HOST and PORT unused, give ``-`` and ``0``).
Prints one JSON line.
"""

import json
import os
import random
import resource
import select
import socket
import ssl
import struct
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", ".."))
from ztna import wire  # noqa: E402
from ztna.ippacket import checksum  # noqa: E402
from tlsprobe import client_hello  # noqa: E402  (beside this file)

GW_NAME = "gateway.mycompany.net"


def tls(host, port, ca, cert, key, maxver=None):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    if maxver == "1.2":
        ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    else:
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
    ctx.load_verify_locations(ca)
    if cert and cert != "-":
        ctx.load_cert_chain(cert, key)
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=5), server_hostname=GW_NAME)
    return s


def frames_until(s, d, want, timeout=5.0):
    """Read frames until one of type ``want`` (returned) or the connection ends (None)."""
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        data = s.recv(65536)
        if not data:
            return None, seen
        for f in d.feed_untrusted(data):
            seen.append(f)
            if f.type == want:
                return f, seen
    return None, seen


def hello(s, d=None):
    s.sendall(wire.control(wire.HELLO, version=1, tunnel_addr="100.64.0.1"))
    f, _ = frames_until(s, d or wire.Decoder(), wire.WELCOME)
    return f.fields if f else None


def after(s, d, out, timeout=3.0):
    """How the gateway treats the session now: open, or closed (with the CLOSE reason it sent, if any)."""
    s.settimeout(timeout)
    try:
        while True:
            data = s.recv(65536)
            if not data:
                out["after"] = "closed"
                return
            for f in d.feed_untrusted(data):
                if f.type == wire.CLOSE:
                    out["close_reason"] = f.fields.get("reason")
    except (socket.timeout, TimeoutError):
        out["after"] = "open"
    except (ssl.SSLError, OSError) as exc:
        out["after"] = "closed"
        out["close_error"] = str(exc)


def ip_packet(src, dst, proto, l4, ident=0):
    hdr = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(l4), ident, 0, 64, proto, 0,
                      socket.inet_aton(src), socket.inet_aton(dst))
    hdr = hdr[:10] + struct.pack("!H", checksum(hdr)) + hdr[12:]
    return hdr + l4


def tcp_segment(src, dst, sport, dport, flags, *, bad_sum=False):
    seg = struct.pack("!HHIIBBHHH", sport, dport, random.getrandbits(32), 0, 5 << 4, flags, 64240, 0, 0)
    pseudo = socket.inet_aton(src) + socket.inet_aton(dst) + struct.pack("!BBH", 0, 6, len(seg))
    csum = checksum(pseudo + seg) ^ (0x5A5A if bad_sum else 0)
    return seg[:16] + struct.pack("!H", csum) + seg[18:]


def closed_by_server(s, seconds):
    """Seconds until the server closed ``s`` (None if it did not within ``seconds``)."""
    t0 = time.monotonic()
    s.settimeout(seconds)
    try:
        while True:
            if not s.recv(4096):
                return round(time.monotonic() - t0, 2)
    except (socket.timeout, TimeoutError):
        return None
    except OSError:
        return round(time.monotonic() - t0, 2)


def flood(host, port, n, hold, sources):
    # 5,000 sockets are past the default soft limit of 1,024 descriptors.
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = min(hard, n + 256) if hard != resource.RLIM_INFINITY else n + 256
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), hard))
    socks, failed = [], 0
    for i in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setblocking(False)
        s.bind((sources[i % len(sources)], 0))
        try:
            s.connect((host, port))
        except BlockingIOError:
            pass
        except OSError:
            failed += 1
            s.close()
            continue
        socks.append(s)
        if i % 256 == 255:
            time.sleep(0.02)  # let the gateway's accept loop keep up instead of overflowing the backlog
    deadline = time.monotonic() + hold
    open_ = {s.fileno(): s for s in socks}
    ended = 0
    poller = select.epoll()
    for fd in open_:
        poller.register(fd, select.EPOLLIN | select.EPOLLRDHUP)
    while time.monotonic() < deadline and open_:
        for fd, _ in poller.poll(0.2):
            s = open_.pop(fd, None)
            if s is None:
                continue
            poller.unregister(fd)
            try:
                data = s.recv(100)
            except OSError:
                data = b""
            if not data:
                ended += 1
            s.close()
    for s in open_.values():
        s.close()
    return {"opened": len(socks), "connect_failed": failed, "ended_by_server": ended, "held_to_end": len(open_)}


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    rest = sys.argv[4:]
    out = {"mode": mode}
    try:
        if mode == "raw-garbage":
            s = socket.create_connection((host, port), timeout=5)
            s.sendall(os.urandom(3000))
            out["closed_by_server"] = s.recv(100) == b""
        elif mode == "slowloris":
            s = socket.create_connection((host, port), timeout=5)
            hello_bytes, sent, t0 = client_hello(GW_NAME), 0, time.monotonic()
            s.settimeout(0.5)
            while time.monotonic() - t0 < float(rest[0]) and sent < len(hello_bytes):
                try:
                    s.send(hello_bytes[sent:sent + 1])
                    sent += 1
                    if s.recv(4096) == b"":
                        out["closed_after_s"] = round(time.monotonic() - t0, 2)
                        break
                except (socket.timeout, TimeoutError):
                    continue
                except OSError:
                    out["closed_after_s"] = round(time.monotonic() - t0, 2)
                    break
            out["sent"] = sent
        elif mode == "stall":
            s = socket.create_connection((host, port), timeout=5)
            out["closed_after_s"] = closed_by_server(s, float(rest[0]))
        elif mode == "flood":
            out.update(flood(host, port, int(rest[0]), float(rest[1]), rest[2:]))
        elif mode == "raw-spoof":
            src, dst, n = rest[0], rest[1], int(rest[2])
            r = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
            for i in range(n):
                udp = struct.pack("!HHHH", 40000 + i, 9, 8 + 4, 0) + b"spof"
                r.sendto(ip_packet(src, dst, 17, udp, ident=i), (dst, 0))
            out["sent"] = n
        elif mode == "tls":
            s = tls(host, port, *rest[:3], *(rest[3:4]))
            out["version"] = s.version()
            out["welcome"] = hello(s)
        elif mode == "lease-flood":
            # N LEASEs for distinct names the policy allows, in one write; count the answers.
            s = tls(host, port, *rest[:3])
            d = wire.Decoder()
            out["welcome"] = hello(s, d)
            n = int(rest[3])
            s.sendall(b"".join(wire.control(wire.LEASE, fqdn=f"n{i}.flood.mycompany.net",
                                            addr=f"100.64.{2 + i // 250}.{i % 250 + 1}") for i in range(n)))
            results, deadline = [], time.time() + 20
            s.settimeout(1)
            while len(results) < n and time.time() < deadline:
                try:
                    data = s.recv(65536)
                except (socket.timeout, TimeoutError):
                    continue
                if not data:
                    break
                results += [f.fields for f in d.feed_untrusted(data) if f.type == wire.LEASE_RESULT]
            out["answered"] = len(results)
            out["reasons"] = sorted({r.get("reason", "")[:60] for r in results})
            after(s, d, out)
        elif mode == "lease":
            s = tls(host, port, *rest[:3])
            d = wire.Decoder()
            out["welcome"] = hello(s, d)
            s.sendall(wire.control(wire.LEASE, fqdn=rest[3], addr=rest[4]))
            f, _ = frames_until(s, d, wire.LEASE_RESULT)
            out["lease_result"] = f.fields if f else None
        else:
            s = tls(host, port, *rest[:3])
            d = wire.Decoder()
            if mode == "nested-json":
                # HELLO and a deeply nested LEASE in one write, so both arrive in one read.
                deep = b"[" * 2000 + b"]" * 2000
                s.sendall(wire.control(wire.HELLO, version=1, tunnel_addr="100.64.0.1")
                          + wire.frame(wire.LEASE, b'{"fqdn":' + deep + b"}"))
                f, seen = frames_until(s, d, wire.WELCOME)
                out["welcome"] = f.fields if f else None
                out["seen"] = [wire.NAMES.get(x.type) for x in seen]
                out["close_reason"] = next((x.fields.get("reason") for x in seen if x.type == wire.CLOSE), None)
                after(s, d, out)
                print(json.dumps(out))
                return
            if mode == "data-before-hello":
                pkt = bytes(10) + ip_packet("100.64.0.1", "100.64.0.3", 17, struct.pack("!HHHH", 1, 9, 8, 0))
                s.sendall(wire.data_header(len(pkt)) + pkt)
                after(s, d, out)
                print(json.dumps(out))
                return
            out["welcome"] = hello(s, d)
            if mode == "bad-frame":
                s.sendall(bytes([0x7E, 0, 0, 4]) + b"evil")
            elif mode == "overlong-control":
                s.sendall(bytes([wire.LEASE, 0, 0x40, 0]) + b"{" * 100)
            elif mode == "not-object":
                s.sendall(wire.frame(wire.LEASE, b"[1,2,3]"))
            elif mode == "hello-twice":
                s.sendall(wire.control(wire.HELLO, version=1, tunnel_addr="100.64.0.1"))
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
            elif mode == "crafted":
                fqdn, addr = rest[3], rest[4]
                s.sendall(wire.control(wire.LEASE, fqdn=fqdn, addr=addr))
                f, _ = frames_until(s, d, wire.LEASE_RESULT)
                out["lease_result"] = f.fields if f else None
                me = "100.64.0.1"
                cases = {"syn+fin": (0x03, False), "syn+rst": (0x06, False), "no-flags": (0x00, False),
                         "bad-checksum": (0x02, True)}
                sent = 0
                for i, (flags, bad) in enumerate(list(cases.values()) * 5):
                    seg = tcp_segment(me, addr, 41000 + i, 443, flags, bad_sum=bad)
                    pkt = bytes(10) + ip_packet(me, addr, 6, seg, ident=i)
                    s.sendall(wire.data_header(len(pkt)) + pkt)
                    sent += 1
                # A spoofed source too, which the gateway's NAT drops before the kernel sees it.
                seg = tcp_segment("100.64.0.77", addr, 42000, 443, 0x02)
                pkt = bytes(10) + ip_packet("100.64.0.77", addr, 6, seg)
                s.sendall(wire.data_header(len(pkt)) + pkt)
                out["sent"] = {"invalid": sent, "spoofed": 1}
                s.sendall(wire.frame(wire.KEEPALIVE))
                f, _ = frames_until(s, d, wire.KEEPALIVE)
                out["keepalive_back"] = f is not None
            after(s, d, out)
    except ssl.SSLError as exc:
        out["ssl_error"] = exc.reason or str(exc)
    except OSError as exc:
        out["os_error"] = str(exc)
    except wire.BadFrame as exc:
        out["bad_frame_from_gateway"] = str(exc)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
