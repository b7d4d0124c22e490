"""pop.dnsmap (address -> names from the PoP's DNS answers, its cap, the nft set text) and pop.dns (the forwarder)."""

import asyncio
import socket
import time
import tracemalloc

from dnslib import QTYPE, RR, A, CNAME, DNSRecord

from pop import dnsmap as dm
from pop import netrules as nr
from pop.dns import PopDns
from pop.sitehub import BACKHAUL, DROP

SITES = {"branch1": nr.GatewaySite("branch1"), "hq": nr.GatewaySite("hq", True)}
RULES = nr.loads('''[[firewall_rule]]
name = "no tracker"
action = "block"
destination = ["fqdn:t.tracker.example"]

[[network_rule]]
name = "SaaS via HQ"
destination = ["domain:saas.example"]
backhaul_via = "hq"
''', "rules.toml", SITES)


def match(name):
    return RULES.name_matches(name)


def test_answers_for_matched_names_are_learnt_with_their_ttl():
    m = dm.DnsMap(100)
    m.answered(["app.saas.example"], [("198.51.100.7", 300), ("198.51.100.8", 300)], 1000.0, match)
    m.answered(["www.other.example"], [("198.51.100.9", 300)], 1000.0, match)  # no rule covers it: not kept
    assert len(m) == 2 and m.names("198.51.100.7", 1000.0) == ["app.saas.example"]
    assert m.names("198.51.100.9", 1000.0) == []
    assert m.expiry("198.51.100.7", "app.saas.example") == 1300.0
    # the rules see the name through the map
    ex = RULES.decide("branch1", 6, "10.10.0.5", "198.51.100.7", 443, 1000.0, names_of=m.names)
    assert ex.kind == BACKHAUL and ex.network_rule == "SaaS via HQ"
    # expired: gone, and the flow leaves by the PoP again
    assert m.names("198.51.100.7", 1300.0) == []
    assert m.expire(1300.0) == 2 and len(m) == 0 and not m.by_addr
    assert RULES.decide("branch1", 6, "10.10.0.5", "198.51.100.7", 443, 1300.0, names_of=m.names).network_rule is None


def test_answered_again_refreshes_and_a_cname_chain_counts():
    m = dm.DnsMap(100)
    m.answered(["app.saas.example"], [("198.51.100.7", 60)], 0.0, match)
    m.answered(["app.saas.example"], [("198.51.100.7", 50)], 20.0, match)  # from the cache, 10 s older: 70
    assert m.expiry("198.51.100.7", "app.saas.example") == 70.0
    m.answered(["app.saas.example"], [("198.51.100.7", 10)], 30.0, match)  # shorter: keeps the later expiry
    assert m.expiry("198.51.100.7", "app.saas.example") == 70.0
    assert m.expire(65.0) == 0 and m.names("198.51.100.7", 65.0) == ["app.saas.example"]
    # a CNAME into a matched domain: the address counts for the matched name in the chain
    m.answered(["www.corp.example", "edge.saas.example"], [("203.0.113.5", 100)], 0.0, match)
    assert m.names("203.0.113.5", 1.0) == ["edge.saas.example"]
    # a TTL of 0 still holds long enough for the connection that follows
    m.answered(["z.saas.example"], [("203.0.113.6", 0)], 0.0, match)
    assert m.names("203.0.113.6", 4.0) == ["z.saas.example"]


def test_an_address_shared_with_an_unmatched_name_takes_the_rule():
    m = dm.DnsMap(100)
    m.answered(["cdn.other.example"], [("192.0.2.44", 300)], 0.0, match)
    m.answered(["app.saas.example"], [("192.0.2.44", 300)], 0.0, match)
    # the documented rule: the matched name wins for every flow to the shared address
    assert RULES.decide("branch1", 6, "10.10.0.5", "192.0.2.44", 443, 1.0, names_of=m.names).site == "hq"
    # two matched names of different rules on one address: first match (the firewall block)
    m.answered(["t.tracker.example"], [("192.0.2.44", 300)], 0.0, match)
    assert RULES.decide("branch1", 6, "10.10.0.5", "192.0.2.44", 443, 1.0, names_of=m.names).kind == DROP


