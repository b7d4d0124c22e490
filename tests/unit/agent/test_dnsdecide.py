from dnslib import RCODE, DNSRecord

from agent.dnsdecide import decide
from agent.leases import LeasePool
from ztna.names import PatternSet

APPS = PatternSet(["app.mycompany.net", "*.apps.mycompany.net"])


def q(name, qtype="A"):
    return DNSRecord.parse(DNSRecord.question(name, qtype).pack())


def test_app_name_gets_a_lease_with_short_ttl():
    pool = LeasePool()
    d = decide(q("App.MyCompany.net."), APPS, pool, 0, ttl=10)
    assert d.lease.fqdn == "app.mycompany.net"
    assert [str(rr.rdata) for rr in d.reply.rr] == ["100.64.0.3"]
    assert d.reply.rr[0].ttl == 10 and d.reply.header.rcode == RCODE.NOERROR
    assert str(d.reply.q.qname) == "App.MyCompany.net."  # question echoed as asked


def test_wildcard_app_and_same_lease_again():
    pool = LeasePool()
    a = decide(q("x.apps.mycompany.net"), APPS, pool, 0).lease
    b = decide(q("x.apps.mycompany.net"), APPS, pool, 5).lease
    assert a is b


def test_aaaa_and_other_types_get_empty_noerror():
    for t in ("AAAA", "MX", "HTTPS", "TXT"):
        d = decide(q("app.mycompany.net", t), APPS, LeasePool(), 0)
        assert d.reply.header.rcode == RCODE.NOERROR and not d.reply.rr and d.lease is None


def test_other_names_are_forwarded():
    for n in ("www.example.com", "mycompany.net", "apps.mycompany.net", "gateway.mycompany.net"):
        assert decide(q(n), APPS, LeasePool(), 0).forward


def test_exhaustion_is_servfail():
    pool = LeasePool("100.64.0.0/30", reserved=["100.64.0.1"])
    decide(q("app.mycompany.net"), APPS, pool, 0)
    d = decide(q("a.apps.mycompany.net"), APPS, pool, 0)
    assert d.reply.header.rcode == RCODE.SERVFAIL


def test_multiple_questions_formerr_and_responses_ignored():
    m = DNSRecord.question("app.mycompany.net")
    m.add_question(DNSRecord.question("x.apps.mycompany.net").q)
    assert decide(DNSRecord.parse(m.pack()), APPS, LeasePool(), 0).reply.header.rcode == RCODE.FORMERR
    r = q("app.mycompany.net")
    r.header.qr = 1
    d = decide(r, APPS, LeasePool(), 0)
    assert d.reply is None and not d.forward


def _raw_query(name_wire, opcode=0):
    import struct
    return struct.pack("!HHHHHH", 0x1234, (opcode << 11) | 0x0100, 1, 0, 0, 0) + name_wire + struct.pack("!HH", 1, 1)


def test_over_long_name_gets_a_formerr_that_can_be_sent():
    # 320 octets: dnslib reads it but cannot write it back, so the refusal must not echo it (issue 19).
    long_name = b"".join(bytes([63]) + b"a" * 63 for _ in range(5)) + b"\0"
    for opcode, rcode in ((0, RCODE.FORMERR), (2, RCODE.NOTIMP)):
        d = decide(DNSRecord.parse(_raw_query(long_name, opcode)), APPS, LeasePool(), 0)
        back = DNSRecord.parse(d.reply.pack())
        assert back.header.rcode == rcode and back.header.id == 0x1234 and back.header.qr == 1
    assert decide(DNSRecord.parse(_raw_query(long_name)), APPS, LeasePool(), 0).malformed


def test_wildcard_leases_count_against_their_pattern():
    pool = LeasePool(max_per_wildcard=1, grace=0)
    decide(q("x.apps.mycompany.net"), APPS, pool, 0)
    assert pool.per_group["*.apps.mycompany.net"] == 1
    decide(q("app.mycompany.net"), APPS, pool, 0)
    assert pool.by_name["app.mycompany.net"].group is None
    d = decide(q("y.apps.mycompany.net"), APPS, pool, 1)
    assert d.lease.fqdn == "y.apps.mycompany.net" and "x.apps.mycompany.net" not in pool.by_name
