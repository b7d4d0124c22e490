import pytest
from dnslib import DNSRecord

from ztna.edns import BadDeviceId, add_device_id, device_id_of


def test_round_trip_through_the_wire():
    q = add_device_id(DNSRecord.question("www.good.example"), "laptop-42")
    assert device_id_of(DNSRecord.parse(q.pack())) == "laptop-42"


def test_replaces_an_existing_option():
    q = add_device_id(DNSRecord.question("x.example"), "a")
    q = add_device_id(q, "b")
    assert device_id_of(DNSRecord.parse(q.pack())) == "b"
    assert sum(1 for rr in q.ar if rr.rtype == 41) == 1


def test_absent_and_malformed_are_none():
    assert device_id_of(DNSRecord.question("x.example")) is None
    q = add_device_id(DNSRecord.question("x.example"), "ok")
    q.ar[0].rdata[0].data = b"\xff\xfe"
    assert device_id_of(DNSRecord.parse(q.pack())) is None


@pytest.mark.parametrize("bad", ["", "x" * 65, "caf\u00e9", "tab\there"])
def test_bad_ids_refused(bad):
    with pytest.raises(BadDeviceId):
        add_device_id(DNSRecord.question("x.example"), bad)
