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


def _valid(frames):
    for f in frames:
        assert f.type in wire.CONTROL or f.type == wire.DATA
        if f.type == wire.DATA:
            assert wire.VNET_HDR_LEN + 20 <= len(f.payload) <= wire.MAX_DATA
        else:
            assert isinstance(f.fields, dict)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300), st.integers(min_value=0, max_value=80))
def test_fuzz_only_badframe_escapes_and_frames_are_sound(noise, cut):
    data = b"".join(stream())[:cut] + noise
    d = wire.Decoder()
    try:
        for i in range(0, len(data), 7):
            _valid(d.feed_untrusted(data[i:i + 7]))
    except wire.BadFrame:
        pass


def test_a_valid_prefix_survives_garbage_after_it():
    good = b"".join(stream())
    d = wire.Decoder()
    frames = d.feed_untrusted(good)
    _valid(frames)
    assert len(frames) == 4
    with pytest.raises(wire.BadFrame):
        d.feed_untrusted(bytes([0x7F]) + os.urandom(64))


def test_deep_nesting_is_a_bad_frame_checked_before_parsing():
    # 2,000 brackets once raised RecursionError out of json.loads (issue 19).
    deep = wire.frame(wire.LEASE, b'{"fqdn":' + b"[" * 2000 + b"]" * 2000 + b"}")
    with pytest.raises(wire.BadFrame, match="nested deeper than 8"):
        wire.Decoder().feed_untrusted(deep)


def test_nesting_up_to_the_bound_passes_and_brackets_in_strings_do_not_count():
    ok = b'{"a":' + b"[" * 7 + b"]" * 7 + b',"s":"[[[[[[[[[[\\"{{{{{{{{{{"}'
    assert wire.Decoder().feed_untrusted(wire.frame(wire.LEASE, ok))[0].fields["s"] == '[[[[[[[[[["{{{{{{{{{{'
    with pytest.raises(wire.BadFrame, match="nested"):
        wire.Decoder().feed_untrusted(wire.frame(wire.LEASE, b'{"a":' + b"[" * 8 + b"]" * 8 + b"}"))


def test_frames_before_a_bad_one_come_with_the_error():
    hello = wire.control(wire.HELLO, version=1, tunnel_addr="100.64.0.1")
    with pytest.raises(wire.BadFrame) as info:
        wire.Decoder().feed_untrusted(hello + wire.frame(wire.LEASE, b"[" * 100))
    assert [f.type for f in info.value.frames] == [wire.HELLO]


def test_a_bad_frame_leaves_nothing_pending():
    d = wire.Decoder()
    with pytest.raises(wire.BadFrame):
        d.feed_untrusted(wire.frame(wire.LEASE, b"[" * 100) + b"more bytes")
    assert d.pending() == 0
