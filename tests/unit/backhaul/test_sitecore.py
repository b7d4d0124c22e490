"""backhaul.sitecore: the site router's side of the site tunnel, sans-IO."""

from scapy.layers.inet import IP, TCP

from backhaul.sitecore import SiteCore
from ztna import wire
from ztna.ippacket import NO_VNET
from ztna.tunnelcmds import Close, Send, WriteTun

P = NO_VNET + bytes(IP(src="10.10.0.10", dst="203.0.113.80") / TCP() / (b"y" * 50))


def welcomed(**kw):
    c = SiteCore("branch1", **kw)
    assert wire.Decoder().feed_untrusted(c.hello())[0].fields == {"version": wire.VERSION, "site": "branch1"}
    c.receive(wire.control(wire.WELCOME, version=wire.VERSION, site="branch1"), 0.0)
    return c


def test_packets_wait_for_welcome_then_go_as_data_frames():
    c = SiteCore("branch1")
    assert c.tun_packets([P], 0.0) == [] and c.counters["packets_dropped_down"] == 1
    c.receive(wire.control(wire.WELCOME, version=wire.VERSION, site="branch1"), 0.0)
    (send,) = c.tun_packets([P, P], 0.1)
    frames = wire.Decoder().feed_untrusted(send.data)
    assert [bytes(f.payload) for f in frames] == [P, P]


def test_data_from_the_pop_goes_to_the_tun():
    c = welcomed()
    out = c.receive(wire.data_header(len(P)) + P, 1.0)
    assert [bytes(p) for p in out[0].packets] == [P] and isinstance(out[0], WriteTun)


def test_a_full_connection_drops_like_a_router():
    c = welcomed(queue_limit=100)
    assert c.tun_packets([P], 1.0, queued=101) == [] and c.counters["packets_dropped_queue"] == 1


def test_bad_bytes_data_before_welcome_and_close():
    c = SiteCore("branch1")
    out = c.receive(wire.data_header(len(P)) + P, 0.0)
    assert isinstance(out[-1], Close) and c.closed
    c = welcomed()
    out = c.receive(b"\xee\x00\x00\x00", 0.0)
    assert isinstance(out[-1], Close) and c.counters["bad_frames"] == 1
    c = welcomed()
    out = c.receive(wire.control(wire.CLOSE, reason="bye"), 0.0)
    assert out == [Close("the PoP said CLOSE: bye")]


def test_keepalive_and_silence():
    c = welcomed(keepalive=5.0)
    assert c.tick(5.0) == [Send(wire.control(wire.KEEPALIVE))]
    assert isinstance(c.tick(16.0)[-1], Close)


def test_a_gateway_site_reports_its_wan_port_in_hello_and_when_it_changes():
    c = SiteCore("hq", port="wan1")
    assert wire.Decoder().feed_untrusted(c.hello())[0].fields["port"] == "wan1"
    assert c.report_port("wan2", 0.0) == []  # not up yet: the next HELLO says it
    assert wire.Decoder().feed_untrusted(c.hello())[0].fields["port"] == "wan2"
    c.receive(wire.control(wire.WELCOME, version=wire.VERSION, site="hq"), 0.0)
    (send,) = c.report_port("wan1", 1.0)
    (f,) = wire.Decoder().feed_untrusted(send.data)
    assert f.type == wire.KEEPALIVE and f.fields == {"port": "wan1"}
