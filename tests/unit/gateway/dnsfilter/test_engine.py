"""Playbooks for the resolver's core: bytes in, decisions out, time passed in."""

import json

from dnslib import EDNS0, QTYPE, RR, A, CNAME, MX, TXT, DNSRecord

from gateway.dnsfilter import wire
from gateway.dnsfilter.config import from_dict
from gateway.dnsfilter.engine import Drop, Engine, Forward, Reply
from ztna.edns import add_device_id

CLIENT = "198.51.100.10"
DOC = {
    "server": {"listen": ["208.67.222.222"], "upstreams": ["203.0.113.53"], "block_ttl": 30},
    "blockpage": {"address": "192.0.2.80", "https_port": 0, "addresses": {"security": "192.0.2.81"}},
    "categories": {"domains": {
        "tunnel.bad.example": "dns-tunneling-vpn", "malware.bad.example": "malware",
        "ddns.bad.example": "dynamic-dns", "gambling.bad.example": "gambling"}},
    "lists": {"block": {"domains": ["listed.bad.example"]}, "allow": {"domains": ["fine.listed.bad.example"]}},
    "ratelimit": {"qps": 50, "burst": 100},
    "tunneling": {"unique_names": 10, "random_names": 3, "min_queries": 5},
    "policy": [
        {"name": "office", "networks": ["198.51.100.0/24"], "block_lists": ["block"], "allow_lists": ["allow"],
         "block_categories": ["dns-tunneling-vpn", "malware", "dynamic-dns", "gambling"]},
        {"name": "roaming", "devices": ["laptop-1"], "block_categories": ["malware"]},
    ],
}


def engine(**over):
    doc = {**DOC, **over}
    return Engine(from_dict(doc))


def ask(eng, name, qtype="A", *, now=1000.0, source=CLIENT, edns=False, device=None, tcp=False):
    r = DNSRecord.question(name, qtype)
    if edns:
        r.add_ar(EDNS0(udp_len=1232))
    if device:
        add_device_id(r, device)
    return eng.handle(r.pack(), source, now, tcp=tcp)


def upstream_reply(fwd: Forward, *rrs, rcode=0):
    qid = 777
    r = DNSRecord.parse(wire.query_bytes(qid, fwd.question)).reply()
    r.header.rcode = rcode
    for rr in rrs:
        r.add_answer(rr)
    return wire.parse_reply_untrusted(r.pack(), qid, fwd.question)


def parsed(out):
    assert isinstance(out, Reply), out
    return DNSRecord.parse(out.data)


def test_blocked_a_gets_block_page_without_asking_upstream():
    eng = engine()
    out = ask(eng, "Malware.Bad.Example.")
    r = parsed(out)
    assert str(r.rr[0].rdata) == "192.0.2.81" and r.rr[0].ttl == 30
    assert out.log["decision"] == "blocked" and out.log["category"] == "malware" and out.log["column"] == "security"
    assert eng.recent_blocks[(CLIENT, "malware.bad.example")]["reason"] == "malware"
    r = parsed(ask(eng, "gambling.bad.example", "AAAA"))
    assert str(r.rr[0].rdata) == "::ffff:c000:250"   # ::ffff:192.0.2.80


def test_refused_rows_and_passing_cells():
    eng = engine()
    assert parsed(ask(eng, "listed.bad.example", "TXT")).header.rcode == wire.REFUSED
    assert parsed(ask(eng, "tunnel.bad.example", "MX")).header.rcode == wire.REFUSED
    assert isinstance(ask(eng, "listed.bad.example", "MX"), Forward)      # list: MX not blocked
    assert isinstance(ask(eng, "ddns.bad.example", "SRV"), Forward)       # ddns: SRV not blocked
    assert isinstance(ask(eng, "fine.listed.bad.example", "TXT"), Forward)  # allow beats block


def test_ede_only_when_the_client_speaks_edns():
    eng = engine()
    r = parsed(ask(eng, "malware.bad.example", "TXT", edns=True))
    opt = [x for x in r.ar if x.rtype == 41][0]
    assert [o.code for o in opt.rdata] == [15]
    assert b"malware" in opt.rdata[0].data and b"policy office" in opt.rdata[0].data
    assert not parsed(ask(eng, "malware.bad.example", "TXT")).ar


