"""pop.sitehub against backhaul.sitecore, sans-IO: the site's frames cross to the hub as on the wire."""

import ipaddress

from scapy.layers.inet import IP, TCP, UDP

from backhaul.sitecore import SiteCore
from pop import sitehub as sh
from pop.relay import FlowLog
from ztna import wire
from ztna.ippacket import NO_VNET
from ztna.tunnelcmds import Log, WriteTun

LAN = ipaddress.IPv4Network("10.10.0.0/24")
HQ = ipaddress.IPv4Network("10.20.0.0/24")


def pkt(src, dst, sport=40000, dport=80, proto="tcp", payload=b"x" * 100):
    layer = TCP(sport=sport, dport=dport) if proto == "tcp" else UDP(sport=sport, dport=dport)
    return NO_VNET + bytes(IP(src=src, dst=dst) / layer / payload)


def hub(**kw):
    return sh.SiteHub({"branch1": sh.SiteDef("branch1", (LAN,)), "hq": sh.SiteDef("hq", (HQ,))}, **kw)


def sends(cmds, sid):
    return b"".join(c.data for c in cmds if isinstance(c, sh.SendSite) and c.site == sid)


def up(h, sid=1, identity="branch1", site="branch1"):
    core = SiteCore(site)
    h.site_up(sid, identity, "198.51.100.2:5000", 0.0)
    out = h.site_data(sid, core.hello(), 0.0)
    core.receive(sends(out, sid), 0.0)
    return core, out


def test_hello_welcome_and_lan_packets_go_to_the_tun_whole():
    h = hub()
    core, _ = up(h)
    assert core.up
    p = pkt("10.10.0.10", "203.0.113.80")
    cmds = core.tun_packets([p], 1.0)
    (send,) = cmds
    out = h.site_data(1, send.data, 1.0)
    tun = [c for c in out if isinstance(c, WriteTun)]
    assert tun and tun[0].packets == [p]  # virtio-net header and all: one write per super-packet
    assert h.counters["site_packets_out"] == 1


def test_replies_from_the_tun_go_to_the_site_that_holds_the_destination():
    h = hub()
    branch, _ = up(h, 1)
    hq, _ = up(h, 2, "hq", "hq")
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "203.0.113.80")], 1.0)[0].data, 1.0)
    reply = pkt("203.0.113.80", "10.10.0.10", sport=80, dport=40000)
    out = h.tun_packets([reply, pkt("203.0.113.80", "10.20.0.5", 80, 1234)], 1.1)
    got = branch.receive(sends(out, 1), 1.1)
    assert [c.packets for c in got if isinstance(c, WriteTun)] == [[reply]]
    assert sends(out, 2)  # the second packet went to hq
    assert h.flows[(6, "10.10.0.10", 40000, "203.0.113.80", 80)].bytes_down == len(reply) - wire.VNET_HDR_LEN


def test_a_site_cannot_send_from_another_sites_addresses():
    h = hub()
    core, _ = up(h)
    out = h.site_data(1, core.tun_packets([pkt("10.20.0.5", "203.0.113.80")], 1.0)[0].data, 1.0)
    assert not [c for c in out if isinstance(c, WriteTun)]
    assert h.counters["site_packets_spoofed"] == 1
    logs = [c.message for c in out if isinstance(c, Log)]
    assert logs == ["site branch1: dropped 1 packet(s) from outside its LAN (last from 10.20.0.5)"]
    # A flood logs one line per 10 s, counting what it held back.
    for i in range(5):
        out = h.site_data(1, core.tun_packets([pkt("10.20.0.6", "203.0.113.80")], 2.0 + i)[0].data, 2.0 + i)
        assert not [c for c in out if isinstance(c, Log)]
    out = h.site_data(1, core.tun_packets([pkt("10.20.0.7", "203.0.113.80")], 12.0)[0].data, 12.0)
    assert [c.message for c in out if isinstance(c, Log)] == [
        "site branch1: dropped 6 packet(s) from outside its LAN (last from 10.20.0.7) (5 similar lines suppressed)"]