def test_a_flood_of_distinct_addresses_is_capped_with_one_log_line():
    m = dm.DnsMap(1000)
    tracemalloc.start()
    logs = []
    for burst in range(50):  # 50 answers of 500 distinct addresses each, all for a matched name
        addrs = [(f"10.{burst}.{i // 256}.{i % 256}", 300) for i in range(500)]
        logs += m.answered([f"x{burst}.saas.example"], addrs, 0.0, match)
    after_flood = tracemalloc.get_traced_memory()[0]
    for burst in range(50, 100):
        addrs = [(f"10.{burst}.{i // 256}.{i % 256}", 300) for i in range(500)]
        logs += m.answered([f"x{burst}.saas.example"], addrs, 0.0, match)
    again = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(m) == 1000 and sum(len(v) for v in m.by_addr.values()) == 1000
    assert m.counters["entries_refused"] == 100 * 500 - 1000
    assert len(logs) == 1 and "DNS map full: 1000" in logs[0].message
    assert again - after_flood < 64 * 1024, (after_flood, again)  # the second 25,000 addresses cost nothing kept
    assert len(m._heap) <= 2 * m.count + 1024
    # once entries expire there is room again, and the cap may be logged anew when reached again
    assert m.expire(301.0) == 1000
    m.answered(["ok.saas.example"], [("198.51.100.1", 60)], 301.0, match)
    assert m.names("198.51.100.1", 302.0) == ["ok.saas.example"]


def test_refreshes_do_not_grow_the_heap_without_bound():
    m = dm.DnsMap(10)
    for t in range(20000):
        m.answered(["app.saas.example"], [("198.51.100.7", 60)], float(t), match)
    assert len(m) == 1 and len(m._heap) <= 2 * m.count + 1024 + 1


def test_keep_only_after_a_reload():
    m = dm.DnsMap(10)
    m.answered(["app.saas.example"], [("198.51.100.7", 60)], 0.0, match)
    m.answered(["t.tracker.example"], [("198.51.100.8", 60)], 0.0, match)
    m.dirty.clear()
    assert m.keep_only(lambda n: n.endswith("saas.example")) == 1
    assert len(m) == 1 and list(m.by_addr) == ["198.51.100.7"] and m.dirty == {"198.51.100.7"}


def answer_bytes(qname, records, qtype="A"):
    q = DNSRecord.question(qname, qtype)
    r = q.reply()
    for rr in records:
        r.add_answer(rr)
    return r.pack()


def test_records_of_follows_the_chain_and_ignores_strangers():
    msg = answer_bytes("www.corp.example", [
        RR("www.corp.example", QTYPE.CNAME, rdata=CNAME("edge.saas.example"), ttl=30),
        RR("edge.saas.example", QTYPE.A, rdata=A("203.0.113.5"), ttl=120),
        RR("evil.example", QTYPE.A, rdata=A("203.0.113.66"), ttl=120),  # not in the chain: ignored
    ])
    names, addrs = dm.records_of(msg)
    assert names == ["www.corp.example", "edge.saas.example"] and addrs == [("203.0.113.5", 120)]
    assert dm.records_of(b"\x00\x01garbage") == ([], [])


def test_the_nft_sets_and_their_elements():
    text = dm.table_text(RULES, 2000)
    assert "table ip ztna_pop_rules {" in text
    assert "set fw0 {" in text and "set net0 {" in text and "flags timeout" in text and "size 2000" in text
    assert 'comment "network rule SaaS via HQ"' in text
    assert dm.table_text(nr.loads('[[network_rule]]\nname = "x"\nrouting = "pop-egress"\n', "r", SITES), 10) is None
    assert dm.table_text(None, 10) is None
    m = dm.DnsMap(10)
    m.answered(["app.saas.example"], [("198.51.100.7", 300)], 0.0, match)
    m.answered(["t.tracker.example"], [("198.51.100.7", 100)], 0.0, match)
    lines = sorted(dm.elements_text(m, ["198.51.100.7"], RULES, 10.0).splitlines())
    assert lines == ["add element ip ztna_pop_rules fw0 { 198.51.100.7 timeout 90s }",
                     "add element ip ztna_pop_rules net0 { 198.51.100.7 timeout 290s }"]
    assert dm.elements_text(m, ["198.51.100.7"], RULES, 1000.0) == ""
    m.answered(["b.saas.example"], [("198.51.100.8", 30), ("198.51.100.9", 30)], 0.0, match)
    lines = dm.elements_text(m, ["198.51.100.7", "198.51.100.8", "198.51.100.9"], RULES, 10.0, chunk=2).splitlines()
    assert lines == ["add element ip ztna_pop_rules net0 { 198.51.100.7 timeout 290s, 198.51.100.8 timeout 20s }",
                     "add element ip ztna_pop_rules net0 { 198.51.100.9 timeout 20s }",
                     "add element ip ztna_pop_rules fw0 { 198.51.100.7 timeout 90s }"]
    assert dm._comment('a "quoted"\\ name\n') == "a _quoted__ name_"


