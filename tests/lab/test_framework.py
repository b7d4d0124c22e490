"""The lab framework itself: build, serve, capture, read back, tear down."""


import pytest

from netns import builder, capture, procs
from netns.lab import Lab
from netns.topology import Topology


@pytest.fixture()
def lab(tmp_path):
    t = Topology("framework")
    t.host("a").addr("eth0", "198.51.100.10/24").route("default", "198.51.100.1")
    t.host("r", forward=True).addr("eth0", "198.51.100.1/24").addr("eth1", "203.0.113.1/24")
    t.host("b").addr("eth0", "203.0.113.53/24").route("default", "203.0.113.1")
    t.link("a", "eth0", "r", "eth0")
    t.link("r", "eth1", "b", "eth0")
    with Lab("framework", t, root=tmp_path / "run").built() as lab:
        yield lab
    assert not set(t.namespaces()) & builder.existing()


def test_routed_dns_query_is_captured_on_both_links(lab, tmp_path):
    zone = tmp_path / "zone"
    zone.write_text("$ORIGIN lab.example.\n@ IN SOA ns h 1 60 60 60 60\nhost IN A 192.0.2.7\n")
    dns = lab.start("b", procs.ztna_argv("authdns", "run", "--zone", str(zone), "--listen", "203.0.113.53"), name="dns")
    procs.wait_listening(dns, "203.0.113.53", 53, "udp")
    lab.capture_all()
    out = lab.exec("a", ["dig", "+short", "+tries=1", "+time=2", "@203.0.113.53", "host.lab.example"])
    lab.stop_captures()
    assert out.stdout.decode().strip() == "192.0.2.7"
    from scapy.layers.dns import DNS
    from scapy.layers.inet import IP

    for host in ("a", "r"):
        pkts = capture.read(lab.pcap(host, "eth0"))
        answers = [p for p in pkts if p.haslayer(DNS) and p[DNS].qr == 1 and p[IP].src == "203.0.113.53"]
        assert answers, f"no DNS answer captured on {host}:eth0"


def test_namespaces_are_sealed(lab):
    # No lab namespace has a route or interface towards the root namespace:
    # every interface other than lo is a veth whose peer is in a lab namespace.
    for ns in lab.topo.namespaces():
        links = lab.exec(ns.removeprefix(lab.topo.ns("")), ["ip", "-o", "link"]).stdout.decode()
        for line in links.splitlines():
            name = line.split(": ")[1].split("@")[0]
            if name == "lo":
                continue
            assert "link-netns" in line or "link-netnsid" in line, f"{ns}: {name} is not a veth to another namespace: {line}"
    procs_out = lab.exec("a", ["ip", "route"]).stdout.decode()
    assert "default via 198.51.100.1" in procs_out


def test_stopped_service_leaves_no_process(lab):
    p = lab.start("a", ["sleep", "60"], name="sleeper")
    assert p.alive()
    lab.stop("sleeper")
    assert not p.alive()
    assert builder.ns_pids(lab.ns("a")) == []


def test_a_second_lab_is_refused_without_harming_the_first(lab):
    again = Lab("framework", lab.topo, root=lab.root.parent / "other")
    with pytest.raises(builder.BuildError, match="another lab is up"):
        again.up()
    assert set(lab.topo.namespaces()) <= builder.existing()
    same_root = Lab("framework", lab.topo, root=lab.root)
    with pytest.raises(builder.BuildError, match="already up"):
        same_root.up()
    assert set(lab.topo.namespaces()) <= builder.existing()


@pytest.mark.parametrize("capture", [True, False], ids=["captured", "no-capture"])
def test_lab_up_captures_every_link_unless_told_not_to(tmp_path, capture):
    """`ztna lab up` leaves the lab running with tcpdump on every link; `--no-capture` starts none (for benches)."""
    import json
    import os
    import subprocess

    env = dict(os.environ, ZTNA_LAB_DIR=str(tmp_path / "run"))
    argv = procs.ztna_argv("lab", "up", "proxy-explicit") + ([] if capture else ["--no-capture"])
    up = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=120)
    try:
        assert up.returncode == 0, up.stderr
        state = json.loads((tmp_path / "run" / "state.json").read_text())
        dumps = [p for p in state["procs"] if p["name"].startswith("tcpdump-")]
        assert bool(dumps) == capture, state["procs"]
        assert ("no captures" in up.stdout) == (not capture)
    finally:
        down = subprocess.run(procs.ztna_argv("lab", "down"), env=env, capture_output=True, text=True, timeout=120)
        assert down.returncode == 0, down.stderr