def test_a_certificate_that_is_no_site_or_another_site_is_refused():
    h = hub()
    _, out = up(h, 1, identity="mallory", site="branch1")
    assert any(isinstance(c, sh.CloseSite) for c in out)
    assert b"not a site of this PoP" in sends(out, 1)
    _, out = up(h, 2, identity="branch1", site="hq")
    assert any(isinstance(c, sh.CloseSite) for c in out)
    assert b"asked to be site" in sends(out, 2)
    assert h.counters["sites_refused"] == 2 and not h.by_site


def test_data_before_hello_garbage_and_unknown_frames_close_the_tunnel():
    h = hub()
    h.site_up(1, "branch1", "p", 0.0)
    out = h.site_data(1, wire.data_header(130) + pkt("10.10.0.1", "1.2.3.4"), 0.0)
    assert any(isinstance(c, sh.CloseSite) for c in out) and 1 not in h.links
    core, _ = up(h, 2)
    out = h.site_data(2, b"\xff\x00\x00\x01!", 0.0)
    assert any(isinstance(c, sh.CloseSite) for c in out) and h.counters["bad_frames"] == 1
    core, _ = up(h, 3)
    out = h.site_data(3, wire.control(wire.LEASE, fqdn="a.example", addr="100.64.0.1"), 0.0)
    assert b"has no place in a site tunnel" in sends(out, 3)


def test_one_flow_line_per_flow_with_the_exit_and_bytes():
    h = hub(flow_idle=5.0)
    core, _ = up(h)
    for t in (1.0, 1.5):
        h.site_data(1, core.tun_packets([pkt("10.10.0.10", "203.0.113.80")], t)[0].data, t)
    h.tun_packets([pkt("203.0.113.80", "10.10.0.10", 80, 40000)], 1.6)
    assert h.tick(3.0) == [] or all(not isinstance(c, FlowLog) for c in h.tick(3.0))
    lines = [c.fields for c in h.tick(7.0) if isinstance(c, FlowLog)]
    assert len(lines) == 1
    line = lines[0]
    assert line["site"] == "branch1" and line["exit"] == "pop-egress" and line["end"] == "idle"
    assert line["src"] == "10.10.0.10:40000" and line["dst"] == "203.0.113.80:80" and line["proto"] == "tcp"
    assert line["bytes_up"] == 2 * 140 and line["bytes_down"] == 140


def test_the_flow_table_is_bounded():
    h = hub(max_flows=10)
    core, _ = up(h)
    frames = core.tun_packets([pkt("10.10.0.10", "203.0.113.80", sport=1000 + i) for i in range(50)], 1.0)
    out = h.site_data(1, frames[0].data, 1.0)
    assert len(h.flows) == 10 and h.counters["flows_untracked"] == 40
    assert len([p for c in out if isinstance(c, WriteTun) for p in c.packets]) == 50  # still routed


def test_a_decide_hook_that_drops_is_obeyed_and_named_in_the_line():
    h = hub(decide=lambda site, proto, src, dst, dport: sh.Exit("drop", "r1", "block-x"))
    core, _ = up(h)
    out = h.site_data(1, core.tun_packets([pkt("10.10.0.10", "203.0.113.80")], 1.0)[0].data, 1.0)
    assert not [c for c in out if isinstance(c, WriteTun)]
    (line,) = [c.fields for c in h.site_closed(1, "gone") if isinstance(c, FlowLog)]
    assert line["exit"] == "drop" and line["firewall_rule"] == "block-x" and line["end"] == "site tunnel ended"


def test_a_slow_site_has_its_replies_dropped_not_queued():
    h = hub(queue_limit=1000)
    up(h)
    out = h.tun_packets([pkt("203.0.113.80", "10.10.0.10", 80, 40000)], 1.0, queued=lambda sid: 5000)
    assert not sends(out, 1) and h.counters["site_queue_drops"] == 1


def test_a_newer_tunnel_of_the_same_site_replaces_the_old_one():
    h = hub()
    up(h, 1)
    _, out = up(h, 2)
    assert h.by_site["branch1"] == 2 and 1 not in h.links
    assert any(isinstance(c, sh.CloseSite) and c.site == 1 for c in out)


