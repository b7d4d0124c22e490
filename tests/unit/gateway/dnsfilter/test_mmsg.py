"""Batched UDP I/O (recvmmsg/sendmmsg) and the resolver's UDP loop with and without it, on loopback."""

import asyncio
import json
import socket

import pytest
from dnslib import DNSRecord

from gateway.dnsfilter import mmsg
from gateway.dnsfilter.config import from_dict
from gateway.dnsfilter.server import Resolver

pytestmark = pytest.mark.skipif(not mmsg.available(), reason="libc without recvmmsg/sendmmsg")


def _pair(family=socket.AF_INET, host="127.0.0.1"):
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((host, 0))
    s.setblocking(False)
    return s, mmsg.BatchSocket(s, batch=8)


def _wait_readable(s):
    import select
    assert select.select([s], [], [], 2)[0], "nothing arrived"


def test_answers_in_any_order_reach_their_own_senders_batch_after_batch():
    """answer() lays a batch back to back; out of order, a partial batch and a queued answer must not mix senders up."""
    s, bs = _pair()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(4)]
    for c in clients:
        c.bind(("127.0.0.1", 0))
        c.settimeout(2)
    plans = [[0, 1, 2, 3], [3, 1], [2, 0, 1, 3], [1], [0, 1, 2, 3]]  # which datagrams get an answer, in that order
    for k, which in enumerate(plans):
        for i, c in enumerate(clients):
            c.sendto(b"r%d-%d" % (k, i), s.getsockname())
        import time
        deadline = time.monotonic() + 2
        datas = []
        while len(datas) < 4 and time.monotonic() < deadline:
            _wait_readable(s)
            datas += bs.receive()[0]
        assert sorted(datas) == sorted(b"r%d-%d" % (k, i) for i in range(4))
        sender = {d: clients[int(d.split(b"-")[1])] for d in datas}
        order = [datas.index(b"r%d-%d" % (k, i)) for i in which]  # datagram index of each client's query
        if k == 3:
            bs.answer([order[0]], [b"A:" + datas[order[0]] + b"x" * 3000])  # one by one, then flushed
        else:
            bs.answer(order, [b"A:" + datas[j] + b"x" * (100 * j + 1) for j in order])
        assert bs.flush() == 0
        for j in order:
            got = sender[datas[j]].recv(5000)
            assert got.startswith(b"A:" + datas[j] + b"x"), (k, got[:20])
    for c in clients:  # nobody got an answer meant for someone else, or one too many
        c.setblocking(False)
        with pytest.raises(BlockingIOError):
            c.recv(100)


def test_nothing_waiting_gives_an_empty_batch():
    s, bs = _pair()
    assert bs.receive() == ([], [])
    assert bs.flush() == 0


def test_batches_keep_order_size_and_sender_and_answers_go_to_each_sender():
    s, bs = _pair()
    clients = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(3)]
    for c in clients:
        c.bind(("127.0.0.1", 0))
    sent = []
    for i in range(11):  # more than one batch of 8
        c = clients[i % 3]
        data = f"q{i}".encode() + (b"\xff" * 60000 if i == 4 else b"")  # a near-maximal datagram is not cut
        c.sendto(data, s.getsockname())
        sent.append((data, c.getsockname()))
    _wait_readable(s)
    datas, hosts = bs.receive()
    assert len(datas) == 8
    got = [(d, bs.address(i)) for i, d in enumerate(datas)]
    datas, hosts2 = bs.receive()
    got += [(d, bs.address(i)) for i, d in enumerate(datas)]
    assert got == sent
    assert hosts + hosts2 == ["127.0.0.1"] * 11
    bs.answer([0, 1, 2], [b"answer:" + d[:3] for d in datas])
    assert bs.flush() == 0
    for c in clients:
        c.settimeout(2)
    assert sorted(clients[i % 3].recv(100) for i in range(8, 11)) == [b"answer:q10", b"answer:q8", b"answer:q9"]


def test_more_answers_than_a_batch_and_an_oversized_answer_still_go_out():
    s, bs = _pair()
    c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    c.settimeout(2)
    c.sendto(b"x", s.getsockname())
    _wait_readable(s)
    assert len(bs.receive()[0]) == 1
    for k in range(10):
        bs.answer([0], [b"%d" % k])
    bs.answer([0], [b"z" * (mmsg.SEND_SLOT + 1)])
    giant = b"g" * (bs.batch * mmsg.SEND_SLOT + 1)  # more than the whole send buffer holds
    bs.answer([0], [giant])
    bs.flush()
    got = [c.recv(70000) for _ in range(12)]
    assert got[:10] == [b"%d" % k for k in range(10)] and got[10] == b"z" * (mmsg.SEND_SLOT + 1)
    assert got[11] == giant


def test_ipv6_sender_address():
    s, bs = _pair(socket.AF_INET6, "::1")
    c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    c.bind(("::1", 0))
    c.settimeout(2)
    c.sendto(b"hi", s.getsockname()[:2])
    _wait_readable(s)
    [data], [host] = bs.receive()
    assert data == b"hi" and host == "::1" and bs.address(0)[:2] == c.getsockname()[:2]
    bs.answer([0], [b"yo"])
    bs.flush()
    assert c.recv(10) == b"yo"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t.bind(("127.0.0.1", port))  # the resolver needs UDP and TCP on the same port
        return port


@pytest.mark.parametrize("batched", [True, False])
def test_resolver_answers_and_logs_over_udp_with_and_without_batches(tmp_path, batched):
    port = _free_port()
    cfg = from_dict({
        "server": {"listen": ["127.0.0.1"], "port": port, "upstreams": ["127.0.0.1:9"], "udp_batch": batched,
                   "query_log": str(tmp_path / "q.jsonl")},
        "blockpage": {"address": "192.0.2.80", "serve": False, "https_port": 0},
        "lists": {"block": {"domains": ["blocked.example"]}},
        "policy": [{"name": "lo", "networks": ["127.0.0.0/8"], "block_lists": ["block"]}],
    })
    names = [f"n{i}.blocked.example" for i in range(40)] * 2  # the second round comes from the memo

    async def main():
        r = Resolver(cfg)
        await r.start()
        loop = asyncio.get_running_loop()
        c = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        c.setblocking(False)
        try:
            for i, n in enumerate(names):
                q = DNSRecord.question(n, "A")
                q.header.id = i
                c.sendto(q.pack(), ("127.0.0.1", port))
            answers = {}
            while len(answers) < len(names):
                a = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(c, 4096), 3))
                answers[a.header.id] = a
            return answers
        finally:
            c.close()
            r.close()

    answers = asyncio.run(main())
    for i, n in enumerate(names):
        assert str(answers[i].q.qname) == n + "." and str(answers[i].rr[0].rdata) == "192.0.2.80"
    lines = [json.loads(x) for x in (tmp_path / "q.jsonl").read_text().splitlines()]
    assert len(lines) == len(names)
    assert sorted(x["name"] for x in lines) == sorted(names)
    assert all(x["decision"] == "blocked" and x["latency_ms"] >= 0 for x in lines)
