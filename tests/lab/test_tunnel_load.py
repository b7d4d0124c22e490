"""The tunnel under load and loss (issue 17), in the sealed lab: real TUN, TLS and iperf3.

One lab for the module, the agent scenario.  The outer path is made lossy (2 %
both ways, an nft rule on the inet host's forward hook, as the bench does) or
slow (a tbf shaper on inet's link to the gateway); each test removes its rule
or shaper, also when it fails.  What is
checked is behaviour, never speed: the transfers complete, a second flow is
served beside them, and when the tunnel's connection is the bottleneck its
fair queue's CoDel (ztna/fqcodel.py) drops or ECN-marks inner packets, counted
in the agent's status.  Speed and RTT figures are the bench's (scripts/bench.sh tunnel).
"""

from __future__ import annotations

import json
import threading
from contextlib import contextmanager

import pytest

from netns import procs
from netns.lab import started
from netns.scenarios.agent import APP, APP_IP, AgentScenario

TABLE = "ztna_test_path"


class LoadScenario(AgentScenario):
    name = "agent-load"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(LoadScenario(), tmp_path_factory.mktemp("lab")) as lab:
        for port in (5201, 5202):
            lab.start("app", ["iperf3", "-s", "-B", APP_IP, "-p", str(port)], name=f"iperf3-{port}")
            procs.wait_listening(lab.procs[f"iperf3-{port}"], APP_IP, port)
        lab.lease = lab.exec("client", ["dig", "+short", APP]).stdout.decode().strip()
        yield lab


@contextmanager
def path_rule(lab, rule: str):
    """An nft rule on inet's forward hook for the block's duration."""
    rules = (f"table inet {TABLE} {{\n  chain forward {{\n"
             f"    type filter hook forward priority -10; policy accept;\n    {rule}\n  }}\n}}\n")
    r = procs.run(lab.ns("inet"), ["nft", "-f", "-"], input=rules.encode())
    assert r.returncode == 0, r.stderr.decode()
    try:
        yield
    finally:
        lab.exec("inet", ["nft", "delete", "table", "inet", TABLE])


def iperf(lab, *extra, seconds=4, port=5201):
    r = lab.exec("client", ["iperf3", "-c", lab.lease, "-p", str(port), "-t", str(seconds), "-J",
                            "--connect-timeout", "3000", *extra], timeout=seconds + 40)
    doc = json.loads(r.stdout or b"{}")
    assert "error" not in doc and "end" in doc, doc.get("error") or r.stderr.decode()
    return doc["end"]["sum_received"]["bytes"]


def agent_counters(lab):
    r = lab.exec("client", procs.ztna_argv("agent", "status", "--json", "--state-dir", str(lab.root / "agent-client")))
    return json.loads(r.stdout)["counters"]


def test_an_upload_and_a_download_at_once_under_2pct_loss_both_complete_and_a_ping_is_answered(lab):
    got = {}
    with path_rule(lab, "numgen random mod 100 < 2 drop"):
        down = threading.Thread(target=lambda: got.setdefault("down", iperf(lab, "-R", port=5202)))
        down.start()
        try:
            got["up"] = iperf(lab)
            r = lab.exec("client", ["ping", "-n", "-c", "10", "-i", "0.2", "-W", "3", lab.lease], timeout=30)
        finally:
            down.join()
    assert got["up"] > 0 and got.get("down", 0) > 0
    assert b" 0 received" not in r.stdout and b"bytes from" in r.stdout, r.stdout.decode()
    assert agent_counters(lab)["tunnel_tx_packets"] > 0


@contextmanager
def slow_uplink(lab, rate: str = "80mbit"):
    """A token-bucket shaper with a short queue on inet's link to the gateway: a slow uplink."""
    r = lab.exec("inet", ["tc", "qdisc", "add", "dev", "eth1", "root", "tbf", "rate", rate, "burst", "64kb",
                          "latency", "10ms"])
    assert r.returncode == 0, r.stderr.decode()
    try:
        yield
    finally:
        lab.exec("inet", ["tc", "qdisc", "del", "dev", "eth1", "root"])


@pytest.mark.parametrize("ecn", [False, True], ids=["not ECN-capable: dropped", "ECN-capable: marked"])
def test_when_the_tunnel_is_the_bottleneck_codel_cuts_the_standing_queue(lab, ecn):
    # Cubic inside fills whatever buffer the path has (BBR would keep it short by itself);
    # the shaper makes the outer connection slower than the TUN, so the agent's fair queue stands.
    lab.exec("client", ["sysctl", "-qw", f"net.ipv4.tcp_ecn={1 if ecn else 0}"])
    before = agent_counters(lab)
    try:
        with slow_uplink(lab):
            assert iperf(lab, "-C", "cubic", seconds=5) > 0
    finally:
        lab.exec("client", ["sysctl", "-qw", "net.ipv4.tcp_ecn=2"])
    after = agent_counters(lab)
    queued = after.get("tunnel_queued_packets", 0) - before.get("tunnel_queued_packets", 0)
    drops = after.get("aqm_drops", 0) - before.get("aqm_drops", 0)
    marks = after.get("aqm_marks", 0) - before.get("aqm_marks", 0)
    assert queued > 0, after
    if ecn:
        assert marks > 0 and marks > drops, after  # (retransmissions are never ECN-capable)
    else:
        assert drops > 0 and marks == 0, after