def test_keepalive_and_silence():
    h = hub(keepalive=10.0)
    core, _ = up(h)
    assert sends(h.tick(10.5), 1) == wire.control(wire.KEEPALIVE)
    out = h.tick(31.0)
    assert any(isinstance(c, sh.CloseSite) for c in out)


def test_packet_info_refuses_what_is_not_ipv4():
    assert sh.packet_info(b"\x60" + b"\x00" * 39) is None
    assert sh.packet_info(b"\x45\x00") is None
    assert sh.packet_info(bytes(IP(src="1.2.3.4", dst="5.6.7.8", proto=6, frag=3) / (b"\x00" * 8)))[2] == 0


# ---- backhaul through a gateway site (issue 16) ---------------------------------------
def via_hq(site, proto, src, dst, dport):
    if dst == "198.18.20.80":
        return sh.Exit(sh.BACKHAUL, "SaaS via HQ", None, "hq")
    return sh.Exit()


def gateway_pair(**kw):
    h = hub(decide=via_hq, **kw)
    branch, _ = up(h, 1)
    hq = SiteCore("hq")
    h.site_up(2, "hq", "198.18.1.2:6000", 0.0)
    hello = wire.control(wire.HELLO, version=wire.VERSION, site="hq", port="wan1")
    out = h.site_data(2, hello, 0.0)
    hq.receive(sends(out, 2), 0.0)
    return h, branch, hq


def test_a_backhauled_packet_goes_unchanged_into_the_gateway_sites_tunnel():
    h, branch, hq = gateway_pair()
    p = pkt("10.10.0.10", "198.18.20.80")
    out = h.site_data(1, branch.tun_packets([p], 1.0)[0].data, 1.0)
    assert not [c for c in out if isinstance(c, WriteTun)]  # not the PoP's egress
    got = hq.receive(sends(out, 2), 1.0)
    assert [c.packets for c in got if isinstance(c, WriteTun)] == [[p]]  # the branch user's source and all
    assert h.counters["backhaul_packets_out"] == 1
    # an unmatched destination still leaves by the PoP's TUN
    q = pkt("10.10.0.10", "203.0.113.80")
    out = h.site_data(1, branch.tun_packets([q], 1.1)[0].data, 1.1)
    assert [c.packets for c in out if isinstance(c, WriteTun)] == [[q]] and not sends(out, 2)


def test_replies_from_the_gateway_site_reach_the_branch_only_for_its_flows():
    h, branch, hq = gateway_pair()
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0)
    reply = pkt("198.18.20.80", "10.10.0.10", sport=80, dport=40000)
    out = h.site_data(2, hq.tun_packets([reply], 1.1)[0].data, 1.1)
    got = branch.receive(sends(out, 1), 1.1)
    assert [c.packets for c in got if isinstance(c, WriteTun)] == [[reply]]
    fl = h.flows[(6, "10.10.0.10", 40000, "198.18.20.80", 80)]
    assert fl.bytes_down == len(reply) - wire.VNET_HDR_LEN and h.counters["backhaul_replies_in"] == 1
    # an internet source that answers no flow sent to hq, or another port of the server, is spoofing
    for stray in (pkt("198.18.20.81", "10.10.0.10", 80, 40000), pkt("198.18.20.80", "10.10.0.10", 81, 40000),
                  pkt("198.18.20.80", "10.10.0.10", 80, 40001)):
        out = h.site_data(2, hq.tun_packets([stray], 1.2)[0].data, 1.2)
        assert not sends(out, 1) and not [c for c in out if isinstance(c, WriteTun)]
    assert h.counters["site_packets_spoofed"] == 3


