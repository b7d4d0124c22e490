"""gateway.agentless.server: Front.claim's peek at the ClientHello, on a real loopback connection."""

import asyncio
import socket
import ssl

import pytest

from gateway.agentless import route as routing
from gateway.agentless.server import Front


def hello(sni):
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(inc, out, server_hostname=sni)
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return out.read()


def bare_front():
    # Only what claim's routing needs: no certificates, users or keys.
    f = object.__new__(Front)
    f.tunnel_names, f.names, f.refused = frozenset({"gateway.mycompany.net"}), frozenset({"app.mycompany.net"}), 0
    return f


def loopback_pair():
    ls = socket.socket()
    ls.bind(("127.0.0.1", 0))
    ls.listen(1)
    client = socket.create_connection(ls.getsockname())
    server, _ = ls.accept()
    ls.close()
    server.setblocking(False)
    return client, server


def test_half_a_hello_then_fin_is_refused_at_once_without_spinning(monkeypatch, caplog):
    # epoll reports a socket with a FIN readable whatever SO_RCVLOWAT says, and MSG_PEEK returns the
    # same partial bytes each time: a peek that learns nothing new must end the wait, not loop.
    calls = []
    real = routing.peek_untrusted
    monkeypatch.setattr(routing, "peek_untrusted", lambda data, *a: calls.append(len(data)) or real(data, *a))
    client, server = loopback_pair()
    data = hello("app.mycompany.net")
    client.sendall(data[:len(data) // 2])
    client.shutdown(socket.SHUT_WR)
    front = bare_front()

    async def go():
        return await front.claim(server, "127.0.0.1:1", timeout=2.0)

    with caplog.at_level("WARNING"):
        assert asyncio.run(go()) is True
    assert len(calls) <= 3, f"peeked {len(calls)} times at the same {calls[0]} bytes"
    assert front.refused == 1
    assert "closed before its ClientHello" in caplog.text and "no whole ClientHello within" not in caplog.text
    client.close()


def test_a_hello_sent_in_two_parts_is_still_read_whole():
    client, server = loopback_pair()
    data = hello("gateway.mycompany.net")

    async def go():
        task = asyncio.ensure_future(bare_front().claim(server, "127.0.0.1:1", timeout=2.0))
        client.sendall(data[:40])
        await asyncio.sleep(0.05)
        client.sendall(data[40:])
        return await task

    assert asyncio.run(go()) is False  # the tunnel's: the bytes are still in the kernel for it
    assert server.recv(len(data) + 10, socket.MSG_PEEK) == data
    client.close()
    server.close()


class Cfg:
    max_connections, max_connections_per_source = 5, 2


def test_browser_connections_are_counted_at_claim_and_bounded_per_source(monkeypatch, caplog):
    # Counted before the task runs: claims in one loop turn must not overshoot; and one address
    # may hold only max_connections_per_source of them (its TLS handshakes and head waits included).
    served = []

    async def serve(self, sock, peer, name):
        served.append(peer)
        await asyncio.sleep(0.05)
        sock.close()

    monkeypatch.setattr(Front, "_serve", serve)
    front = bare_front()
    front.cfg = Cfg()
    front._start_counting()
    data = hello("app.mycompany.net")
    pairs = [loopback_pair() for _ in range(4)] + [loopback_pair() for _ in range(4)]
    for c, _ in pairs:
        c.sendall(data)

    async def go():
        peers = [f"10.0.0.1:{i}" for i in range(4)] + [f"10.0.0.{2 + i}:1" for i in range(4)]
        got = await asyncio.gather(*(front.claim(s, p, 2.0) for (_, s), p in zip(pairs, peers)))
        counted = front.active
        await asyncio.sleep(0.2)
        return got, counted

    with caplog.at_level("WARNING"):
        got, counted = asyncio.run(go())
    assert got == [True] * 8
    assert sorted(served) == ["10.0.0.1:0", "10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1", "10.0.0.4:1"]
    assert counted == 5 and front.active == 0
    assert caplog.text.count("browser connections from 10.0.0.1 already") == 1  # rate-limited: 2 refusals, 1 line
    assert "browser connections already" in caplog.text  # 10.0.0.5: over max_connections
    for c, s in pairs:
        c.close()
        s.close()
