"""Agentless streams through the relay: pop.relay's stream channels against gateway.connector.ConnectorCore."""

import pytest

from gateway.connector import ChannelData, ChannelGone, ConnectorCore, NewChannel, SendTunnel
from pop import relay as r
from pop.policy import PopPolicy
from ztna import mux, wire

APP = "wiki.corp.example"


def setup():
    relay = r.Relay(PopPolicy({"alice": [APP], "bob": ["other.example"]}, {"gw1": [APP]}), window=64 * 1024)
    core = ConnectorCore(APP, window=64 * 1024)
    relay.connector_up(1, "gw1", "1.2.3.4:5", 0.0)
    cmds = relay.connector_data(1, core.hello(), 0.0)
    core.receive(b"".join(c.data for c in cmds if isinstance(c, r.SendConnector)), 0.0)  # WELCOME
    assert core.up
    return relay, core


def to_gw(core, cmds):
    return core.receive(b"".join(c.data for c in cmds if isinstance(c, r.SendConnector)), 0.0)


def test_stream_open_accept_data_and_close_are_the_shells():
    relay, core = setup()
    cid, ch, cmds = relay.open_stream("alice", APP, APP, 443)
    (new,) = to_gw(core, cmds)
    # the gateway does not answer OPENED until its TCP connect to the app is up
    assert new == NewChannel(ch, "alice", {"identity": "alice", "resource": APP, "host": APP, "port": 443}, "stream")
    (acc,) = relay.connector_data(cid, core.mux.accept(ch), 0.0)
    assert acc == r.StreamEvent(cid, ch, mux.Accepted(ch))
    (data,) = relay.connector_data(cid, core.mux.send(ch, b"HTTP/1.1 200 OK\r\n"), 0.0)
    assert data == r.StreamEvent(cid, ch, mux.Data(ch, b"HTTP/1.1 200 OK\r\n"))
    out = to_gw(core, [r.SendConnector(cid, relay.connectors[cid].mux.send(ch, b"GET / HTTP/1.1\r\n"))])
    assert out == [ChannelData(ch, b"GET / HTTP/1.1\r\n")]
    # half-close from the PoP, then the gateway's reset
    assert to_gw(core, [r.SendConnector(cid, relay.connectors[cid].mux.shutdown(ch))]) == [
        ChannelGone(ch, "eof", False, True)]
    (gone,) = relay.connector_data(cid, core.mux.close(ch, "app reset", reset=True), 0.0)
    assert gone == r.StreamEvent(cid, ch, mux.Closed(ch, "app reset", True))
    assert ch not in relay.connectors[cid].streams


def test_a_denied_identity_opens_no_channel_and_no_connector_is_a_lookup_error():
    relay, core = setup()
    with pytest.raises(PermissionError):
        relay.open_stream("bob", APP, APP, 443)
    assert relay.connectors[1].mux.channels == {}
    relay.connector_closed(1, "gone")
    with pytest.raises(LookupError, match="no live connector"):
        relay.open_stream("alice", APP, APP, 443)


def test_bad_stream_open_is_reset_by_the_gateway():
    relay, core = setup()
    m = relay.connectors[1].mux
    ch, frame = m.open(mux.STREAM, identity="alice", resource=APP, host=APP, port=70000)
    m.channels[ch]  # opened at the PoP
    out = core.receive(frame, 0.0)
    (send,) = out
    assert isinstance(send, SendTunnel)
    f = wire.Decoder(mux=True).feed_untrusted(send.data)[0]
    assert f.type == wire.CHCLOSE and f.fields["reset"] is True and "port" in f.fields["reason"]


def test_connector_loss_resets_its_streams():
    relay, core = setup()
    cid, ch, cmds = relay.open_stream("alice", APP, APP, 443)
    to_gw(core, cmds)
    relay.connector_data(cid, core.mux.accept(ch), 0.0)
    cmds = relay.connector_closed(cid, "tunnel lost")
    ev = [c for c in cmds if isinstance(c, r.StreamEvent)]
    assert ev == [r.StreamEvent(cid, ch, mux.Closed(ch, "connector gone: tunnel lost", True))]
