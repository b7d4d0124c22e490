"""ztna.datachannel: the UDP data channel's keys, datagrams, replay window, rekeying and rebinding."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ztna import datachannel as d

AGENT_ID, GW_ID, SESSION = "alice", "gw.mycompany.net", 7


def keys(epoch=0, session=SESSION, agent_id=AGENT_ID):
    """Both sides' (send, receive) keys of one exchange, each computed from its own half."""
    a, g = d.Offer(epoch), d.Offer(epoch)
    ka = d.derive(a, g.public, g.nonce, agent_side=True, session=session, agent_identity=agent_id, gateway_identity=GW_ID)
    kg = d.derive(g, a.public, a.nonce, agent_side=False, session=session, agent_identity=agent_id, gateway_identity=GW_ID)
    return ka, kg


def pair(now=0.0):
    agent, gw = d.Channel(SESSION, agent_side=True), d.Channel(SESSION, agent_side=False)
    ka, kg = keys()
    agent.install(0, *ka, now)
    gw.install(0, *kg, now)
    return agent, gw


PEER, ELSEWHERE = ("198.51.100.10", 40000), ("198.51.100.10", 41234)


def test_both_ends_derive_one_key_per_direction_and_nothing_else_agrees():
    (a_send, a_recv), (g_send, g_recv) = keys()
    assert a_send == g_recv and g_send == a_recv and a_send != a_recv
    (b_send, _), _ = keys()
    assert b_send != a_send  # fresh ephemeral keys and nonces: a new exchange, new keys
    a, g = d.Offer(0), d.Offer(0)
    one = d.derive(a, g.public, g.nonce, agent_side=True, session=1, agent_identity="alice", gateway_identity=GW_ID)
    for kw in ({"session": 2, "agent_identity": "alice"}, {"session": 1, "agent_identity": "bob"}):
        assert d.derive(a, g.public, g.nonce, agent_side=True, gateway_identity=GW_ID, **kw) != one


@pytest.mark.parametrize("pub,nonce", [(b"x" * 31, b"n" * 16), (b"x" * 32, b"n" * 15), (bytes(32), b"n" * 16)])
def test_a_bad_peer_half_is_refused(pub, nonce):
    with pytest.raises(ValueError):
        d.derive(d.Offer(0), pub, nonce, agent_side=True, session=1, agent_identity="a", gateway_identity="g")


def test_a_datagram_round_trips_and_any_changed_byte_is_refused():
    agent, gw = pair()
    dg = agent.seal(b"inner packet")
    assert len(dg) == len(b"inner packet") + d.OVERHEAD
    assert gw.receive(dg, PEER, 0.1) == (b"inner packet", True)
    for i in range(len(dg)):
        bad = bytearray(agent.seal(b"inner packet"))
        bad[i] ^= 0x01
        with pytest.raises(d.Rejected):
            gw.receive(bytes(bad), PEER, 0.1)
    assert gw.rejected["bad tag"] >= len(dg) - d.HEADER.size  # every byte after the header is under the tag
    with pytest.raises(d.Rejected, match="short"):
        gw.receive(dg[:d.OVERHEAD - 1], PEER, 0.1)


def test_the_reverse_direction_and_a_reflected_datagram():
    agent, gw = pair()
    assert agent.receive(gw.seal(b"reply"), ("203.0.113.20", 443), 0.1)[0] == b"reply"
    agent.seal(b"mine")
    with pytest.raises(d.Rejected, match="bad tag"):  # our own datagram sent back at us is not the peer's
        agent.receive(agent.seal(b"mine"), ("203.0.113.20", 443), 0.1)  # (counter 1: new to the window)


def test_no_nonce_is_used_twice_and_the_counter_cannot_wrap():
    agent, _ = pair()
    seen = {agent.seal(b"x")[:d.HEADER.size] for _ in range(5000)}
    assert len(seen) == 5000
    agent.sender.counter = d.MAX_COUNTER
    with pytest.raises(d.Rejected, match="exhausted"):
        agent.seal(b"x")
    with pytest.raises(ValueError):  # and an epoch's keys are installed once
        agent.install(0, b"k" * 32, b"k" * 32, 1.0)


