"""A misbehaving forward-proxy client, run inside a lab namespace by the hostile lab tests.

    python rogue_proxy.py PROXY_HOST PORT CAFILE MODE [ARGS...]

Modes (each prints one JSON line; counts are bounded by the arguments):

- ``connect NAME SNI [N]``: ``CONNECT NAME:443``, then a real TLS handshake with
  ``SNI`` (``-`` for none), verified against CAFILE but not by host name, and a
  ``GET /`` for the SNI; N times.  Reports the CONNECT status, the TLS outcome
  (``ok`` or the alert) and the page's first line.
- ``connect-raw NAME HEX [N]``: ``CONNECT NAME:443``, then the raw bytes HEX;
  what comes back and whether the proxy closed.
- ``transparent ADDR SNI [N]``: TLS straight to ADDR:443 with ``SNI`` (the
  transparent proxy takes it over on the way).
- ``garbage N``: N connections, each with random bytes of a random size.
- ``slowloris N SECONDS``: N connections that drip a request head a byte at a
  time; reports what each got back and after how long.
- ``stalled N SECONDS``: N connections that CONNECT a decrypted name and send
  half a ClientHello; reports what each got back.
"""

import json
import random
import select
import socket
import ssl
import sys
import time

from tlsprobe import client_hello  # beside this file: on the path of a script run from here


def status_of(sock: socket.socket) -> str:
    got = b""
    while b"\r\n\r\n" not in got:
        b = sock.recv(4096)
        if not b:
            break
        got += b
    return got.split(b"\r\n")[0].decode(errors="replace")


def read_all(sock: socket.socket, limit: int = 1 << 16) -> tuple[bytes, str]:
    got = b""
    try:
        while len(got) < limit:
            b = sock.recv(4096)
            if not b:
                return got, "closed"
            got += b
    except socket.timeout:
        return got, "open"
    except OSError as exc:
        return got, f"error: {exc}"
    return got, "open"


def tls_get(sock: socket.socket, ca: str, sni: str | None) -> dict:
    ctx = ssl.create_default_context(cafile=ca)
    ctx.check_hostname = False  # the probe wants to know what it reached, whatever the name
    out = {}
    try:
        t = ctx.wrap_socket(sock, server_hostname=sni)
    except ssl.SSLError as exc:
        out["tls"] = exc.reason or str(exc)
        return out
    except OSError as exc:
        out["tls"] = f"os: {exc}"
        return out
    out["tls"] = "ok"
    cert = t.getpeercert()
    out["cert"] = [v for k, v in (x[0] for x in cert.get("subject", ())) if k == "commonName"]
    t.sendall(f"GET / HTTP/1.1\r\nHost: {sni}\r\nConnection: close\r\n\r\n".encode())
    body, _ = read_all(t)
    out["page"] = body.split(b"\r\n\r\n", 1)[-1][:120].decode(errors="replace")
    return out


def connect(host, port, ca, name, sni, n=1):
    results = []
    for _ in range(int(n)):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n".encode())
        r = {"status": status_of(s)}
        if r["status"].startswith("HTTP/1.1 200"):
            r.update(tls_get(s, ca, None if sni == "-" else sni))
        results.append(r)
        s.close()
    return results


def connect_raw(host, port, ca, name, hexdata, n=1):
    results = []
    for _ in range(int(n)):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(f"CONNECT {name}:443 HTTP/1.1\r\nHost: {name}:443\r\n\r\n".encode())
        r = {"status": status_of(s)}
        s.sendall(bytes.fromhex(hexdata))
        s.settimeout(3)
        got, end = read_all(s)
        r.update(back=got[:64].hex(), end=end)
        results.append(r)
        s.close()
    return results


def transparent(host, port, ca, addr, sni, n=1):
    results = []
    for _ in range(int(n)):
        s = socket.create_connection((addr, 443), timeout=5)
        results.append(tls_get(s, ca, None if sni == "-" else sni))
        s.close()
    return results


def garbage(host, port, ca, n):
    rng = random.Random(19)
    firsts = {}
    for _ in range(int(n)):
        s = socket.create_connection((host, port), timeout=5)
        try:
            s.sendall(rng.randbytes(rng.choice((1, 7, 64, 900, 5000))) + b"\r\n\r\n")
        except OSError:
            pass
        got, _ = read_all(s)
        first = got.split(b"\r\n")[0][:40].decode(errors="replace") or "(closed)"
        firsts[first] = firsts.get(first, 0) + 1
        s.close()
    return firsts


def slowloris(host, port, ca, n, seconds):
    socks = [socket.create_connection((host, port), timeout=5) for _ in range(int(n))]
    head = b"CONNECT bank.example.com:443 HTTP/1.1\r\nX-Slow: " + b"s" * 10_000
    t0 = time.monotonic()
    answered = {}  # socket index -> (first line, seconds)
    k = 0
    while len(answered) < len(socks) and time.monotonic() - t0 < float(seconds):
        for i, s in enumerate(socks):
            if i not in answered:
                try:
                    s.send(head[k:k + 1])
                except OSError:
                    answered[i] = ("(reset)", time.monotonic() - t0)
        ready, _, _ = select.select([s for i, s in enumerate(socks) if i not in answered], [], [], 0.2)
        for s in ready:
            s.settimeout(0.5)
            got, _ = read_all(s, 64)
            answered[socks.index(s)] = (got.split(b"\r\n")[0].decode(errors="replace") or "(closed)",
                                        time.monotonic() - t0)
        k += 1
    firsts = {}
    for first, _ in answered.values():
        firsts[first] = firsts.get(first, 0) + 1
    times = [t for _, t in answered.values()]
    return {"answers": firsts, "answered": len(answered), "of": len(socks),
            "first_after": round(min(times), 1) if times else None}


def stalled(host, port, ca, n, seconds):
    hello = client_hello("decrypt.example.com")
    socks = []
    for _ in range(int(n)):
        s = socket.create_connection((host, port), timeout=5)
        s.sendall(b"CONNECT decrypt.example.com:443 HTTP/1.1\r\nHost: decrypt.example.com:443\r\n\r\n")
        status_of(s)
        s.sendall(hello[: len(hello) // 2])
        socks.append(s)
    t0 = time.monotonic()
    answers = {}
    for s in socks:
        s.settimeout(max(0.5, float(seconds) - (time.monotonic() - t0)))
        got, end = read_all(s, 64)
        key = f"{got.hex()} {end}"
        answers[key] = answers.get(key, 0) + 1
        s.close()
    return {"answers": answers, "after": round(time.monotonic() - t0, 1)}


MODES = {"connect": connect, "connect-raw": connect_raw, "transparent": transparent, "garbage": garbage,
         "slowloris": slowloris, "stalled": stalled}


def main():
    host, port, ca, mode, *args = sys.argv[1:]
    try:
        out = MODES[mode](host, int(port), ca, *args)
    except OSError as exc:
        out = {"os_error": str(exc)}
    print(json.dumps(out))


if __name__ == "__main__":
    main()
