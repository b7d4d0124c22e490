"""ztna/mux.py: channels, their credit windows, and what breaks the protocol."""

import struct

import pytest

from ztna import mux, wire


def pair(window=1000):
    pop = mux.Mux(opener=True, window=window)
    gw = mux.Mux(opener=False, window=window)
    ch, frame = pop.open("agent", identity="alice", resource="app.example")
    (ev,) = gw.feed_untrusted(frame)
    assert ev == mux.Opened(ch, "agent", {"identity": "alice", "resource": "app.example"})
    (acc,) = pop.feed_untrusted(gw.accept(ch))
    assert acc == mux.Accepted(ch)
    return pop, gw, ch


def test_data_both_ways_and_split_in_pieces():
    pop, gw, ch = pair(window=4 * 1024 * 1024)
    assert gw.feed_untrusted(pop.send(ch, b"hello")) == [mux.Data(ch, b"hello")]
    big = bytes(range(256)) * 4096  # 1 MiB: more than one CHDATA piece
    frames = gw.send(ch, big)
    got = pop.feed_untrusted(frames)
    assert len(got) > 1 and b"".join(e.data for e in got) == big


def test_sender_never_exceeds_credit_and_credit_restores_it():
    pop, gw, ch = pair(window=1000)
    assert pop.send(ch, b"x" * 600) is not None
    assert pop.send(ch, b"x" * 600) is None           # 400 left: refused, nothing sent
    assert pop.channels[ch].dropped == 1
    assert pop.send(ch, b"x" * 400) is not None
    assert not pop.can_send(ch, 1)
    gw.feed_untrusted(pop.send(ch, b"") or b"")  # an empty send is allowed but carries nothing
    # gw consumed 1000 bytes: grants back (half a window at least)
    grant = gw.consumed(ch, 400)
    assert grant == b""                                 # under half a window: nothing yet
    grant = gw.consumed(ch, 600)
    assert grant == mux.credit(ch, 1000)
    assert pop.feed_untrusted(grant) == []
    assert pop.can_send(ch, 1000) and not pop.can_send(ch, 1001)


def test_peer_exceeding_credit_is_a_protocol_error():
    pop, gw, ch = pair(window=100)
    with pytest.raises(wire.BadFrame, match="past the 100 granted"):
        gw.feed_untrusted(mux.chdata(ch, b"y" * 101))


def test_events_before_the_bad_frame_are_kept():
    pop, gw, ch = pair(window=100)
    with pytest.raises(wire.BadFrame) as exc:
        gw.feed_untrusted(mux.chdata(ch, b"ok") + mux.chdata(ch, b"z" * 200))
    assert exc.value.frames == [mux.Data(ch, b"ok")]


def test_credit_flood_is_refused():
    pop, gw, ch = pair()
    with pytest.raises(wire.BadFrame, match="exceeds"):
        pop.feed_untrusted(mux.credit(ch, 2 ** 32 - 1))


@pytest.mark.parametrize("frame, why", [
    (wire.control(wire.OPEN, ch=1, kind="agent", window=10), "bad or taken"),       # wrong parity for the PoP
    (wire.control(wire.OPEN, ch="2", kind="agent", window=10), "bad or taken"),
    (wire.control(wire.OPEN, ch=2, kind=3, window=10), "bad kind"),
    (wire.control(wire.OPEN, ch=2, kind="agent", window=0), "bad kind"),
    (wire.control(wire.OPENED, ch=7, window=10), "did not open"),
    (wire.frame(wire.DATA, b"\0" * 40), "no place"),
    (wire.frame(wire.CREDIT, b"\0" * 3), "not 8"),
    (wire.frame(wire.CHDATA, b"\0" * 4), "outside"),
])
def test_bad_frames_at_the_pop(frame, why):
    pop = mux.Mux(opener=True)
    with pytest.raises(wire.BadFrame, match=why):
        pop.feed_untrusted(frame)


def test_mux_frames_are_refused_on_an_agent_tunnel():
    with pytest.raises(wire.BadFrame, match="unknown frame type"):
        wire.Decoder().feed_untrusted(mux.chdata(1, b"x"))


def test_close_forgets_and_late_frames_are_ignored():
    pop, gw, ch = pair()
    fr = pop.close(ch, "done", reset=True)
    assert pop.close(ch, "again") == b""
    assert gw.feed_untrusted(fr) == [mux.Closed(ch, "done", True)]
    assert pop.send(ch, b"x") is None
    # data the peer sent before it saw our close is not its fault
    assert pop.feed_untrusted(mux.chdata(ch, b"late")) == []


