"""The forwarder against in-process DNS servers on loopback (no root, no network)."""

import asyncio
import socket

import pytest
from dnslib import A, QTYPE, RCODE, RR, DNSRecord

from agent.roaming import split
from agent.roaming.state import Learned
from agent.roaming.status import CloudHealth
from agent.roaming.stub import Forwarder, Stub
from ztna import edns


class Upstream(asyncio.DatagramProtocol):
    """A tiny DNS server that answers every A question with ``addr`` and remembers what it got."""

    def __init__(self, addr):
        self.addr, self.seen = addr, []

    def connection_made(self, t):
        self.t = t

    def answer(self, data):
        q = DNSRecord.parse(data)
        self.seen.append(q)
        r = q.reply()
        r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A(self.addr), ttl=5))
        for rr in q.ar:  # echo the OPT (and its options), as a careless resolver might
            if rr.rtype == QTYPE.OPT:
                r.add_ar(rr)
        return r.pack()

    def datagram_received(self, data, peer):
        self.t.sendto(self.answer(data), peer)

    async def tcp(self, reader, writer):
        n = int.from_bytes(await reader.readexactly(2), "big")
        out = self.answer(await reader.readexactly(n))
        writer.write(len(out).to_bytes(2, "big") + out)
        await writer.drain()
        writer.close()


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _setup(port, *, cloud_alive=True, fail_open=True):
    loop = asyncio.get_running_loop()
    lan = Upstream("192.168.1.20")
    cloud = Upstream("198.51.100.80")
    t1, _ = await loop.create_datagram_endpoint(lambda: lan, local_addr=("127.0.0.2", port))
    transports = [t1, await asyncio.start_server(lan.tcp, "127.0.0.2", port)]
    if cloud_alive:
        t2, _ = await loop.create_datagram_endpoint(lambda: cloud, local_addr=("127.0.0.3", port))
        transports += [t2, await asyncio.start_server(cloud.tcp, "127.0.0.3", port)]
    table = split.SplitDNS.build(recorded=[Learned("127.0.0.2")], search=[Learned("corp.example")], configured=[],
                                 cloud=["127.0.0.3"])
    fwd = Forwarder(table, "laptop-7", CloudHealth(fail_after=1, probe_every=60), fail_open=fail_open,
                    timeout=0.3, cloud_port=port, internal_port=port)
    return fwd, lan, cloud, transports


def _q(name, opt=False):
    q = DNSRecord.question(name, "A")
    if opt:
        from dnslib import EDNS0
        q.add_ar(EDNS0(udp_len=1232))
    return q


def run(coro):
    return asyncio.run(coro)


def test_internal_and_external_go_to_their_servers_with_device_id_only_to_cloud():
    async def go():
        port = _free_port()
        fwd, lan, cloud, ts = await _setup(port)
        try:
            r1 = DNSRecord.parse(await fwd.answer_untrusted(_q("intranet.corp.example").pack(), tcp=False))
            r2 = DNSRecord.parse(await fwd.answer_untrusted(_q("www.good.example").pack(), tcp=False))
        finally:
            for t in ts:
                t.close()
        assert str(r1.rr[0].rdata) == "192.168.1.20" and str(r2.rr[0].rdata) == "198.51.100.80"
        assert [str(q.q.qname) for q in lan.seen] == ["intranet.corp.example."]
        assert [str(q.q.qname) for q in cloud.seen] == ["www.good.example."]
        assert edns.device_id_of(cloud.seen[0]) == "laptop-7"
        assert edns.device_id_of(lan.seen[0]) is None
        # The client sent no OPT, so it gets none back even though we added one upstream.
        assert not [rr for rr in r2.ar if rr.rtype == QTYPE.OPT]
        assert fwd.counters.internal == 1 and fwd.counters.cloud == 1
    run(go())


def test_client_opt_is_kept_but_device_id_not_echoed():
    async def go():
        port = _free_port()
        fwd, _, cloud, ts = await _setup(port)
        try:
            q = _q("www.good.example", opt=True)
            q.header.id = 4242
            r = DNSRecord.parse(await fwd.answer_untrusted(q.pack(), tcp=False))
        finally:
            for t in ts:
                t.close()
        assert r.header.id == 4242
        opts = [rr for rr in r.ar if rr.rtype == QTYPE.OPT]
        assert edns.device_id_of(cloud.seen[0]) == "laptop-7"
        assert opts and not [o for o in opts[0].rdata if o.code == edns.DEVICE_ID_OPTION]
    run(go())


def test_cloud_unreachable_fails_open_to_recorded_servers():
    async def go():
        port = _free_port()
        fwd, lan, _, ts = await _setup(port, cloud_alive=False)
        try:
            r = DNSRecord.parse(await fwd.answer_untrusted(_q("www.good.example").pack(), tcp=False))
        finally:
            for t in ts:
                t.close()
        assert str(r.rr[0].rdata) == "192.168.1.20"  # the recorded (LAN) server answered
        assert not fwd.health.up and fwd.counters.fail_open == 1
    run(go())


def test_cloud_unreachable_fail_closed_is_servfail():
    async def go():
        port = _free_port()
        fwd, lan, _, ts = await _setup(port, cloud_alive=False, fail_open=False)
        try:
            r = DNSRecord.parse(await fwd.answer_untrusted(_q("www.good.example").pack(), tcp=False))
        finally:
            for t in ts:
                t.close()
        assert r.header.rcode == RCODE.SERVFAIL and lan.seen == []
    run(go())


@pytest.mark.parametrize("data, expect", [
    (b"", None), (b"\x00" * 5, None),
    (b"\x12\x34" + b"\xff" * 30, "FORMERR"),
])
def test_garbage_from_clients(data, expect):
    async def go():
        port = _free_port()
        fwd, _, _, ts = await _setup(port)
        try:
            return await fwd.answer_untrusted(data, tcp=False)
        finally:
            for t in ts:
                t.close()
    out = run(go())
    if expect is None:
        assert out is None
    else:
        r = DNSRecord.parse(out)
        assert r.header.id == 0x1234 and r.header.rcode == RCODE.FORMERR


def test_stub_serves_udp_and_tcp_and_refuses_a_taken_port():
    async def go():
        port = _free_port()
        fwd, _, _, ts = await _setup(port)
        stub = Stub(fwd, "127.0.0.4", port)
        await stub.start()
        try:
            from ztna.dnswire import ask, ask_tcp
            r = await asyncio.to_thread(ask, "127.0.0.4", "intranet.corp.example", port=port, timeout=1)
            rt = await asyncio.to_thread(ask_tcp, "127.0.0.4", _q("www.good.example"), port=port, timeout=1)
            other = Stub(fwd, "127.0.0.4", port)
            with pytest.raises(OSError):
                await other.start()
        finally:
            stub.close()
            for t in ts:
                t.close()
        assert str(r.rr[0].rdata) == "192.168.1.20" and str(rt.rr[0].rdata) == "198.51.100.80"
    run(go())