def test_replays_too_old_and_out_of_order():
    agent, gw = pair()
    dgs = [agent.seal(bytes([i % 256])) for i in range(d.WINDOW + 10)]
    gw.receive(dgs[5], PEER, 0.1)
    gw.receive(dgs[3], PEER, 0.1)  # late but inside the window: accepted once
    for again in (dgs[5], dgs[3]):
        with pytest.raises(d.Rejected, match="replayed"):
            gw.receive(again, PEER, 0.1)
    gw.receive(dgs[d.WINDOW + 9], PEER, 0.1)
    with pytest.raises(d.Rejected, match="too old"):
        gw.receive(dgs[4], PEER, 0.1)
    assert gw.receive(dgs[d.WINDOW + 8], PEER, 0.1)[0] == bytes([(d.WINDOW + 8) % 256])


def test_a_forged_high_counter_does_not_move_the_window():
    agent, gw = pair()
    first = agent.seal(b"a")
    forged = bytearray(agent.seal(b"b"))
    forged[6:14] = (10 ** 9).to_bytes(8, "big")  # the counter field, far ahead
    with pytest.raises(d.Rejected, match="bad tag"):
        gw.receive(bytes(forged), ELSEWHERE, 0.1)
    assert gw.receive(first, PEER, 0.1)[0] == b"a"  # still inside the window: nothing was marked
    assert gw.peer == PEER


def test_rebinding_moves_the_peer_only_on_a_new_authenticated_datagram():
    agent, gw = pair()
    a, b, c = (agent.seal(bytes([i])) for i in range(3))
    assert gw.receive(b, PEER, 0.1)[1] is True
    assert gw.receive(a, ELSEWHERE, 0.2) == (bytes([0]), False)  # older than the newest: does not move
    assert gw.peer == PEER
    with pytest.raises(d.Rejected, match="replayed"):
        gw.receive(b, ELSEWHERE, 0.3)  # a copy replayed from another address
    assert gw.peer == PEER
    assert gw.receive(c, ELSEWHERE, 0.4) == (bytes([2]), True)  # the agent's NAT moved it
    assert gw.peer == ELSEWHERE


def test_rekey_keeps_the_old_epoch_for_its_grace_time_then_refuses_it():
    agent, gw = pair()
    assert not agent.needs_rekey(1.0) and agent.needs_rekey(d.REKEY_AFTER_SECONDS)
    old = [agent.seal(b"old") for _ in range(3)]
    ka, kg = keys(epoch=1)
    agent.install(1, *ka, 100.0)
    gw.install(1, *kg, 100.0)
    assert gw.receive(agent.seal(b"new"), PEER, 100.0)[0] == b"new"
    assert gw.receive(old[0], PEER, 100.0 + d.OLD_EPOCH_GRACE - 1)[0] == b"old"  # in flight across the rekey
    with pytest.raises(d.Rejected, match="old epoch"):
        gw.receive(old[1], PEER, 100.0 + d.OLD_EPOCH_GRACE + 1)
    ka, kg = keys(epoch=2)
    gw.install(2, *kg, 200.0)
    with pytest.raises(d.Rejected, match="unknown epoch"):  # two epochs back is gone
        gw.receive(old[2], PEER, 200.0)
    agent.sender.counter = d.REKEY_AFTER_PACKETS
    assert agent.needs_rekey(100.5)


def test_other_sessions_and_other_protocols_are_not_ours():
    agent, gw = pair()
    dg = bytearray(agent.seal(b"x"))
    other = bytes(dg[:1]) + (SESSION + 1).to_bytes(4, "big") + bytes(dg[5:])
    with pytest.raises(d.Rejected, match="other session"):
        gw.receive(other, PEER, 0.1)
    with pytest.raises(d.Rejected, match="not ours"):
        gw.receive(b"\x16\x03\x01" + bytes(40), PEER, 0.1)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=6 * d.WINDOW), max_size=300))
def test_replay_window_matches_a_naive_set(counters):
    w, seen, top = d.ReplayWindow(), set(), -1
    for n in counters:
        naive_ok = n > top or (top - n < d.WINDOW and n not in seen)
        assert (w.check(n) is None) == naive_ok, n
        if naive_ok:
            w.mark(n)
            seen.add(n)
            top = max(top, n)


def test_replay_window_edge_a_counter_just_inside_survives_the_slide_into_a_new_block():
    w = d.ReplayWindow()
    for n in (1, d.WINDOW):  # the second opens a new block exactly WINDOW - 1 counters ahead of the first
        assert w.check(n) is None
        w.mark(n)
    assert w.check(1) == "replayed" and w.check(0) == "too old" and w.check(2) is None