def test_tunnel_frames_pass_through():
    pop = mux.Mux(opener=True)
    (ev,) = pop.feed_untrusted(wire.frame(wire.KEEPALIVE))
    assert isinstance(ev, mux.Tunnel) and ev.frame.type == wire.KEEPALIVE


def test_partial_frames_wait():
    pop, gw, ch = pair()
    fr = pop.send(ch, b"abcdef")
    assert gw.feed_untrusted(fr[:5]) == []
    assert gw.feed_untrusted(fr[5:]) == [mux.Data(ch, b"abcdef")]
    assert struct.unpack("!I", fr[4:8])[0] == ch


# ---- stream channels: half-close, reset, room, the OPEN's fields ----------------------------
def stream_pair(window=1000):
    pop = mux.Mux(opener=True, window=window)
    gw = mux.Mux(opener=False, window=window)
    ch, frame = pop.open(mux.STREAM, identity="alice", resource="wiki.example", host="wiki.example", port=443)
    (ev,) = gw.feed_untrusted(frame)
    assert ev.kind == "stream" and mux.stream_fields(ev.fields) == ("alice", "wiki.example", "wiki.example", 443)
    pop.feed_untrusted(gw.accept(ch))
    return pop, gw, ch


def test_stream_half_close_each_way_then_forgotten():
    pop, gw, ch = stream_pair()
    fin = pop.shutdown(ch)
    assert pop.send(ch, b"late") is None and pop.room(ch) == 0   # we said EOF: nothing more from us
    assert pop.shutdown(ch) == b""                                 # once only
    assert gw.feed_untrusted(fin) == [mux.Closed(ch, "eof", False, half=True)]
    # the other direction still flows, and its credit still comes back
    assert pop.feed_untrusted(gw.send(ch, b"answer")) == [mux.Data(ch, b"answer")]
    assert ch in pop.channels and ch in gw.channels
    assert pop.feed_untrusted(gw.shutdown(ch)) == [mux.Closed(ch, "eof", False, half=True)]
    assert ch not in pop.channels and ch not in gw.channels       # both sides done: forgotten


def test_stream_data_after_the_peers_half_close_is_a_protocol_error():
    pop, gw, ch = stream_pair()
    gw.feed_untrusted(pop.shutdown(ch))
    with pytest.raises(wire.BadFrame, match="after the peer's half-close"):
        gw.feed_untrusted(mux.chdata(ch, b"x"))
    pop2, gw2, ch2 = stream_pair()
    gw2.feed_untrusted(pop2.shutdown(ch2))
    with pytest.raises(wire.BadFrame, match="second half-close"):
        gw2.feed_untrusted(wire.control(wire.CHCLOSE, ch=ch2, reason="eof", reset=False, half=True))


def test_stream_reset_ends_both_directions():
    pop, gw, ch = stream_pair()
    gw.feed_untrusted(pop.shutdown(ch))
    assert pop.feed_untrusted(gw.close(ch, "connection refused", reset=True)) == [
        mux.Closed(ch, "connection refused", True)]
    assert ch not in pop.channels and ch not in gw.channels


def test_stream_room_is_the_credit_the_reader_may_fill():
    pop, gw, ch = stream_pair(window=1000)
    assert pop.room(ch) == 1000
    assert pop.send(ch, b"a" * 1000) is not None
    assert pop.room(ch) == 0                       # the socket's reader must pause here
    pop.feed_untrusted(gw.consumed(ch, 1000))
    assert pop.room(ch) == 1000                    # and may read again
    assert mux.Mux(opener=True).room(99) == 0


@pytest.mark.parametrize("fields, why", [
    ({"resource": "r", "host": "h", "port": 443}, "identity"),
    ({"identity": "a", "resource": "", "host": "h", "port": 443}, "resource"),
    ({"identity": "a", "resource": "r", "host": 5, "port": 443}, "host"),
    ({"identity": "a", "resource": "r", "host": "h", "port": 0}, "port"),
    ({"identity": "a", "resource": "r", "host": "h", "port": True}, "port"),
    ({"identity": "a", "resource": "r", "host": "h", "port": "443"}, "port"),
])
def test_stream_fields_refuse_bad_opens(fields, why):
    with pytest.raises(ValueError, match=why):
        mux.stream_fields(fields)
