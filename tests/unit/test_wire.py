import json
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztna import wire


def stream():
    pkt = bytes(10) + bytes([0x45]) + bytes(19) + b"payload"
    return [
        wire.control(wire.HELLO, version=1, tunnel_addr="100.64.0.1"),
        wire.data_header(len(pkt)) + pkt,
        wire.control(wire.LEASE, fqdn="app.mycompany.net", addr="100.64.0.3"),
        wire.frame(wire.KEEPALIVE),
    ]


def test_whole_and_byte_by_byte_give_the_same_frames():
    data = b"".join(stream())
    whole = wire.Decoder().feed_untrusted(data)
    d = wire.Decoder()
    one = [f for i in range(len(data)) for f in d.feed_untrusted(data[i:i + 1])]
    assert whole == one
    assert [f.type for f in whole] == [wire.HELLO, wire.DATA, wire.LEASE, wire.KEEPALIVE]
    assert whole[0].fields == {"version": 1, "tunnel_addr": "100.64.0.1"}
    assert whole[1].payload.endswith(b"payload")
    assert d.pending() == 0


@pytest.mark.parametrize("bad,msg", [
    (bytes([0x7F, 0, 0, 0]), "unknown frame type"),
    (wire.data_header(wire.MAX_DATA + 1), "outside"),
    (wire.data_header(3) + b"abc", "outside"),
    (bytes([wire.HELLO, 0, 0x20, 0]), "exceeds"),
    (wire.frame(wire.HELLO, b"{nope"), "not JSON"),
    (wire.frame(wire.LEASE, json.dumps([1, 2]).encode()), "not a JSON object"),
])
def test_protocol_errors(bad, msg):
    with pytest.raises(wire.BadFrame, match=msg):
        wire.Decoder().feed_untrusted(bad)


def test_truncated_frame_waits_for_more():
    f = wire.control(wire.LEASE, fqdn="a.example", addr="100.64.0.3")
    d = wire.Decoder()
    assert d.feed_untrusted(f[:-1]) == []
    assert d.pending() == len(f) - 1
    assert len(d.feed_untrusted(f[-1:])) == 1


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=80))
def test_fuzz_only_badframe_escapes(noise, cut):
    data = b"".join(stream())[:cut] + noise
    d = wire.Decoder()
    try:
        for i in range(0, len(data), 7):
            d.feed_untrusted(data[i:i + 7])
    except wire.BadFrame:
        pass


def test_random_garbage_only_badframe():
    rnd = os.urandom(4096)
    try:
        wire.Decoder().feed_untrusted(rnd)
    except wire.BadFrame:
        pass