def test_forward_then_cache_with_ttl_countdown():
    eng = engine()
    fwd = ask(eng, "www.good.example", now=1000.0)
    assert isinstance(fwd, Forward) and fwd.question[1:4] == b"www"
    out = eng.complete(fwd, upstream_reply(fwd, RR("www.good.example", rdata=A("203.0.113.80"), ttl=60)), 1000.0)
    assert str(parsed(out).rr[0].rdata) == "203.0.113.80"
    hit = ask(eng, "WWW.good.example", now=1020.0)
    r = parsed(hit)
    assert r.rr[0].ttl == 40 and hit.log.get("cached") and str(r.q.qname) == "WWW.good.example."
    assert isinstance(ask(eng, "www.good.example", now=1061.0), Forward)   # expired


def test_upstream_failure_is_servfail():
    eng = engine()
    fwd = ask(eng, "www.good.example")
    out = eng.complete(fwd, None, 1000.0)
    assert parsed(out).header.rcode == wire.SERVFAIL and out.log["decision"] == "upstream-failed"


def test_cname_chain_through_a_blocked_name():
    eng = engine()
    chain = [RR("shop.good.example", QTYPE.CNAME, rdata=CNAME("listed.bad.example"), ttl=60),
             RR("listed.bad.example", rdata=A("203.0.113.102"), ttl=60)]
    fwd = ask(eng, "shop.good.example")
    out = eng.complete(fwd, upstream_reply(fwd, *chain), 1000.0)
    r = parsed(out)
    assert [str(x.rdata) for x in r.rr] == ["192.0.2.80"]
    assert out.log["decision"] == "blocked" and out.log["cname"] == "shop.good.example -> listed.bad.example"
    # cached now: the next ask is blocked from the cache too
    assert parsed(ask(eng, "shop.good.example", now=1001.0)).rr[0].rdata.__str__() == "192.0.2.80"
    # MX through a listed link passes (row 3, list column)
    fwd = ask(eng, "shop.good.example", "MX")
    mx = [chain[0], RR("listed.bad.example", QTYPE.MX, rdata=MX("mail.listed.bad.example"), ttl=60)]
    assert parsed(eng.complete(fwd, upstream_reply(fwd, *mx), 1000.0)).header.rcode == 0
    # TXT through it is refused (row 2)
    fwd = ask(eng, "shop.good.example", "TXT")
    txt = [chain[0], RR("listed.bad.example", QTYPE.TXT, rdata=TXT("x"), ttl=60)]
    assert parsed(eng.complete(fwd, upstream_reply(fwd, *txt), 1000.0)).header.rcode == wire.REFUSED


def test_not_an_open_resolver():
    eng = engine()
    out = ask(eng, "www.good.example", source="203.0.113.99", edns=True)
    r = parsed(out)
    assert r.header.rcode == wire.REFUSED and out.log["decision"] == "not-served"
    assert parsed(ask(eng, "www.good.example", source="203.0.113.99", device="laptop-1")).header.rcode == wire.REFUSED


def test_device_identity_selects_its_policy():
    eng = engine()
    assert parsed(ask(eng, "gambling.bad.example")).rr[0].rdata.__str__() == "192.0.2.80"
    out = ask(eng, "gambling.bad.example", device="laptop-1")
    assert isinstance(out, Forward) and out.log["policy"] == "roaming" and out.log["identity"] == "laptop-1"


def test_truncation_to_the_clients_buffer():
    eng = engine()
    fwd = ask(eng, "big.good.example", "TXT")
    rrs = [RR("big.good.example", QTYPE.TXT, rdata=TXT("%03d" % i + "x" * 90), ttl=60) for i in range(8)]
    up = upstream_reply(fwd, *rrs)
    r = parsed(eng.complete(fwd, up, 1000.0))
    assert r.header.tc == 1 and not r.rr
    r = parsed(ask(eng, "big.good.example", "TXT", edns=True))
    assert r.header.tc == 0 and len(r.rr) == 8
    r = parsed(ask(eng, "big.good.example", "TXT", tcp=True))
    assert r.header.tc == 0 and len(r.rr) == 8