# ---- the forwarder, against a small DNS server on loopback ---------------------------------------
class _Upstream(asyncio.DatagramProtocol):
    def __init__(self):
        self.asked = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.asked += 1
        q = DNSRecord.parse(data)
        r = q.reply()
        name = str(q.q.qname).rstrip(".")
        if name.endswith("saas.example"):
            r.add_answer(RR(q.q.qname, QTYPE.A, rdata=A("198.51.100.7"), ttl=300))
        self.transport.sendto(r.pack(), addr)


def test_the_forwarder_answers_caches_and_feeds_the_map():
    async def main():
        loop = asyncio.get_running_loop()
        t, up = await loop.create_datagram_endpoint(_Upstream, local_addr=("127.0.0.1", 0))
        port = t.get_extra_info("sockname")[1]
        m = dm.DnsMap(100)
        seen = []

        def on_answer(msg, now):
            seen.append(now)
            names, addrs = dm.records_of(msg)
            m.answered(names, addrs, now, match)

        dns = PopDns(("127.0.0.1", port), on_answer)
        await dns.start("127.0.0.1", 0)
        lport = dns.udp.get_extra_info("sockname")[1]
        try:
            q = DNSRecord.question("app.saas.example", "A").pack()
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.setblocking(False)
            for _ in range(2):
                await loop.sock_sendto(s, q, ("127.0.0.1", lport))
                r = DNSRecord.parse(await asyncio.wait_for(loop.sock_recv(s, 4096), 3))
                assert [str(x.rdata) for x in r.rr] == ["198.51.100.7"]
            s.close()
            assert up.asked == 1 and dns.counters["cache_answers"] == 1 and len(seen) == 2  # the cache feeds it too
            assert m.names("198.51.100.7", seen[-1]) == ["app.saas.example"]
            # garbage: FORMERR or nothing, and the forwarder goes on
            assert await dns.answer_untrusted(b"\x12", tcp=False) is None
            bad = await dns.answer_untrusted(b"\x12\x34" + b"\x00" * 10, tcp=False)
            assert bad[:2] == b"\x12\x34" and bad[3] & 0xF == 1
            # over the limit of waiting upstream exchanges: SERVFAIL, not a queue
            dns.inflight = dns.max_inflight
            busy = DNSRecord.parse(await dns.answer_untrusted(DNSRecord.question("new.example").pack(), tcp=False))
            assert busy.header.rcode == 2 and dns.counters["busy"] == 1
        finally:
            dns.close()
            t.close()

    asyncio.run(main())


def test_the_pop_learns_from_answers_and_batches_the_sets(monkeypatch):
    from collections import Counter
    from types import SimpleNamespace

    from pop.service import Pop
    from ztna import nft
    from ztna.loglimit import LogLimiter

    applied = []
    monkeypatch.setattr(nft, "apply", lambda text, what="": applied.append(text))

    async def main():
        shell = SimpleNamespace(rules=RULES, dmap=dm.DnsMap(100), rule_sets=True, set_flush=None, _perform=lambda c: None,
                                relay=SimpleNamespace(counters=Counter()), refusal_log=LogLimiter(interval=10.0))
        shell._flush_sets = lambda: Pop._flush_sets(shell)
        for name, addr in (("app.saas.example", "198.51.100.7"), ("www.saas.example", "198.51.100.8"),
                           ("www.other.example", "198.51.100.9")):
            Pop._dns_answer(shell, answer_bytes(name, [RR(name, QTYPE.A, rdata=A(addr), ttl=300)]), time.monotonic())
        assert shell.set_flush is not None and not applied  # one flush is scheduled for the lot
        await asyncio.sleep(0.3)  # after the 0.2 s timer: the loop runs timers in order
        assert len(applied) == 1 and shell.set_flush is None and not shell.dmap.dirty
        assert applied[0].startswith("add element ip ztna_pop_rules net0 { ")
        assert "198.51.100.7 timeout" in applied[0] and "198.51.100.8 timeout" in applied[0]
        assert "198.51.100.9" not in applied[0]  # no rule covers www.other.example

    asyncio.run(main())
