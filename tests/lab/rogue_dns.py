"""A misbehaving DNS client, run inside a lab namespace by the hostile lab tests.

    python rogue_dns.py SERVER MODE [ARGS...]

Every mode is bounded by its arguments and prints one JSON line:

- ``fuzz N SEED [tcp]``: N mutations of valid queries (flipped bytes, inserted
  and deleted bytes, a wrong count, a label length past the end), over UDP or
  TCP; counts answers by RCODE and silences.
- ``cut [tcp]``: one valid query cut at every length.
- ``loops [tcp]``: names made of compression pointers: to itself, in a loop of
  two, forward past the end, deeper than any name can be.
- ``long [tcp]``: names over 255 octets, and labels over 63, built by hand.
- ``tcp-garbage N [SECONDS]``: N TCP connections at once with random bytes; what each got.
- ``tcp-hold N SECONDS [BIND]``: keep N TCP connections open that send half a
  length prefix and wait, replacing each one the server closes; reports how
  long the server let them live.
- ``page-stall ADDR PORT N SECONDS [tls]``: N connections to a block-page
  server that send half a request head (or half a ClientHello) and wait.
- ``poison PARENT [BIND]``: the query pattern that once had a whole domain
  classified for every client (long random labels and distinct names under it).
"""

import base64
import json
import random
import socket
import ssl
import struct
import sys
import time

from dnslib import DNSRecord

RCODES = {0: "NOERROR", 1: "FORMERR", 2: "SERVFAIL", 3: "NXDOMAIN", 4: "NOTIMP", 5: "REFUSED"}


def header(qid=0x4242, flags=0x0100, qd=1, an=0, ns=0, ar=0) -> bytes:
    return struct.pack("!HHHHHH", qid, flags, qd, an, ns, ar)


def ask(server, data: bytes, tcp: bool, timeout: float = 1.0) -> str:
    """The RCODE name of the answer, or 'silence' (dropped or connection closed)."""
    try:
        if tcp:
            s = socket.create_connection((server, 53), timeout=timeout)
            s.sendall(struct.pack("!H", len(data)) + data)
            hdr = s.recv(2)
            if len(hdr) < 2:
                return "silence"
            ln = struct.unpack("!H", hdr)[0]
            reply = b""
            while len(reply) < ln:
                b = s.recv(ln - len(reply))
                if not b:
                    break
                reply += b
            s.close()
        else:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(timeout)
            s.sendto(data, (server, 53))
            reply = s.recv(65535)
            s.close()
    except (socket.timeout, TimeoutError, ConnectionError):
        return "silence"
    if len(reply) < 4:
        return "short"
    if reply[:2] != data[:2]:
        return "wrong-id"
    return RCODES.get(reply[3] & 0x0F, str(reply[3] & 0x0F))


def tally(results) -> dict:
    out: dict = {}
    for r in results:
        out[r] = out.get(r, 0) + 1
    return out


def mutate(rng: random.Random, q: bytes) -> bytes:
    b = bytearray(q)
    kind = rng.randrange(5)
    if kind == 0:
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(2, len(b))] = rng.randrange(256)  # keep the ID: the answer must carry it
    elif kind == 1:
        i = rng.randrange(12, len(b))
        b[i:i] = rng.randbytes(rng.randint(1, 8))
    elif kind == 2:
        i = rng.randrange(12, len(b))
        del b[i:i + rng.randint(1, 4)]
    elif kind == 3:
        b[4:12] = struct.pack("!HHHH", *(rng.choice((0, 1, 2, 255, 65535)) for _ in range(4)))
    else:
        b[12] = rng.choice((63, 64, 100, 192, 255))  # a label length past the end, or a pointer
    return bytes(b)


def fuzz(server, n, seed, tcp=""):
    rng = random.Random(int(seed))
    names = ["www.good.example", "malware.bad.example", "a.b.c.d.e.good.example"]
    out = []
    for i in range(int(n)):
        q = DNSRecord.question(rng.choice(names), rng.choice(["A", "AAAA", "TXT", "MX", "ANY"]))
        q.header.id = 0x4000 + i
        out.append(ask(server, mutate(rng, q.pack()), bool(tcp), timeout=0.5))
    return tally(out)


def cut(server, tcp=""):
    q = DNSRecord.question("www.good.example", "A").pack()
    return tally(ask(server, q[:k], bool(tcp), timeout=0.5) for k in range(2, len(q)))


def loops(server, tcp=""):
    cases = {
        "to-itself": header() + b"\xc0\x0c" + b"\x00\x01\x00\x01",
        "two-step": header() + b"\x03www\xc0\x12" + b"\x03abc\xc0\x0c" + b"\x00\x01\x00\x01",
        "past-the-end": header() + b"\xc0\xff" + b"\x00\x01\x00\x01",
        "deep-chain": header() + b"".join(b"\x01a" + struct.pack("!H", 0xC000 | (12 + 4 * (i + 1))) for i in range(200))
                      + b"\x00\x00\x01\x00\x01",
    }
    return {k: ask(server, v, bool(tcp)) for k, v in cases.items()}