def test_bad_input_gets_formerr_notimp_or_drop_and_a_log_line():
    eng = engine()
    good = DNSRecord.question("www.good.example").pack()
    out = eng.handle(good[:4] + b"\x00\x02" + good[6:], CLIENT, 1000.0)
    assert isinstance(out, Reply) and out.data[3] & 0xF == wire.FORMERR and out.log["decision"] == "bad-query"
    out = eng.handle(b"\x12", CLIENT, 1000.0)
    assert isinstance(out, Drop) and out.log["decision"] == "bad-query"
    out = eng.handle(good[:2] + bytes([good[2] | 0x20]) + good[3:], CLIENT, 1000.0)
    assert out.data[3] & 0xF == wire.NOTIMP
    chaos = DNSRecord.question("version.bind", "TXT", "CH").pack()
    assert parsed(eng.handle(chaos, CLIENT, 1000.0)).header.rcode == wire.REFUSED
    assert parsed(ask(eng, "good.example", "AXFR")).header.rcode == wire.REFUSED
    # and the resolver still answers normally afterwards
    assert isinstance(ask(eng, "www.good.example"), Forward)


def test_flood_from_one_source_is_limited_others_still_served():
    eng = engine()
    outs = [ask(eng, "malware.bad.example", now=1000.0) for _ in range(300)]
    dropped = [o for o in outs if isinstance(o, Drop)]
    assert 150 <= len(dropped) <= 200        # burst 100 then nothing within the same instant
    assert not any(o.log for o in dropped)        # no log line per dropped packet...
    reports = eng.drop_reports(1000.5)              # ...but one per source, in bulk, with the count
    assert [(r["client"], r["dropped"]) for r in reports] == [(CLIENT, len(dropped))]
    assert eng.drop_reports(1000.6) == []
    assert isinstance(ask(eng, "malware.bad.example", now=1000.0, source="198.51.100.11"), Reply)
    assert isinstance(ask(eng, "malware.bad.example", now=1001.0), Reply)   # refilled
    # TCP is not rate limited (it cannot be spoofed)
    assert isinstance(ask(eng, "malware.bad.example", now=1000.0, tcp=True), Reply)


def test_tunnelling_detected_then_refused_for_every_type():
    eng = engine()
    import random
    rng = random.Random(3)
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    out = None
    for i in range(12):
        label = "".join(rng.choice(alphabet) for _ in range(50))
        out = ask(eng, f"{label}.t.exfil.example", "TXT", now=1000.0 + i)
    assert isinstance(out, Reply) and parsed(out).header.rcode == wire.REFUSED
    assert out.log["category"] == "dns-tunneling-vpn"
    assert parsed(ask(eng, "www.exfil.example", "MX", now=1100.0)).header.rcode == wire.REFUSED
    assert parsed(ask(eng, "www.exfil.example", "A", now=1100.0)).rr[0].rdata.__str__() == "192.0.2.80"
    # for a while only
    assert isinstance(ask(eng, "www.exfil.example", "MX", now=1000.0 + 700), Forward)


def line_of(out):
    """The log record of a memo hit: the shell appends latency_ms and the closing brace."""
    assert out.log is None and out.line
    import json
    return json.loads(out.line + ',"latency_ms":0.1}')