def test_only_the_gateway_site_the_flow_went_to_may_answer_it():
    h, branch, hq = gateway_pair()
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0)
    # the branch itself (or any other site) cannot inject a "reply" from the server
    out = h.site_data(1, branch.tun_packets([pkt("198.18.20.80", "10.10.0.10", 80, 40000)], 1.1)[0].data, 1.1)
    assert not sends(out, 1) and h.counters["site_packets_spoofed"] == 1
    # a reply to a flow that left by the PoP's egress is not accepted from hq either
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "203.0.113.80")], 1.2)[0].data, 1.2)
    out = h.site_data(2, hq.tun_packets([pkt("203.0.113.80", "10.10.0.10", 80, 40000)], 1.3)[0].data, 1.3)
    assert not sends(out, 1) and h.counters["site_packets_spoofed"] == 2


def test_a_gateway_site_that_is_down_gets_nothing_and_the_drop_is_counted():
    h, branch, hq = gateway_pair()
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0)
    h.site_closed(2, "gone")
    out = h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.1)[0].data, 1.1)
    assert not sends(out, 2) and not [c for c in out if isinstance(c, WriteTun)]
    assert h.counters["backhaul_site_down"] == 1
    # the established flow keeps its exit and resumes when hq's next tunnel is up
    hq2 = SiteCore("hq")
    h.site_up(3, "hq", "198.18.2.2:6001", 2.0)
    hq2.receive(sends(h.site_data(3, hq2.hello(), 2.0), 3), 2.0)
    out = h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 2.1)[0].data, 2.1)
    assert sends(out, 3)


def test_a_gateway_site_full_queue_drops_and_a_site_cannot_backhaul_to_itself():
    h, branch, hq = gateway_pair(queue_limit=1000)
    out = h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0,
                      queued=lambda sid: 5000 if sid == 2 else 0)
    assert not sends(out, 2) and h.counters["site_queue_drops"] == 1
    out = h.site_data(2, hq.tun_packets([pkt("10.20.0.5", "198.18.20.80")], 1.1)[0].data, 1.1)
    assert not sends(out, 2) and h.counters["backhaul_to_itself"] == 1


def test_the_flow_line_names_the_gateway_site_and_its_port_or_the_fallback():
    h, branch, hq = gateway_pair()
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0)
    out = h.site_data(2, wire.control(wire.KEEPALIVE, port="wan2"), 1.5)
    assert any("leave by its port wan2 (was wan1)" in getattr(c, "message", "") for c in out)
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80", sport=40001)], 2.0)[0].data, 2.0)
    lines = {c.fields["src"]: c.fields for c in h.site_closed(1, "gone") if isinstance(c, FlowLog)}
    first, second = lines["10.10.0.10:40000"], lines["10.10.0.10:40001"]
    assert first["exit"] == "backhaul" and first["via"] == "hq" and first["port"] == "wan1"
    assert first["network_rule"] == "SaaS via HQ" and second["port"] == "wan2"
    h2 = hub(decide=lambda *a: sh.Exit(sh.POP_EGRESS, "SaaS via HQ", None, "hq"))
    b2, _ = up(h2)
    h2.site_data(1, b2.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0)
    (line,) = [c.fields for c in h2.site_closed(1, "gone") if isinstance(c, FlowLog)]
    assert line["exit"] == "pop-egress" and line["fallback_of"] == "hq" and "via" not in line


def test_a_bad_port_report_is_counted_not_believed():
    h, branch, hq = gateway_pair()
    h.site_data(2, wire.control(wire.KEEPALIVE, port=["wan9"]), 1.0)
    h.site_data(2, wire.control(wire.KEEPALIVE, port="x" * 40), 1.0)
    assert h.links[2].port == "wan1" and h.counters["bad_port_reports"] == 2


def test_a_reply_through_the_gateway_for_a_site_that_is_gone_is_counted():
    h, branch, hq = gateway_pair()
    h.site_data(1, branch.tun_packets([pkt("10.10.0.10", "198.18.20.80")], 1.0)[0].data, 1.0)
    h.by_site.pop("branch1")  # the branch's tunnel is down, its flow not yet idle
    out = h.site_data(2, hq.tun_packets([pkt("198.18.20.80", "10.10.0.10", 80, 40000)], 1.1)[0].data, 1.1)
    assert not sends(out, 1) and h.counters["backhaul_replies_no_site"] == 1
