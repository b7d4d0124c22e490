"""The roaming client on a host whose DNS is systemd-resolved's (issue 20).

A real systemd-resolved runs on the laptop (netns/resolved.py), its global
server the LAN's, its search domain corp.example; the laptop's resolv.conf is a
link to resolved's stub file.  The client must not write the file: it opens its
own link (ztna-dns), and resolved must send it the names (dig through
127.0.0.53 shows the cloud's filtering), while the global settings stay as
they were.  Stop reverts and closes the link; kill -9 closes it with the
process, so the laptop resolves again at once, and restore clears the record.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest

from netns import procs
from netns import resolved as lab_resolved
from netns.lab import Lab
from netns.scenarios import roaming as R
from netns.scenarios import roaming_cloud


@pytest.fixture(autouse=True)
def _resolved_is_here():
    # Not a skip: scripts/install.sh unpacks it, so its absence is a broken install.
    if lab_resolved.missing() is not None:
        pytest.fail(f"{lab_resolved.missing()} (scripts/install.sh does this)")


LISTEN = "127.0.2.1"
LINK = "ztna-dns"


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab("roaming-resolved", R.lan_topology("roaming-resolved"),
             root=tmp_path_factory.mktemp("roaming-resolved")).built() as lab:
        zones = R.write_zones(lab)
        R.start_lan(lab, zones)
        R.start_cloud(lab, zones)
        res = lab_resolved.start(lab, "laptop", [R.LAN_DNS], ["corp.example"])
        link = lab.conf_dir / "resolv.conf"
        link.symlink_to(res.stub_file)
        lab.res, lab.link = res, link
        lab.conf = R.roaming_conf(lab, "rr.toml", resolv_conf=str(link), resolvectl=res.resolvectl, listen=LISTEN)
        lab.before = global_view(lab)
        assert lab.before["dns"] == [f"Global: {R.LAN_DNS}", "Link 2 (eth0):"], lab.before
        yield lab


def global_view(lab) -> dict:
    """resolved's settings other than our link's.  (A loopback server set on a link is listed on the
    'Global' line by resolvectl 252, under the loopback ifindex: it is left out here.)"""
    out = {}
    for what in ("dns", "domain"):
        rc, text, err = lab.res.ctl(lab, what)
        assert rc == 0, err
        out[what] = [" ".join(w for w in l.split() if not w.startswith("127.")) for l in text.splitlines()
                     if f"({LINK})" not in l]
    out["default-route eth0"] = lab.res.ctl(lab, "default-route", "eth0")[1]
    out["stub file"] = lab.res.stub_file.read_text()
    return out


def assert_untouched(lab):
    assert global_view(lab) == lab.before
    assert lab.link.is_symlink() and os.readlink(lab.link) == str(lab.res.stub_file)


def status(lab) -> dict:
    """``ztna roaming status --json``, with the lab's bus: it asks resolved whether our link is still set."""
    r = lab.exec("laptop", procs.ztna_argv("roaming", "status", "--json", "--config", str(lab.conf)), env=lab.res.env)
    return json.loads(r.stdout.decode())


def start(lab) -> procs.Proc:
    p = lab.start("laptop", procs.ztna_argv("roaming", "run", "--config", str(lab.conf), "-v"), name="roaming",
                  env=lab.res.env)
    procs.wait_until(lambda: p.alive() and status(lab).get("state") == "protected", timeout=15, interval=0.2,
                     what="the roaming client to say protected")
    return p


def test_the_client_configures_its_link_and_resolved_sends_it_the_names(lab):
    start(lab)
    try:
        assert LISTEN in lab.res.ctl(lab, "dns", LINK)[1]
        assert lab.res.ctl(lab, "domain", LINK)[1].split(":")[1].split() == ["~."]
        assert lab.res.ctl(lab, "default-route", LINK)[1].strip().endswith("yes")
        st = status(lab)
        assert st["backend"] == "resolved" and st["resolved_link"] == LINK
        assert {"value": R.LAN_DNS, "iface": ""} in st["recorded_servers"]
        assert {"value": "corp.example", "iface": ""} in st["recorded_search"]
        assert st["resolved_link_points_at_stub"] is True
        assert_untouched(lab)
        # The laptop's resolver is resolved's stub; resolved routes to our link; we filter through the cloud.
        assert R.dig(lab, "laptop", R.BAD)[0] == [roaming_cloud.BLOCK_PAGE]
        procs.wait_until(lambda: status(lab)["queries"]["cloud"] >= 1, timeout=5, what="the client to count the query")
        # corp.example is resolved's global search domain: a longer match than our ~., so resolved itself sends
        # it to the LAN server, past the client (the same server the client's split rule would pick).
        assert R.dig(lab, "laptop", R.INTRANET)[0] == ["192.168.1.20"]
        assert status(lab)["queries"]["internal"] == 0
    finally:
        lab.stop("roaming")
    text = Path(lab.log_dir / "roaming.log").read_text()
    assert f"reverted {LINK} in systemd-resolved" in text
    assert lab.exec("laptop", ["ip", "link", "show", LINK]).returncode != 0
    assert LISTEN not in lab.res.ctl(lab, "dns")[1]
    assert R.dig(lab, "laptop", R.BAD)[0] == ["198.51.100.66"]  # the LAN server again, unfiltered
    assert not (lab.conf_dir / "roaming-state" / "state.json").exists()
    assert_untouched(lab)


def test_kill_9_closes_the_link_with_the_process_and_restore_clears_the_record(lab):
    start(lab)
    lab.stop("roaming", sig=signal.SIGKILL)
    procs.wait_until(lambda: LISTEN not in lab.res.ctl(lab, "dns")[1], timeout=5,
                     what="resolved to drop the dead client's link")
    assert R.dig(lab, "laptop", R.INTRANET)[0] == ["192.168.1.20"]  # resolves at once, without the client
    state = lab.conf_dir / "roaming-state" / "state.json"
    assert json.loads(state.read_text())["backend"] == "resolved"
    r = lab.exec("laptop", procs.ztna_argv("roaming", "restore", "--config", str(lab.conf)), env=lab.res.env)
    assert r.returncode == 0 and f"{LINK} is gone" in r.stdout.decode(), (r.stdout, r.stderr)
    assert not state.exists()
    assert_untouched(lab)


def test_resolved_not_answering_refuses_start_and_changes_nothing(lab):
    rp = lab.procs["resolved-laptop"]
    os.kill(rp.pid, signal.SIGSTOP)
    try:
        r = lab.exec("laptop", procs.ztna_argv("roaming", "run", "--config", str(lab.conf)), env=lab.res.env, timeout=30)
    finally:
        os.kill(rp.pid, signal.SIGCONT)
    err = r.stderr.decode()
    assert r.returncode != 0 and "resolvectl does not answer" in err and "DNS left as it is" in err, err
    assert "Traceback" not in err
    assert lab.exec("laptop", ["ip", "link", "show", LINK]).returncode != 0
    assert not (lab.conf_dir / "roaming-state" / "state.json").exists()
    assert_untouched(lab)
