"""ztna/biotls.py: real TLS 1.3 with client certificates over a socketpair, both ends BioTLS or one FramedTLS."""

from __future__ import annotations

import asyncio
import os
import socket
import ssl

import pytest

from ztna import pki
from ztna.biotls import BioTLS
from ztna.tlsconn import FramedTLS, client_context, server_context


@pytest.fixture(scope="module")
def pkidir(tmp_path_factory):
    d = tmp_path_factory.mktemp("pki")
    now = pki.utcnow()
    ca = pki.new_ca("bio test CA", now=now)
    pki.save(ca, d, "ca")
    pki.save(pki.issue(ca, "pop.test", kind="server", now=now, dns_names=["pop.test"]), d, "server")
    pki.save(pki.issue(ca, "alice", kind="agent", now=now), d, "alice")
    other = pki.new_ca("another CA", now=now)
    pki.save(pki.issue(other, "mallory", kind="agent", now=now), d, "mallory")
    return d


def contexts(d, client="alice"):
    srv = server_context(str(d / "ca.pem"), str(d / "server.pem"), str(d / "server.key"))
    cli = client_context(str(d / "ca.pem"), str(d / f"{client}.pem"), str(d / f"{client}.key"))
    return srv, cli


async def pair(d, *, client="alice", framed_client=False):
    srv_ctx, cli_ctx = contexts(d, client)
    a, b = socket.socketpair()
    server = BioTLS(a, srv_ctx, server_side=True, name="server")
    if framed_client:
        b.setblocking(False)
        client_conn = FramedTLS(cli_ctx.wrap_socket(b, server_hostname="pop.test", do_handshake_on_connect=False),
                                name="client")
    else:
        client_conn = BioTLS(b, cli_ctx, server_side=False, server_hostname="pop.test", name="client")
    await asyncio.gather(server.handshake(5), client_conn.handshake(5))
    return server, client_conn


def collect(conn):
    got = bytearray()
    closed = []
    conn.on_data = got.extend
    conn.on_close = closed.append
    conn.start_reading()
    return got, closed


async def wait_for(cond, timeout=10.0):
    async with asyncio.timeout(timeout):
        while not cond():
            await asyncio.sleep(0.005)


@pytest.mark.parametrize("framed_client", [False, True])
def test_identity_and_bytes_both_ways(pkidir, framed_client):
    async def main():
        server, client = await pair(pkidir, framed_client=framed_client)
        assert pki.identity_from_peercert(server.tls.getpeercert()) == "alice"
        assert server.tls.version() == "TLSv1.3"
        s_got, s_closed = collect(server)
        c_got, _ = collect(client)
        up = os.urandom(3 * 1024 * 1024 + 17)  # many records, more than one wake-up's budget
        for i in range(0, len(up), 100_000):
            client.send(up[i:i + 100_000])
        server.send(b"hello back")
        await wait_for(lambda: len(s_got) == len(up) and c_got == b"hello back")
        assert bytes(s_got) == up
        assert server.bytes_in == len(up)
        client.close("done")
        await wait_for(lambda: s_closed)
        assert server.closed and "closed" in s_closed[0]
    asyncio.run(main())


def test_a_full_socket_queues_plaintext_and_reports_blocked(pkidir):
    async def main():
        server, client = await pair(pkidir)
        states = []
        server.on_blocked = states.append
        server.start_reading()  # the client does not read yet: the socket fills
        blob = os.urandom(256 * 1024)
        for _ in range(64):
            server.send(blob)
        assert server.blocked and server.queued > 0 and states[0] is True
        got, _ = collect(client)
        await wait_for(lambda: len(got) == 64 * len(blob))
        await wait_for(lambda: not server.blocked)
        assert bytes(got[:len(blob)]) == blob and server.queued == 0 and states[-1] is False
        server.close()
        client.close()
    asyncio.run(main())


def test_a_certificate_of_another_ca_is_refused_with_an_alert(pkidir):
    async def main():
        srv_ctx, cli_ctx = contexts(pkidir, "mallory")
        a, b = socket.socketpair()
        server = BioTLS(a, srv_ctx, server_side=True, name="server")
        client = BioTLS(b, cli_ctx, server_side=False, server_hostname="pop.test", name="client")
        results = await asyncio.gather(server.handshake(5), client.handshake(5), return_exceptions=True)
        assert isinstance(results[0], ssl.SSLCertVerificationError)
        # the client learns why from the server's alert (TLS 1.3: on its first read after the handshake)
        if not isinstance(results[1], ssl.SSLError):
            _, closed = collect(client)
            await wait_for(lambda: closed)
            assert "CERTIFICATE" in closed[0].upper() or "ALERT" in closed[0].upper()
        server.close()
        client.close()
    asyncio.run(main())


def test_peer_vanishing_mid_handshake_is_an_oserror(pkidir):
    async def main():
        srv_ctx, _ = contexts(pkidir)
        a, b = socket.socketpair()
        server = BioTLS(a, srv_ctx, server_side=True, name="server")
        b.sendall(b"\x16\x03\x01\x00\x05hello")  # the start of a record, then gone
        b.close()
        with pytest.raises((OSError, ssl.SSLError)):
            await server.handshake(5)
        server.close()
    asyncio.run(main())
