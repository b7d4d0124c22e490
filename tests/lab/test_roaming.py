"""Roaming DNS client in the lab: the three scenarios, then every bad input of
the issue against a real client in a real namespace, asked with dig."""

import json
import signal
import sys
import time

import pytest

from netns import procs, scenarios
from netns.lab import Lab
from netns.report import render
from netns.scenario import run as run_scenario
from netns.scenarios import roaming as R
from netns.scenarios import roaming_cloud


@pytest.mark.parametrize("name", ["roaming", "roaming-vpn-conflict", "roaming-metric"])
def test_scenario(name):
    ok, steps, _ = run_scenario(scenarios.get(name), say=lambda s: None, color=False)
    assert ok, render(name, steps, color=False)


# ---- bad input ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with Lab("roaming-bad", R.lan_topology("roaming-bad"), root=tmp_path_factory.mktemp("roaming-lab")).built() as lab:
        zones = R.write_zones(lab)
        R.start_lan(lab, zones)
        R.start_cloud(lab, zones)
        lab.set_resolvers("laptop", [])
        yield lab


@pytest.fixture()
def fresh(lab):
    """A laptop with its original resolv.conf and no client state; stops whatever the test started."""
    state_dir = lab.conf_dir / "roaming-state"
    if state_dir.exists():
        for f in state_dir.iterdir():
            f.unlink()
    lab.resolv_conf_path("laptop").write_text(R.ORIGINAL)
    before = set(lab.procs)
    yield lab
    for name in set(lab.procs) - before:
        lab.stop(name)
    if "cloud" not in lab.procs:
        R.start_cloud(lab, {})


def roaming(lab, *args, conf):
    return lab.exec("laptop", procs.ztna_argv("roaming", *args, "--config", str(conf)), timeout=30)


def test_malformed_resolv_conf_is_refused_and_left_alone(fresh):
    lab = fresh
    bad = "nameserver 192.168.1.53\nnameserver not-an-address\n"
    lab.resolv_conf_path("laptop").write_text(bad)
    conf = R.roaming_conf(lab, "r.toml")
    r = roaming(lab, "run", conf=conf)
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "malformed" in err and "line 2" in err and "not-an-address" in err and "DNS left as it is" in err
    assert "Traceback" not in err
    assert lab.resolv_conf_path("laptop").read_text() == bad
    # The machine still resolves with its own settings (glibc skips the bad line).
    r = lab.exec("laptop", ["getent", "ahostsv4", R.INTRANET])
    assert r.returncode == 0 and r.stdout.decode().startswith("192.168.1.20")