def test_memo_replays_the_same_bytes_but_never_hides_a_new_tunnel_verdict():
    eng = engine()
    mx = DNSRecord.question("www.exfil.example", "MX")
    fwd = eng.handle(mx.pack(), CLIENT, 1000.0)
    first = eng.complete(fwd, upstream_reply(fwd, RR("www.exfil.example", QTYPE.MX, rdata=MX("mx.exfil.example"), ttl=60)), 1000.0)
    mx.header.id = 4321
    again = eng.handle(mx.pack(), CLIENT, 1000.2)
    assert isinstance(again, Reply) and again.data[:2] == b"\x10\xe1" and again.data[2:] == first.data[2:]
    rec = line_of(again)
    assert rec["cached"] and rec["time"] == 1000.2 and rec["client"] == CLIENT and rec["name"] == "www.exfil.example"
    # another client of the same network policy shares it, and TTLs keep counting down
    later = eng.handle(mx.pack(), "198.51.100.99", 1010.0)
    assert DNSRecord.parse(later.data).rr[0].ttl == 50 and line_of(later)["client"] == "198.51.100.99"
    import random
    rng = random.Random(9)
    for i in range(12):
        ask(eng, "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(55)) + ".exfil.example", "TXT", now=1010.4)
    blocked = eng.handle(mx.pack(), CLIENT, 1010.5)
    assert parsed(blocked).header.rcode == wire.REFUSED and blocked.log["category"] == "dns-tunneling-vpn"


def test_memo_of_blocks_keeps_the_block_page_informed_and_device_identity():
    eng = engine()
    bad = DNSRecord.question("malware.bad.example")
    eng.handle(bad.pack(), CLIENT, 2000.0)
    assert eng._memo["office"][bytes(bad.pack()[2:])].expires == 2060.0
    hit = eng.handle(bad.pack(), "198.51.100.77", 2000.5)
    assert DNSRecord.parse(hit.data).rr[0].rdata.__str__() == "192.0.2.81"
    assert eng.recent_blocks[("198.51.100.77", "malware.bad.example")]["reason"] == "malware"
    rec = line_of(hit)
    assert rec["decision"] == "blocked" and rec["category"] == "malware" and rec["identity"] == "198.51.100.77"
    # a device id is part of the bytes: its own memo entry, its own policy, its identity in the log
    dev = DNSRecord.question("gambling.bad.example")
    add_device_id(dev, 'lap"top-1')
    eng.policies._by_device['lap"top-1'] = eng.policies._by_device["laptop-1"]
    first = eng.handle(dev.pack(), CLIENT, 2001.0)
    assert isinstance(first, Forward)
    eng.complete(first, upstream_reply(first, RR("gambling.bad.example", rdata=A("203.0.113.105"), ttl=60)), 2001.0)
    rec = line_of(eng.handle(dev.pack(), CLIENT, 2001.5))
    assert rec["identity"] == 'lap"top-1' and rec["policy"] == "roaming"


def test_refusals_to_unserved_sources_name_each_source():
    eng = engine()
    q = DNSRecord.question("www.good.example")
    q.add_ar(EDNS0(udp_len=1232))
    for src in ("203.0.113.1", "203.0.113.2", "203.0.113.1"):
        out = eng.handle(q.pack(), src, 1000.0)
        ede = [o for rr in parsed(out).ar if rr.rtype == 41 for o in rr.rdata if o.code == 15]
        assert src.encode() in ede[0].data and out.log["decision"] == "not-served"


def test_malformed_device_id_is_ignored_and_logged():
    from dnslib import EDNSOption

    q = DNSRecord.question("gambling.bad.example")
    q.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(65001, b"\x00bad")]))
    out = engine().handle(q.pack(), CLIENT, 1000.0)
    assert out.log["policy"] == "office" and out.log["note"] == "malformed device-id option ignored"


def test_memo_hits_in_one_batch_name_each_client_and_ttls_age_by_the_second():
    eng = engine()
    q = DNSRecord.question("www.good.example")
    fwd = eng.handle(q.pack(), CLIENT, 3000.0)
    eng.complete(fwd, upstream_reply(fwd, RR("www.good.example", rdata=A("203.0.113.7"), ttl=100)), 3000.0)
    # one batch: the same time for every datagram, two clients
    a = eng.handle(q.pack(), CLIENT, 3010.25)
    b = eng.handle(q.pack(), "198.51.100.20", 3010.25)
    assert (line_of(a)["client"], line_of(b)["client"]) == (CLIENT, "198.51.100.20")
    assert line_of(a)["identity"] == CLIENT and line_of(b)["identity"] == "198.51.100.20"
    assert line_of(a)["time"] == line_of(b)["time"] == 3010.25
    ttls = [DNSRecord.parse(eng.handle(q.pack(), CLIENT, t).data).rr[0].ttl for t in (3010.25, 3010.9, 3011.0, 3050.0)]
    assert ttls == [90, 90, 89, 50]
    assert line_of(eng.handle(q.pack(), CLIENT, 3050.0))["time"] == 3050.0


def _mixed_traffic(seed: int, n: int):
    """Queries as a busy resolver sees them: repeats, random long names, TXT, several parents."""
    import random
    rng = random.Random(seed)
    fixed = ["www.good.example", "malware.bad.example", "cdn.good.example", "a.exfil.example", "exfil.example",
             "listed.bad.example", "ddns.bad.example"]
    out = []
    for _ in range(n):
        r = rng.random()
        if r < 0.6:
            name = rng.choice(fixed)
        elif r < 0.8:
            name = "".join(rng.choice("abcdefghijklmnopqrstuvwxyz234567") for _ in range(55)) + ".exfil.example"
        else:
            name = f"n{rng.randrange(30)}.busy.example"
        out.append((name, rng.choice(["A", "A", "AAAA", "TXT", "MX"])))
    return out