def long_names(server, tcp=""):
    def wire(labels):
        return b"".join(bytes([len(lb)]) + lb for lb in labels) + b"\x00"
    cases = {
        "256-octets": header() + wire([b"a" * 63] * 4) + b"\x00\x01\x00\x01",  # 4*64 + 1 = 257 octets
        "label-64": header() + wire([b"b" * 64, b"example"]) + b"\x00\x01\x00\x01",
        "many-labels": header() + wire([b"c"] * 200) + b"\x00\x01\x00\x01",
    }
    return {k: ask(server, v, bool(tcp)) for k, v in cases.items()}


def tcp_garbage(server, n, seconds=8):
    """N connections at once, each with random bytes; then what each got within SECONDS."""
    rng = random.Random(7)
    socks = []
    for _ in range(int(n)):
        s = socket.create_connection((server, 53), timeout=3)
        try:
            s.sendall(rng.randbytes(rng.choice((1, 3, 50, 700, 4000))))
        except OSError:
            pass
        socks.append(s)
    end = time.monotonic() + float(seconds)
    out = []
    for s in socks:
        s.settimeout(max(0.1, end - time.monotonic()))
        try:
            got = s.recv(4096)
            out.append("answer" if got else "closed")  # a length prefix it could read was answered
        except (socket.timeout, TimeoutError):
            out.append("open")
        except OSError:
            out.append("reset")
        s.close()
    return tally(out)


def tcp_hold(server, n, seconds, bind=""):
    """Keep N idle TCP connections open (half a length prefix each) for SECONDS, opening a new one for each
    the server closes; reports how long the server let them live."""
    def opened():
        s = socket.socket()
        if bind:
            s.bind((bind, 0))
        s.settimeout(3)
        try:
            s.connect((server, 53))
            s.sendall(b"\x00")
        except OSError:
            s.close()
            return None
        s.setblocking(False)
        return s
    t0 = time.monotonic()
    live = {}  # socket -> when it opened
    lifetimes = []
    while time.monotonic() - t0 < float(seconds):
        while len(live) < int(n) and time.monotonic() - t0 < float(seconds):
            s = opened()
            if s is None:
                break
            live[s] = time.monotonic()
        for s in list(live):
            try:
                if s.recv(10) == b"":
                    lifetimes.append(time.monotonic() - live.pop(s))
                    s.close()
            except BlockingIOError:
                pass
            except OSError:
                lifetimes.append(time.monotonic() - live.pop(s))
                s.close()
        time.sleep(0.05)
    for s in live:
        s.close()
    return {"opened": len(lifetimes) + len(live), "closed_at_once": sum(1 for t in lifetimes if t < 1.0),
            "longest": round(max(lifetimes), 1) if lifetimes else None, "still_open": len(live)}


def poison(server, parent, bind=""):
    """A few long random labels and distinct names under ``parent``, from one source (bounded: 40 queries)."""
    rng = random.Random(19)
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    if bind:
        s.bind((bind, 0))
    s.settimeout(1)
    names = []
    for i in range(6):
        raw = base64.b32encode(rng.randbytes(50)).decode().lower().rstrip("=")
        names.append(f"{raw[:40]}.{raw[40:]}.x.{parent}")
    names += [f"n{i}.{parent}" for i in range(34)]
    got = []
    for n in names:
        s.sendto(DNSRecord.question(n, "A").pack(), (server, 53))
        try:
            got.append(RCODES.get(s.recv(4096)[3] & 0x0F, "?"))
        except (socket.timeout, TimeoutError):
            got.append("silence")
    return {"queries": len(names), "answers": tally(got)}


def page_stall(server, addr, port, n, seconds, tls=""):
    """N connections to the block page at ADDR:PORT that send half a request head (or half a ClientHello
    with ``tls``) and wait; reports how long the server let them live (the server argument is unused)."""
    if tls:
        ctx = ssl.create_default_context()
        inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
        obj = ctx.wrap_bio(inc, out, server_hostname="malware.bad.example")
        try:
            obj.do_handshake()
        except ssl.SSLWantReadError:
            pass
        hello = out.read()
        first = hello[: len(hello) // 2]
    else:
        first = b"GET / HTTP/1.1\r\nHost: malware.bad.example\r\nX-Slow: "
    socks = []
    for _ in range(int(n)):
        s = socket.create_connection((addr, int(port)), timeout=3)
        s.sendall(first)
        socks.append(s)
    t0 = time.monotonic()
    lifetimes = []
    for s in socks:
        s.settimeout(max(0.1, float(seconds) - (time.monotonic() - t0)))
        try:
            while s.recv(4096):
                pass
            lifetimes.append(time.monotonic() - t0)
        except (socket.timeout, TimeoutError):
            pass
        except OSError:
            lifetimes.append(time.monotonic() - t0)
        s.close()
    return {"opened": len(socks), "closed": len(lifetimes),
            "first": round(min(lifetimes), 1) if lifetimes else None,
            "last": round(max(lifetimes), 1) if lifetimes else None}


MODES = {"fuzz": fuzz, "cut": cut, "loops": loops, "long": long_names, "tcp-garbage": tcp_garbage,
         "tcp-hold": tcp_hold, "poison": poison, "page-stall": page_stall}


if __name__ == "__main__":
    print(json.dumps(MODES[sys.argv[2]](sys.argv[1], *sys.argv[3:])))
