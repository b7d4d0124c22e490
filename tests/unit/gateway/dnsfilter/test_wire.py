import struct

import pytest
from dnslib import EDNS0, EDNSOption, QTYPE, RR, A, CNAME, DNSRecord, TXT
from hypothesis import given, settings, strategies as st

from gateway.dnsfilter import wire
from gateway.dnsfilter.wire import BadMessage, parse_query_untrusted, parse_reply_untrusted
from ztna.edns import add_device_id


def q(name="www.good.example", qtype="A", edns=False, device=None):
    r = DNSRecord.question(name, qtype)
    if edns:
        r.add_ar(EDNS0(udp_len=1232))
    if device:
        add_device_id(r, device)
    return r


def test_parses_plain_and_edns_queries():
    p = parse_query_untrusted(q("WWW.Good.Example.", "MX").pack())
    assert (p.qname, p.qtype, p.qclass, p.edns) == ("www.good.example", QTYPE.MX, 1, False)
    assert p.question.startswith(b"\x03WWW\x04Good")    # as asked, for the echo
    p = parse_query_untrusted(q(edns=True, device="laptop-1").pack())
    assert p.edns and p.udp_size == 1232 and p.device == "laptop-1"
    assert p.limit(tcp=False) == 1232 and p.limit(tcp=True) == 65535


def test_a_label_with_a_dot_inside_cannot_fake_a_parent():
    raw = bytearray(q("abc.bad.example").pack())
    raw[13:16] = b"a.b"   # first label becomes "a.b" (one label)
    p = parse_query_untrusted(bytes(raw))
    assert p.qname == "a\\046b.bad.example"


@pytest.mark.parametrize("mutate,rcode", [
    (lambda b: b[:4] + b"\x00\x02" + b[6:], wire.FORMERR),                    # two questions claimed
    (lambda b: b[:2] + bytes([b[2] | 0x28]) + b[3:], wire.NOTIMP),            # opcode 5 (UPDATE)
    (lambda b: b[:-3], wire.FORMERR),                                          # cut question
    (lambda b: b + b"junk", wire.FORMERR),                                     # trailing bytes
    (lambda b: b[:2] + bytes([b[2] | 0x80]) + b[3:], None),                    # a response: drop
    (lambda b: b[:5], None),                                                    # shorter than a header
])
def test_bad_queries(mutate, rcode):
    with pytest.raises(BadMessage) as e:
        parse_query_untrusted(mutate(q().pack()))
    assert e.value.rcode == rcode


def test_bad_edns():
    two = q(edns=True)
    two.add_ar(EDNS0(udp_len=512))
    with pytest.raises(BadMessage):
        parse_query_untrusted(two.pack())
    v1 = q()
    v1.add_ar(EDNS0(udp_len=1232, version=1))
    with pytest.raises(BadMessage) as e:
        parse_query_untrusted(v1.pack())
    assert e.value.rcode == wire.BADVERS
    bad_dev = q()
    bad_dev.add_ar(EDNS0(udp_len=1232, opts=[EDNSOption(65001, b"\x00\x01bin")]))
    p = parse_query_untrusted(bad_dev.pack())
    assert p.device is None and p.bad_device
    # an option whose length runs past the record
    raw = bytearray(q(edns=True, device="x").pack())
    raw[-3] = 0x40
    with pytest.raises(BadMessage):
        parse_query_untrusted(bytes(raw))


def test_whole_and_cut_at_every_byte():
    full = q("a.b.example", "TXT", edns=True, device="dev-9").pack()
    assert parse_query_untrusted(full).device == "dev-9"
    for i in range(len(full)):
        with pytest.raises(BadMessage):
            parse_query_untrusted(full[:i])


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=600))
def test_fuzz_only_badmessage_escapes(data):
    try:
        parse_query_untrusted(data)
    except BadMessage:
        pass


@settings(max_examples=2000, deadline=None)
@given(st.integers(min_value=0, max_value=80), st.binary(max_size=64))
def test_fuzz_real_query_cut_and_noise(cut, noise):
    full = q("www.good.example", "AAAA", edns=True, device="laptop-1").pack()
    try:
        parse_query_untrusted(full[:cut] + noise)
    except BadMessage:
        pass


def reply_for(query_bytes, *rrs, rcode=0, auth=()):
    r = DNSRecord.parse(query_bytes).reply()
    r.header.rcode = rcode
    for rr in rrs:
        r.add_answer(rr)
    for rr in auth:
        r.add_auth(rr)
    r.add_ar(EDNS0(udp_len=1232))
    return r.pack()