def test_batch_path_counts_and_answers_as_one_query_at_a_time():
    """handle_batch inlines the detector's count for memo hits: same detections, windows and answers as observe()."""
    from gateway.dnsfilter.tunnel import TunnelDetector
    traffic = _mixed_traffic(5, 600)
    eng = engine(ratelimit={"qps": 0})
    ref = TunnelDetector(eng.detector.cfg)
    now, answers, hits = 3000.0, [], 0
    for k in range(0, len(traffic), 20):
        now += 1.0
        datas = []
        for j, (name, qtype) in enumerate(traffic[k:k + 20]):
            r = DNSRecord.question(name, qtype)
            r.header.id = (k + j) & 0xFFFF
            datas.append(bytes(r.pack()))
            ref.observe(name, getattr(QTYPE, qtype), now, client=CLIENT)
        b = eng.handle_batch(datas, [CLIENT] * len(datas), now)
        hits += len(b.which)
        got = dict(zip(b.which, b.answers))
        for i, out in b.slow:
            if isinstance(out, Forward):
                reply = eng.complete(out, upstream_reply(out, RR(out.query.qname, rdata=A("203.0.113.7"), ttl=300)), now)
                got[i] = reply.data
            elif isinstance(out, Reply):
                got[i] = out.data
        assert sorted(got) == list(range(len(datas)))  # every query answered
        answers += [DNSRecord.parse(got[i]) for i in range(len(datas))]
    assert hits > len(traffic) // 4, hits  # the memo path, and so the inlined count, was exercised
    assert eng.detector.detected == ref.detected and eng.detector.detected > 0
    assert [d[1:] for d in eng.detector.detections] == [d[1:] for d in ref.detections]
    assert eng.detector._until.keys() == ref._until.keys()
    for key, w in ref._w.items():
        mine = eng.detector._w[key]
        assert (mine.queries, mine.txt, mine.random, mine.names, mine.start) == (w.queries, w.txt, w.random, w.names, w.start)
    assert eng.detector._w.keys() == ref._w.keys()


def test_batch_memo_hits_give_the_same_bytes_and_lines_as_deciding_afresh():
    """A memo hit must say exactly what the full decision path (no memo) says for the same query."""
    import json

    from gateway.dnsfilter.engine import _UNSET
    eng = engine()
    names = [("www.good.example", "A"), ("malware.bad.example", "A"), ("listed.bad.example", "TXT"),
             ("gambling.bad.example", "AAAA")]
    datas = []
    for i, (name, qtype) in enumerate(names):
        r = DNSRecord.question(name, qtype)
        r.header.id = 100 + i
        datas.append(bytes(r.pack()))
    for d in datas:  # the first round fills the memo (www.good.example via an upstream)
        out = eng.handle(d, CLIENT, 4000.0)
        if isinstance(out, Forward):
            eng.complete(out, upstream_reply(out, RR(out.query.qname, rdata=A("203.0.113.7"), ttl=300)), 4000.0)
    b = eng.handle_batch(datas, ["198.51.100.20"] * len(datas), 4002.0)
    assert b.which == [0, 1, 2, 3] and not b.slow  # all four from the memo
    fresh = [eng._decide(d, "198.51.100.20", 4002.0, False, None, _UNSET) for d in datas]
    assert b.answers == [f.data for f in fresh]
    assert [json.loads(line + ',"latency_ms":0.1}') for line in b.lines] == [{**f.log, "latency_ms": 0.1} for f in fresh]
    assert DNSRecord.parse(b.answers[0]).rr[0].ttl == 298 and DNSRecord.parse(b.answers[0]).header.id == 100
    assert eng.recent_blocks[("198.51.100.20", "malware.bad.example")]["reason"] == "malware"


