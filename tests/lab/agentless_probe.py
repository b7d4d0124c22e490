"""Raw HTTPS probes against the agentless gateway, run inside a lab namespace; prints JSON.

    python agentless_probe.py CA.pem CASE [ARG]

Cases send what curl will not (floods, slow heads, stalled bodies, smuggling,
a WebSocket frame) over a real verified TLS connection, and report what came
back and when the gateway closed the connection.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import sys
import time

GW, APP = "203.0.113.20", "app.mycompany.net"


def connect(ca: str, sni: str = APP) -> ssl.SSLSocket:
    ctx = ssl.create_default_context(cafile=ca)
    s = socket.create_connection((GW, 443), timeout=15)
    return ctx.wrap_socket(s, server_hostname=sni)


def until_closed(s: ssl.SSLSocket, limit: float = 15) -> tuple[bytes, float | None]:
    """Everything the gateway sends until it closes; (bytes, seconds) or (bytes, None) if it did not."""
    t0, got = time.monotonic(), b""
    s.settimeout(0.5)
    while time.monotonic() - t0 < limit:
        try:
            data = s.recv(65536)
        except (socket.timeout, TimeoutError):
            continue
        except (ssl.SSLError, OSError):
            return got, time.monotonic() - t0
        if not data:
            return got, time.monotonic() - t0
        got += data
    return got, None


def status(data: bytes) -> int | None:
    try:
        return int(data.split(b" ", 2)[1])
    except (IndexError, ValueError):
        return None


def send_and_read(ca: str, raw: bytes, cookie: str = "") -> dict:
    s = connect(ca)
    s.sendall(raw.replace(b"{cookie}", cookie.encode()))
    got, closed = until_closed(s)
    s.close()
    return {"status": status(got), "closed_after": closed, "head": got.split(b"\r\n\r\n")[0].decode(errors="replace")[:400],
            "responses": got.count(b"HTTP/1.1 ")}


def slowloris(ca: str, n: int) -> dict:
    """``n`` connections each dribbling a request head one header line per 0.5 s, never ending it."""
    socks = [connect(ca) for _ in range(n)]
    t0 = time.monotonic()
    for s in socks:
        s.sendall(b"GET / HTTP/1.1\r\nHost: app.mycompany.net\r\n")
    results = [None] * n
    i = 0
    while None in results and time.monotonic() - t0 < 20:
        for k, s in enumerate(socks):
            if results[k] is not None:
                continue
            try:
                s.sendall(f"X-Slow-{i}: 1\r\n".encode())
                s.settimeout(0.01)
                data = s.recv(65536)
                results[k] = {"status": status(data), "after": round(time.monotonic() - t0, 2)}
            except (socket.timeout, TimeoutError, ssl.SSLWantReadError):
                pass
            except (ssl.SSLError, OSError):
                results[k] = {"status": None, "after": round(time.monotonic() - t0, 2)}
        i += 1
        time.sleep(0.5)
    for s in socks:
        s.close()
    return {"results": results}


def stall_body(ca: str, cookie: str) -> dict:
    s = connect(ca)
    s.sendall(f"POST /upload HTTP/1.1\r\nHost: {APP}\r\nCookie: {cookie}\r\nContent-Length: 1000000\r\n\r\n".encode()
              + b"x" * 1000)
    got, closed = until_closed(s, 20)
    return {"status": status(got), "closed_after": closed}


def idle(ca: str, cookie: str) -> dict:
    """One request, its whole answer, then silence: when does the gateway close the kept-alive connection?"""
    s = connect(ca)
    s.sendall(f"GET / HTTP/1.1\r\nHost: {APP}\r\nCookie: {cookie}\r\n\r\n".encode())
    got = b""
    while b"\r\n\r\n" not in got:
        got += s.recv(65536)
    more, closed = until_closed(s, 20)
    return {"status": status(got), "closed_after": closed}


def websocket(ca: str, cookie: str) -> dict:
    s = connect(ca)
    key = "dGhlIHNhbXBsZSBub25jZQ=="
    s.sendall(f"GET /ws HTTP/1.1\r\nHost: {APP}\r\nCookie: {cookie}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
              f"Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        head += s.recv(4096)
    head, _, rest = head.partition(b"\r\n\r\n")
    echoes = []
    for text in (b"hello through the gateway", os.urandom(3000)):
        mask = os.urandom(4)
        n = len(text)
        size = bytes([0x80 | n]) if n < 126 else bytes([0x80 | 126]) + n.to_bytes(2, "big")
        s.sendall(bytes([0x82]) + size + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(text)))
        want = 2 + (0 if n < 126 else 2) + n
        while len(rest) < want:
            rest += s.recv(65536)
        echoes.append(rest[2 + (0 if n < 126 else 2):want] == text)
        rest = rest[want:]
    s.close()
    return {"status": status(head), "head": head.decode(errors="replace"), "echoes": echoes}


def hold(ca: str, n: int) -> dict:
    """``n`` connections that send a ClientHello and wait; then one real handshake; then one after letting go."""
    from tlsprobe import client_hello

    held = []
    for _ in range(n):
        s = socket.create_connection((GW, 443), timeout=15)
        s.sendall(client_hello(APP))
        held.append(s)
    time.sleep(0.5)  # every held hello has been peeked and counted

    def attempt() -> str:
        try:
            s = connect(ca)
        except (ssl.SSLError, OSError) as exc:
            return f"refused: {exc}"
        s.close()
        return "accepted"

    while_held = attempt()
    for s in held:
        s.close()
    time.sleep(0.5)
    return {"while_held": while_held, "after": attempt()}


def main() -> None:
    ca, case = sys.argv[1], sys.argv[2]
    arg = sys.argv[3] if len(sys.argv) > 3 else ""
    if case == "raw":
        out = send_and_read(ca, arg.encode().decode("unicode_escape").encode("latin-1"), os.environ.get("COOKIE", ""))
    elif case == "slowloris":
        out = slowloris(ca, int(arg))
    elif case == "stall":
        out = stall_body(ca, arg)
    elif case == "idle":
        out = idle(ca, arg)
    elif case == "hold":
        out = hold(ca, int(arg))
    elif case == "websocket":
        out = websocket(ca, arg)
    else:
        raise SystemExit(f"unknown case {case}")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