def test_kill9_then_restore_by_hand(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml")
    R.start_client(lab, conf)
    lab.stop("roaming", sig=signal.SIGKILL)  # a crash: whatever it left on disk stays
    rc = lab.resolv_conf_path("laptop")
    assert "nameserver 127.0.0.1" in rc.read_text()
    # Nothing answers on loopback now: the machine has no working DNS until restored.
    assert R.dig(lab, "laptop", R.INTRANET)[1] in ("TIMEOUT", "no answer")
    st = roaming(lab, "status", conf=conf)
    assert st.returncode == 3 and b"ztna roaming restore" in st.stdout
    r = roaming(lab, "restore", conf=conf)
    assert r.returncode == 0 and r.stdout.decode().startswith("restored")
    assert rc.read_text() == R.ORIGINAL
    assert R.dig(lab, "laptop", R.INTRANET)[0] == ["192.168.1.20"]
    again = roaming(lab, "restore", conf=conf)
    assert again.returncode == 0 and again.stdout.decode().startswith("left as is")
    assert rc.read_text() == R.ORIGINAL


def test_restore_refuses_while_running(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml")
    R.start_client(lab, conf)
    r = roaming(lab, "restore", conf=conf)
    assert r.returncode != 0 and b"is running" in r.stderr
    assert "nameserver 127.0.0.1" in lab.resolv_conf_path("laptop").read_text()


def _crash_and_edit_state(lab, conf, edit):
    R.start_client(lab, conf)
    lab.stop("roaming", sig=signal.SIGKILL)  # a crash: whatever it left on disk stays
    path = lab.conf_dir / "roaming-state" / "state.json"
    edit(path)


def test_corrupt_state_file_uses_the_copy_inside_our_file(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml")
    _crash_and_edit_state(lab, conf, lambda p: p.write_text('{"format": 1, "machine_id": '))
    r = roaming(lab, "restore", conf=conf)
    out = r.stdout.decode()
    assert r.returncode == 0 and "corrupt" in out and "original it carries" in out
    assert lab.resolv_conf_path("laptop").read_text() == R.ORIGINAL
    assert list((lab.conf_dir / "roaming-state").glob("state.json.bad-*")), "the corrupt state file was not kept aside"
    assert not (lab.conf_dir / "roaming-state" / "state.json").exists()


def test_state_from_another_machine_is_not_applied(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml")

    def foreign(p):
        doc = json.loads(p.read_text())
        doc["machine_id"] = "0123456789abcdef0123456789abcdef"
        doc["original_text"] = "nameserver 203.0.113.99\n"
        p.write_text(json.dumps(doc))

    _crash_and_edit_state(lab, conf, foreign)
    # The next start recovers: not from the foreign record, from the copy in its own file.
    R.start_client(lab, conf)
    log = (lab.log_dir / "roaming.log").read_text()
    assert "another machine" in log
    lab.stop("roaming")
    assert lab.resolv_conf_path("laptop").read_text() == R.ORIGINAL


def test_missing_state_file_next_start_still_recovers(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml")
    _crash_and_edit_state(lab, conf, lambda p: p.unlink())
    R.start_client(lab, conf)
    st = R.status(lab, conf)
    assert [s["value"] for s in st["recorded_servers"]] == [R.LAN_DNS], "recorded the stub instead of the original"
    assert R.dig(lab, "laptop", R.INTRANET)[0] == ["192.168.1.20"]
    lab.stop("roaming")
    assert lab.resolv_conf_path("laptop").read_text() == R.ORIGINAL


def test_unreachable_cloud_fails_open_then_recovers(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml", cloud_probe_every=0.5)
    R.start_client(lab, conf)
    lab.stop("cloud")
    # External names still resolve, through the recorded LAN server, unfiltered.
    # Two queries: one lost exchange is not yet "unreachable" (cloud_fail_after = 2).
    for _ in range(2):
        assert R.dig(lab, "laptop", R.GOOD)[0] == ["198.51.100.80"]
    st = R.wait_status(lab, conf, "open", timeout=10)
    assert st["reason"] == "cloud_unreachable" and "fail-open" in st["detail"]
    assert R.dig(lab, "laptop", R.BAD)[0] == ["198.51.100.66"]  # what "open" means: nothing is blocked
    R.start_cloud(lab, {})
    time.sleep(0.6)
    assert R.dig(lab, "laptop", R.GOOD)[0] == ["198.51.100.80"]
    R.wait_status(lab, conf, "protected", timeout=10)
    assert R.dig(lab, "laptop", R.BAD)[0] == [roaming_cloud.BLOCK_PAGE]


def _scrape(lab, where: str) -> dict:
    r = lab.exec("laptop", ["curl", "-sS", "--max-time", "5", f"http://{where}/metrics"], timeout=10)
    assert r.returncode == 0, r.stderr.decode()
    return {line.rpartition(" ")[0]: float(line.rpartition(" ")[2])
            for line in r.stdout.decode().splitlines() if line.startswith("ztna_roaming_")}


def test_metrics_are_scraped_with_curl_and_move_with_queries(fresh):
    lab = fresh
    where = "127.0.0.1:9155"  # the laptop namespace's own loopback
    conf = R.roaming_conf(lab, "r-metrics.toml", metrics={"listen": where})
    R.start_client(lab, conf)
    before = _scrape(lab, where)
    assert before["ztna_roaming_owning"] == 1.0 and before["ztna_roaming_cloud_up"] == 1.0, before
    for _ in range(3):
        assert R.dig(lab, "laptop", R.GOOD)[0] == ["198.51.100.80"]
    R.dig(lab, "laptop", R.INTRANET)
    after = _scrape(lab, where)
    cloud, internal = 'ztna_roaming_queries_total{route="cloud"}', 'ztna_roaming_queries_total{route="internal"}'
    assert after[cloud] >= before[cloud] + 3 and after[internal] >= before[internal] + 1, (before, after)


def test_unreachable_cloud_fail_closed(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml", fail_open=False)
    R.start_client(lab, conf)
    lab.stop("cloud")
    for _ in range(2):
        assert R.dig(lab, "laptop", R.GOOD)[1] == "SERVFAIL"
    st = R.wait_status(lab, conf, "unprotected", timeout=10)
    assert st["reason"] == "cloud_unreachable"
    # Internal names never needed the cloud.
    assert R.dig(lab, "laptop", R.INTRANET)[0] == ["192.168.1.20"]


def test_another_dns_proxy_on_loopback(fresh):
    lab = fresh
    # Another product's DNS proxy already holds 127.0.0.1:53.
    other = lab.start("laptop", procs.ztna_argv("authdns", "run", "--zone", str(lab.conf_dir / "corp.zone"),
                                                "--listen", "127.0.0.1"), name="other-proxy")
    procs.wait_listening(other, "127.0.0.1", 53, "udp")
    conf = R.roaming_conf(lab, "r.toml")
    R.start_client(lab, conf, wait_for=None)
    st = R.wait_status(lab, conf, "unprotected", reason="loopback_in_use", timeout=10)
    assert "127.0.0.1:53 is already served by" in st["detail"] and "127.0.2.1" in st["detail"]
    assert lab.resolv_conf_path("laptop").read_text() == R.ORIGINAL, "took over although it could not serve"
    lab.stop("roaming")
    # A loopback address of its own avoids the clash.
    conf2 = R.roaming_conf(lab, "r2.toml", listen="127.0.2.1")
    R.start_client(lab, conf2)
    text = lab.resolv_conf_path("laptop").read_text()
    assert "nameserver 127.0.2.1" in text
    assert R.dig(lab, "laptop", R.GOOD)[0] == ["198.51.100.80"]
    lab.stop("roaming")
    assert lab.resolv_conf_path("laptop").read_text() == R.ORIGINAL


GARBAGE = r"""
import socket, struct
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.settimeout(1.0)
replies = []
for data in [b"", b"\x01", b"\x12\x34" + b"\xff" * 40, b"\x00\x07" + b"\x00" * 10 + b"\x05", bytes(range(256)) * 2]:
    s.sendto(data, ("127.0.0.1", 53))
    try:
        r = s.recv(4096)
        replies.append((len(data), r[:2].hex(), r[3] & 15))
    except socket.timeout:
        replies.append((len(data), None, None))
print(replies)
"""


def test_garbage_queries_get_formerr_or_nothing_and_the_stub_keeps_serving(fresh):
    lab = fresh
    conf = R.roaming_conf(lab, "r.toml")
    R.start_client(lab, conf)
    out = lab.exec("laptop", [sys.executable, "-c", GARBAGE]).stdout.decode()
    replies = eval(out)  # our own script's repr of a list of tuples
    by_len = {n: (ident, rcode) for n, ident, rcode in replies}
    assert by_len[0] == (None, None) and by_len[1] == (None, None)  # no header: dropped
    assert by_len[42] == ("1234", 1)  # FORMERR with the query's id
    assert lab.procs["roaming"].alive()
    assert R.dig(lab, "laptop", R.INTRANET)[0] == ["192.168.1.20"]
    # The status file is rewritten every poll_interval (0.2 s here): give it a few to catch up.
    deadline = time.monotonic() + 3
    def caught_up(c):
        return c["formerr"] >= 1 and c["internal"] >= 1

    while not caught_up(counts := R.status(lab, conf)["queries"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert caught_up(counts), counts