def test_a_bug_on_one_query_of_a_batch_costs_only_that_query(monkeypatch, caplog):
    eng = engine()
    datas = []
    for i, name in enumerate(["malware.bad.example", "boom.good.example", "listed.bad.example"]):
        r = DNSRecord.question(name)
        r.header.id = 7 + i
        datas.append(bytes(r.pack()))
    eng.handle_batch([datas[0], datas[2]], [CLIENT] * 2, 5000.0)  # both memoised
    real = eng._decide

    def flaky(data, *args):
        if b"boom" in data:
            raise RuntimeError("bug")
        return real(data, *args)
    monkeypatch.setattr(eng, "_decide", flaky)
    b = eng.handle_batch(datas, [CLIENT] * 3, 5001.0)
    assert b.which == [0, 2] and not b.slow and "query from 198.51.100.10 failed" in caplog.text
    assert [DNSRecord.parse(a).header.id for a in b.answers] == [7, 9]
    assert [DNSRecord.parse(a).q.qname for a in b.answers] == ["malware.bad.example.", "listed.bad.example."]


def _batch_answer(eng, name, source, now, qtype="A"):
    """One query through handle_batch (memo and all), completed with an upstream answer if forwarded."""
    r = DNSRecord.question(name, qtype)
    b = eng.handle_batch([bytes(r.pack())], [source], now)
    if b.answers:
        return DNSRecord.parse(b.answers[0])
    (_, out), = b.slow
    if isinstance(out, Forward):
        out = eng.complete(out, upstream_reply(out, RR(out.query.qname, rdata=A("203.0.113.7"), ttl=300)), now)
    return DNSRecord.parse(out.data)


def test_a_tunnel_verdict_on_one_client_never_reaches_another_through_the_memo():
    """Issue 19: one source's tunnel-like queries under good.example must not block www.good.example for others."""
    import base64
    import random
    eng = engine(ratelimit={"qps": 0})
    other, mallory = CLIENT, "198.51.100.66"
    now = 5000.0
    assert str(_batch_answer(eng, "www.good.example", other, now).rr[0].rdata) == "203.0.113.7"
    assert str(_batch_answer(eng, "www.good.example", other, now).rr[0].rdata) == "203.0.113.7"  # a memo hit
    rng = random.Random(9)
    for i in range(12):
        raw = base64.b32encode(rng.randbytes(50)).decode().lower().rstrip("=")
        _batch_answer(eng, f"{raw[:40]}.{raw[40:]}.x.good.example", mallory, now + 0.01 * i)
        _batch_answer(eng, f"n{i}.good.example", mallory, now + 0.01 * i)
    blocked = _batch_answer(eng, "www.good.example", mallory, now + 1)
    assert str(blocked.rr[0].rdata) == "192.0.2.80"   # mallory's own queries: the block page
    for _ in range(3):  # the other client: the real answer, memo hit or not, before and after mallory's block
        assert str(_batch_answer(eng, "www.good.example", other, now + 2).rr[0].rdata) == "203.0.113.7"
    assert str(_batch_answer(eng, "www.good.example", mallory, now + 3).rr[0].rdata) == "192.0.2.80"


def test_device_ids_only_from_trusted_networks_when_configured():
    # Default: a device id from any served source picks its policy (the behaviour before the option).
    assert ask(engine(), "gambling.bad.example", source="198.51.100.200", device="laptop-1").log["policy"] == "roaming"
    eng = engine(server={**DOC["server"], "device_id_networks": ["198.51.100.0/25"]})
    trusted = ask(eng, "gambling.bad.example", device="laptop-1")
    assert isinstance(trusted, Forward) and trusted.log["policy"] == "roaming" and trusted.log["device"] == "laptop-1"
    for _ in range(3):  # the first decides, the next are memo hits: every one under the network's policy
        out = ask(eng, "gambling.bad.example", source="198.51.100.200", device="laptop-1")
        assert str(parsed(out).rr[0].rdata) == "192.0.2.80"
        line = out.log or json.loads(out.line + ',"latency_ms":0}')
        assert line["identity"] == "198.51.100.200" and "device" not in line
        assert "ignored: source not in server.device_id_networks" in line["note"]
    # ...and a trusted source's later identical query is not answered from the untrusted memo
    again = ask(eng, "gambling.bad.example", device="laptop-1")
    assert isinstance(again, Forward) and again.log["policy"] == "roaming"


def test_device_id_networks_must_be_networks():
    import pytest

    from gateway.dnsfilter.config import ConfigError

    with pytest.raises(ConfigError, match="device_id_networks"):
        engine(server={**DOC["server"], "device_id_networks": ["not-a-net"]})
