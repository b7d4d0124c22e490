"""backhaul.health: a gateway site's WAN port from probe results, sans-IO."""

import pytest

from backhaul.health import Ports, TunnelVia, UsePort


def feed(p, port, results):
    out = []
    for ok in results:
        out += p.probe(port, ok, "" if ok else "timeout")
    return out


def uses(cmds):
    return [c.port for c in cmds if isinstance(c, UsePort)]


def test_auto_starts_on_wan1_fails_over_after_fail_after_and_back_after_recover_after():
    p = Ports(["wan1", "wan2"], "auto", fail_after=3, recover_after=2)
    assert uses(p.start()) == ["wan1"]
    feed(p, "wan2", [True] * 5)
    assert uses(feed(p, "wan1", [False, False])) == []  # two misses are not yet a failure
    assert uses(feed(p, "wan1", [True, False, False])) == []  # a good probe starts the count again
    out = feed(p, "wan1", [False])
    assert uses(out) == ["wan2"] and "wan1 failed 3 probes in a row" in out[-2].reason
    assert [c.port for c in out if isinstance(c, TunnelVia)] == ["wan2"]
    assert uses(feed(p, "wan1", [True])) == []  # one good probe is not a recovery
    out = feed(p, "wan1", [True])
    assert uses(out) == ["wan1"] and "healthy again" in [c for c in out if isinstance(c, UsePort)][0].reason
    assert not [c for c in out if isinstance(c, TunnelVia)]  # the tunnel stays on the working wan2
    assert p.status() == {"mode": "auto", "active": "wan1", "tunnel": "wan2",
                          "healthy": {"wan1": True, "wan2": True}, "changes": 2}


def test_a_pinned_port_stays_whatever_its_health_but_the_tunnel_moves():
    p = Ports(["wan1", "wan2"], "wan1", fail_after=2, recover_after=2)
    assert uses(p.start()) == ["wan1"]
    out = feed(p, "wan1", [False, False])
    assert uses(out) == [] and any("wan1 unhealthy" in getattr(c, "message", "") for c in out)
    assert [c.port for c in out if isinstance(c, TunnelVia)] == ["wan2"]
    p = Ports(["wan1", "wan2"], "wan2")
    assert uses(p.start()) == ["wan2"]


def test_with_both_ports_down_auto_stays_and_takes_whichever_recovers():
    p = Ports(["wan1", "wan2"], "auto", fail_after=1, recover_after=1)
    p.start()
    assert uses(feed(p, "wan1", [False])) == ["wan2"]
    assert uses(feed(p, "wan2", [False])) == []  # nowhere better to go
    assert p.active == "wan2"
    assert uses(feed(p, "wan1", [True])) == ["wan1"]


def test_one_wan_only_and_bad_settings():
    p = Ports(["wan2"], "auto")
    assert uses(p.start()) == ["wan2"]
    assert uses(feed(p, "wan2", [False] * 5)) == []
    for args, kw in ((([], "auto"), {}), ((["wan3"], "auto"), {}), ((["wan1"], "wan2"), {}),
                     ((["wan1"], "both"), {}), ((["wan1"], "auto"), {"fail_after": 0})):
        with pytest.raises(ValueError):
            Ports(*args, **kw)
    assert "no configured port" in Ports(["wan1"]).probe("wan2", True)[0].message
