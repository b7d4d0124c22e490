"""A misbehaving DNS client, run inside a lab namespace by the hostile lab tests.

    python rogue_dns.py SERVER MODE [ARGS...]

Every mode is bounded by its arguments and prints one JSON line (malformed
queries themselves are tests/lab/dnsfuzz.py's):

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
import sys
import time

from dnslib import DNSRecord

from dnsfuzz import rcode  # beside this file: on the path of a script run from here
from tlsprobe import client_hello


def tally(results) -> dict:
    out: dict = {}
    for r in results:
        out[r] = out.get(r, 0) + 1
    return out


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

    def reap() -> None:
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

    while time.monotonic() - t0 < float(seconds):
        while len(live) < int(n) and time.monotonic() - t0 < float(seconds):
            s = opened()
            if s is None:
                break
            live[s] = time.monotonic()
        reap()
        time.sleep(0.05)
    time.sleep(0.5)  # the last ones opened: the server's answer (a close, or nothing) has come by now
    reap()
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
            got.append(rcode(s.recv(4096)))
        except (socket.timeout, TimeoutError):
            got.append("silence")
    return {"queries": len(names), "answers": tally(got)}


def page_stall(server, addr, port, n, seconds, tls=""):
    """N connections to the block page at ADDR:PORT that send half a request head (or half a ClientHello
    with ``tls``) and wait; reports how long the server let them live (the server argument is unused)."""
    if tls:
        hello = client_hello("malware.bad.example")
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


MODES = {"tcp-garbage": tcp_garbage,
         "tcp-hold": tcp_hold, "poison": poison, "page-stall": page_stall}


if __name__ == "__main__":
    print(json.dumps(MODES[sys.argv[2]](sys.argv[1], *sys.argv[3:])))