def test_upstream_reply_served_again_with_ttls_counted_down():
    question = parse_query_untrusted(q("shop.good.example").pack()).question
    ours = wire.query_bytes(4242, question)
    data = reply_for(ours, RR("shop.good.example", QTYPE.CNAME, rdata=CNAME("listed.bad.example"), ttl=300),
                     RR("listed.bad.example", QTYPE.A, rdata=A("203.0.113.102"), ttl=60))
    up = parse_reply_untrusted(data, 4242, question)
    assert up.ttl == 60 and up.cnames == [("shop.good.example", "listed.bad.example")]
    assert up.counts == (2, 0, 0)  # the upstream's OPT is not passed on
    client = parse_query_untrusted(q("SHOP.good.EXAMPLE", edns=True).pack())
    out = DNSRecord.parse(wire.cached_answer(client, up, age=10))
    assert out.header.id == client.id and out.header.qr == 1 and out.header.ra == 1
    assert str(out.q.qname) == "SHOP.good.EXAMPLE."
    assert [(QTYPE[r.rtype], r.ttl) for r in out.rr] == [("CNAME", 290), ("A", 50)]
    assert str(out.rr[1].rdata) == "203.0.113.102"
    assert any(r.rtype == 41 for r in out.ar)
    out = DNSRecord.parse(wire.cached_answer(client, up, age=1000))
    assert [r.ttl for r in out.rr] == [0, 0]


def test_negative_answers_cached_by_soa_minimum_and_servfail_not_at_all():
    from dnslib import SOA

    question = parse_query_untrusted(q("nx.good.example").pack()).question
    ours = wire.query_bytes(7, question)
    soa = RR("good.example", QTYPE.SOA, rdata=SOA("ns1.good.example", "h.good.example", (1, 60, 60, 60, 15)), ttl=60)
    assert parse_reply_untrusted(reply_for(ours, rcode=3, auth=[soa]), 7, question).ttl == 15
    assert parse_reply_untrusted(reply_for(ours, rcode=2), 7, question).ttl == 0


def test_reply_for_another_query_is_rejected():
    question = parse_query_untrusted(q().pack()).question
    data = reply_for(wire.query_bytes(1, question), RR("www.good.example", rdata=A("1.2.3.4")))
    with pytest.raises(BadMessage):
        parse_reply_untrusted(data, 2, question)
    other = parse_query_untrusted(q("www.evil.example").pack()).question
    with pytest.raises(BadMessage):
        parse_reply_untrusted(data, 1, other)


@settings(max_examples=1500, deadline=None)
@given(st.integers(min_value=0, max_value=200), st.binary(max_size=40))
def test_fuzz_upstream_reply(cut, noise):
    question = parse_query_untrusted(q("www.good.example", "TXT").pack()).question
    data = reply_for(wire.query_bytes(9, question), RR("www.good.example", QTYPE.TXT, rdata=TXT("x" * 50)))
    try:
        parse_reply_untrusted(data[:cut] + noise, 9, question)
    except BadMessage:
        pass


def test_block_answers():
    client = parse_query_untrusted(q("Malware.Bad.Example", "AAAA", edns=True).pack())
    out = DNSRecord.parse(wire.address_answer(client, ["::ffff:192.0.2.81"], 30, (wire.EDE_BLOCKED, "malware")))
    assert out.header.rcode == 0 and str(out.q.qname) == "Malware.Bad.Example."
    assert [(QTYPE[r.rtype], r.ttl, str(r.rdata)) for r in out.rr] == [("AAAA", 30, "::ffff:c000:251")]
    opt = [r for r in out.ar if r.rtype == 41][0]
    ede = [o for o in opt.rdata if o.code == 15][0]
    assert struct.unpack("!H", ede.data[:2])[0] == 15 and ede.data[2:] == b"malware"
    # no EDNS from the client: no OPT in the answer
    plain = parse_query_untrusted(q("malware.bad.example", "TXT").pack())
    out = DNSRecord.parse(wire.refusal(plain, wire.REFUSED, (wire.EDE_BLOCKED, "x")))
    assert out.header.rcode == 5 and not out.ar and QTYPE[out.q.qtype] == "TXT"


def test_truncated_answer_has_tc_and_question():
    client = parse_query_untrusted(q("big.good.example", "TXT").pack())
    out = DNSRecord.parse(wire.truncated(client))
    assert out.header.tc == 1 and not out.rr and str(out.q.qname) == "big.good.example."


def test_aged_answer_matches_a_rebuilt_answer_at_every_age():
    from dnslib import RR, A, CNAME, EDNS0, DNSRecord
    from gateway.dnsfilter.wire import AgedAnswer, cached_answer, parse_query_untrusted, parse_reply_untrusted, query_bytes
    for edns in (False, True):
        r = DNSRecord.question("WWW.Example.org", "A")
        if edns:
            r.add_ar(EDNS0(udp_len=1232))
        q = parse_query_untrusted(r.pack())
        question = q.question[:-4].lower() + q.question[-4:]
        rep = DNSRecord.parse(query_bytes(9, question)).reply()
        rep.add_answer(RR("www.example.org", 5, rdata=CNAME("cdn.example.net"), ttl=300))
        rep.add_answer(RR("cdn.example.net", rdata=A("192.0.2.1"), ttl=20))
        up = parse_reply_untrusted(rep.pack(), 9, question)
        aged = AgedAnswer(q, up)
        for age in (0, 1, 19, 20, 21, 299, 300, 1000):
            assert aged.at(age) == cached_answer(q, up, age)[2:]
