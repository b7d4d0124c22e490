import struct

from dnslib import QTYPE, RCODE, DNSRecord

from netns.authdns import ZoneData, respond_untrusted

ZONE = """
@ 60 IN SOA ns1 hostmaster 1 60 60 60 60
gateway 60 IN A 203.0.113.20
app 60 IN CNAME gateway
ext 60 IN CNAME gw.other.example.
txt 60 IN TXT "hello"
"""


def zone():
    return ZoneData.from_text(ZONE, "mycompany.net")


def ask(name, qtype="A"):
    return DNSRecord.parse(respond_untrusted(zone(), DNSRecord.question(name, qtype).pack()))


def test_a_record_is_authoritative():
    r = ask("gateway.mycompany.net")
    assert r.header.aa == 1 and r.header.rcode == RCODE.NOERROR
    assert [str(rr.rdata) for rr in r.rr] == ["203.0.113.20"]


def test_cname_followed_inside_zone():
    r = ask("APP.mycompany.net.")
    assert [QTYPE[rr.rtype] for rr in r.rr] == ["CNAME", "A"]
    assert str(r.rr[-1].rdata) == "203.0.113.20"


def test_cname_out_of_zone_stops_at_alias():
    r = ask("ext.mycompany.net")
    assert [QTYPE[rr.rtype] for rr in r.rr] == ["CNAME"]


def test_nxdomain_nodata_refused():
    assert ask("nothere.mycompany.net").header.rcode == RCODE.NXDOMAIN
    r = ask("gateway.mycompany.net", "AAAA")
    assert r.header.rcode == RCODE.NOERROR and not r.rr
    assert ask("www.example.com").header.rcode == RCODE.REFUSED


def test_garbage_gets_formerr_or_drop():
    assert respond_untrusted(zone(), b"\x01\x02") is None
    out = respond_untrusted(zone(), b"\xab\xcd" + b"\xff" * 30)
    ident, flags = struct.unpack("!HH", out[:4])
    assert ident == 0xABCD and flags & 0xF == RCODE.FORMERR


def test_answers_are_not_answered():
    q = DNSRecord.question("gateway.mycompany.net")
    q.header.qr = 1
    assert respond_untrusted(zone(), q.pack()) is None
