"""ztna.dnsclient against in-process servers on loopback that answer wrongly first (no root)."""

import asyncio
import socket

import pytest
from dnslib import QTYPE, RR, A, DNSRecord

from ztna import dnsclient


def query(name="www.example.com", qtype="A", ident=4242) -> bytes:
    q = DNSRecord.question(name, qtype)
    q.header.id = ident
    return q.pack()


def answer(data: bytes, addr="198.51.100.80", *, ident=None, name=None) -> bytes:
    q = DNSRecord.parse(data)
    r = q.reply()
    if ident is not None:
        r.header.id = ident
    if name is not None:
        r.questions[0].qname = name
    r.add_answer(RR(r.q.qname, QTYPE.A, rdata=A(addr), ttl=5))
    return r.pack()


class Liar(asyncio.DatagramProtocol):
    """Answers each query with ``script`` (a list of functions of the query bytes), in order, one datagram each."""

    def __init__(self, script):
        self.script = script

    def connection_made(self, t):
        self.t = t

    def datagram_received(self, data, peer):
        for make in self.script:
            self.t.sendto(make(data), peer)


def port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def udp(script, payload, timeout=1.0):
    p = port()
    t, _ = await asyncio.get_running_loop().create_datagram_endpoint(lambda: Liar(script), local_addr=("127.0.0.1", p))
    try:
        return await dnsclient.query_udp("127.0.0.1", payload, port=p, timeout=timeout)
    finally:
        t.close()


def test_udp_skips_replies_with_another_id_question_garbage_or_a_query():
    script = [
        lambda d: answer(d, "203.0.113.66", ident=1),                     # another ID (a forger's guess)
        lambda d: answer(d, "203.0.113.67", name="evil.example.net"),    # the right ID, another question
        lambda d: b"\x10\x92 garbage",                                   # not DNS
        lambda d: d,                                                     # the query echoed (QR clear)
        lambda d: answer(d, "198.51.100.80"),                            # the real answer
    ]
    reply = asyncio.run(udp(script, query()))
    r = DNSRecord.parse(reply)
    assert r.header.id == 4242 and str(r.rr[0].rdata) == "198.51.100.80"


def test_udp_question_compares_without_case():
    reply = asyncio.run(udp([lambda d: answer(d, name="WWW.Example.COM")], query()))
    assert DNSRecord.parse(reply).header.id == 4242


def test_udp_only_wrong_answers_is_a_timeout_saying_how_many_were_ignored():
    with pytest.raises(dnsclient.UpstreamError, match=r"within 0.3s \(2 replies for another query ignored\)"):
        asyncio.run(udp([lambda d: answer(d, ident=7), lambda d: answer(d, ident=8)], query(), timeout=0.3))


def test_udp_refused_is_an_upstream_error():
    async def go():
        return await dnsclient.query_udp("127.0.0.1", query(), port=port(), timeout=1.0)
    with pytest.raises(dnsclient.UpstreamError):
        asyncio.run(go())


def test_a_payload_that_is_not_dns_is_refused_before_sending():
    with pytest.raises(dnsclient.UpstreamError, match="the query itself is not DNS"):
        asyncio.run(dnsclient.query_udp("127.0.0.1", b"\x01", port=9, timeout=0.1))


async def tcp(make, payload):
    async def serve(reader, writer):
        n = int.from_bytes(await reader.readexactly(2), "big")
        out = make(await reader.readexactly(n))
        if out is not None:  # None: hang up without a word
            writer.write(len(out).to_bytes(2, "big") + out)
        await writer.drain()
        writer.close()
    srv = await asyncio.start_server(serve, "127.0.0.1", 0)
    p = srv.sockets[0].getsockname()[1]
    try:
        return await dnsclient.query_tcp("127.0.0.1", payload, port=p, timeout=1.0)
    finally:
        srv.close()


def test_tcp_returns_the_answer():
    r = DNSRecord.parse(asyncio.run(tcp(answer, query(ident=9))))
    assert r.header.id == 9 and str(r.rr[0].rdata) == "198.51.100.80"


@pytest.mark.parametrize("make,why", [
    (lambda d: answer(d, ident=1), "ID 1, the query's is 4242"),
    (lambda d: answer(d, name="other.example.com"), "a question other than the query's"),
    (lambda d: b"xx", "not DNS"),
])
def test_tcp_a_reply_that_does_not_answer_is_an_error(make, why):
    with pytest.raises(dnsclient.UpstreamError, match=why):
        asyncio.run(tcp(make, query()))


def test_tcp_closed_early_is_an_error():
    with pytest.raises(dnsclient.UpstreamError, match="closed the connection"):
        asyncio.run(tcp(lambda d: None, query()))


def test_mismatch_untrusted_never_raises_on_noise():
    expect = dnsclient._question(DNSRecord.question("a.example").pack())
    for junk in (b"", b"\x00" * 11, b"\xff" * 40, bytes(range(256))):
        assert dnsclient.mismatch_untrusted(junk, expect) is not None


def test_a_query_that_is_not_one_is_not_forwarded():
    good = DNSRecord.question("a.example").pack()
    for bad in (good[:11], good[:15], good[:12] + b"\xc0\x0c\x00\x01\x00\x01"):
        with pytest.raises(dnsclient.UpstreamError, match="the query itself"):
            dnsclient._question(bad)
