"""The UDP data channel (issue 17 part 2) in the sealed lab: real TUN, TLS, UDP, curl and iperf3.

The agent scenario with ``udp = true`` at the agent and ``udp_port`` at the
gateway.  UDP is blocked by an nft rule on the inet host's forward hook (both
directions of the gateway's UDP port); each test removes its rule, also when it
fails.  What is checked: where the data travels (captures on the client's
uplink), that transfers complete across a switch, and that forged datagrams are
dropped and counted.  Speed is not asserted; the switch times are printed.
"""

from __future__ import annotations

import json
import re
import sys
import threading
import time
from datetime import datetime
from contextlib import contextmanager
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP, UDP

from netns import capture, procs
from netns.lab import started
from netns.scenarios.agent import APP, APP_IP, GW_PUBLIC, AgentScenario
from ztna.datachannel import OVERHEAD
from ztna.udppath import TRY_TIMEOUT

UDP_PORT = 51820
TABLE = "ztna_test_udp"
CLIENT_IP = "198.51.100.10"


class UdpScenario(AgentScenario):
    name = "agent-udp"

    def gateway_conf(self, lab) -> str:
        return super().gateway_conf(lab).replace("port = 443\n", f"port = 443\nudp_port = {UDP_PORT}\n", 1)

    def agent_conf(self, lab, host, ident) -> Path:
        path = super().agent_conf(lab, host, ident)
        return lab.write_conf(path.name, path.read_text().replace("[agent]\n", "[agent]\nudp = true\n", 1))


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    with started(UdpScenario(), tmp_path_factory.mktemp("lab")) as lab:
        lab.start("app", ["iperf3", "-s", "-B", APP_IP, "-p", "5201"], name="iperf3")
        procs.wait_listening(lab.procs["iperf3"], APP_IP, 5201)
        yield lab


def log(lab, name):
    return Path(lab.procs[name].log).read_text(errors="replace")


def restart_agent(lab):
    lab.stop("agent-client")
    lab.sc.start_agent(lab, "client", "alice")


def curl(lab, path, *extra, timeout=60):
    r = lab.exec("client", ["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code} %{size_download}",
                            "--max-time", str(timeout - 5), "--cacert", str(lab.pki_dir / "ca.pem"), *extra,
                            f"https://{APP}{path}"], timeout=timeout)
    return r.returncode, r.stdout.decode(), r.stderr.decode()


@contextmanager
def udp_blocked(lab):
    rules = (f"table inet {TABLE} {{\n  chain forward {{\n"
             f"    type filter hook forward priority -10; policy accept;\n"
             f"    udp dport {UDP_PORT} drop\n    udp sport {UDP_PORT} drop\n  }}\n}}\n")
    r = procs.run(lab.ns("inet"), ["nft", "-f", "-"], input=rules.encode())
    assert r.returncode == 0, r.stderr.decode()
    try:
        yield
    finally:
        lab.exec("inet", ["nft", "delete", "table", "inet", TABLE])


@contextmanager
def uplink_capture(lab, tag, snaplen=96):
    caps = [capture.start(lab.ns("client"), "client", "eth0", lab.root / f"udp-{tag}", lab.root / f"udp-{tag}",
                          snaplen=snaplen)]
    capture.wait_ready(caps)
    got = {}
    try:
        yield got
    finally:
        time.sleep(0.3)
        capture.stop(caps)
        got["pkts"] = capture.read(caps[0].path)


def split(pkts, since=0.0, until=float("inf")):
    """(UDP datagrams to the gateway's UDP port and back, TCP segments with payload on 443), by wire length."""
    udp, tls = [], []
    for p in pkts:
        if IP not in p or not since <= float(p.time) < until:
            continue
        if UDP in p and UDP_PORT in (p[UDP].dport, p[UDP].sport) and GW_PUBLIC in (p[IP].src, p[IP].dst):
            udp.append(p)
        elif TCP in p and 443 in (p[TCP].dport, p[TCP].sport) and GW_PUBLIC in (p[IP].src, p[IP].dst):
            n = p[IP].len - p[IP].ihl * 4 - p[TCP].dataofs * 4
            if n > 0:
                tls.append((p, n))
    return udp, tls


LIMIT = 1400 + 1 + OVERHEAD  # the largest datagram: an inner packet of udp_mtu, its kind byte, header and tag


def datagram_sizes(p) -> list[int]:
    """The sizes of the datagrams one captured UDP packet holds.  The shells send runs of datagrams
    with UDP GSO, and a capture on a veth sees the run as one buffer (the kernel never needs to cut
    it); the run's boundaries are found by the next datagram's header (same session and epoch, the
    counter one more) and checked at every multiple of that size."""
    data = bytes(p[UDP].payload)
    assert len(data) == p[UDP].len - 8, "the capture must hold whole packets"
    if len(data) <= LIMIT:
        return [len(data)]
    head, counter = data[:6], int.from_bytes(data[6:14], "big")
    size = data.find(head + (counter + 1).to_bytes(8, "big"), 1)
    assert 0 < size <= LIMIT, f"a {len(data)}-byte UDP payload that is no run of datagrams of at most {LIMIT} B"
    for k, at in enumerate(range(0, len(data), size)):
        assert data[at:at + 14] == head + (counter + k).to_bytes(8, "big"), (k, at, size)
    return [size] * (len(data) // size) + ([len(data) % size] if len(data) % size else [])


def wait_log(lab, name, pattern, start, timeout):
    """Seconds until ``pattern`` appears in the log after offset ``start``."""
    t0 = time.monotonic()
    procs.wait_until(lambda: re.search(pattern, log(lab, name)[start:]), timeout=timeout, what=pattern)
    return time.monotonic() - t0


def up(lab, start=0, timeout=15):
    return wait_log(lab, "agent-client", r"UDP data channel: \w+ -> up", start, timeout)


def test_a_udp_allowed_download_and_iperf3_travel_as_datagrams_and_tls_carries_only_control(lab):
    rc, out, err = curl(lab, "/")  # the first packet builds the tunnel; the path comes up behind it
    assert rc == 0 and out.startswith("200"), err
    up(lab)
    size = 20_000_000
    with uplink_capture(lab, "a", snaplen=65535) as cap:
        rc, out, err = curl(lab, f"/bytes/{size}")
        lease = lab.exec("client", ["dig", "+short", APP]).stdout.decode().strip()
        r = lab.exec("client", ["iperf3", "-c", lease, "-t", "3", "-b", "100M", "--connect-timeout", "3000"], timeout=40)
    assert rc == 0 and out == f"200 {size}", (out, err)
    assert r.returncode == 0 and b"receiver" in r.stdout, r.stderr.decode()
    udp, tls = split(cap["pkts"])
    down = [p for p in udp if p[IP].src == GW_PUBLIC]
    upw = [p for p in udp if p[IP].dst == GW_PUBLIC]
    assert sum(p[IP].len for p in down) > size and upw  # the download arrived as datagrams
    assert all(not p[IP].flags.MF and p[IP].frag == 0 for p in udp)  # no fragments
    sizes = [n for p in udp for n in datagram_sizes(p)]
    assert max(sizes) <= LIMIT  # every datagram fits the path: the super-packets were segmented before sealing
    runs = sum(1 for p in udp if len(p[UDP].payload) > LIMIT)
    st = json.loads(lab.exec("client", procs.ztna_argv("agent", "status", "--json", "--state-dir",
                                                      str(lab.root / "agent-client"))).stdout)
    assert st["tunnel"]["udp"]["state"] == "up" and st["tunnel"]["udp"]["port"] == UDP_PORT, st["tunnel"]
    assert st["counters"]["udp_tx_packets"] > 0 and st["counters"]["udp_rx_packets"] > 0
    tls_bytes = sum(n for _, n in tls)
    assert tls_bytes < 100_000, tls_bytes  # leases, keep-alives, the path's control: no data
    print(f"\n(a) {len(down)} UDP packets from the gateway ({sum(p[IP].len for p in down)} B), {len(upw)} to it, "
          f"{len(sizes)} datagrams in all, {runs} packets were GSO runs of several; "
          f"{len(tls)} TLS segments with {tls_bytes} B of payload")


def test_udp_blocked_from_the_start_falls_back_and_curl_still_gets_200_over_tls(lab):
    with udp_blocked(lab):
        restart_agent(lab)
        start = len(log(lab, "agent-client"))
        with uplink_capture(lab, "b") as cap:
            t0 = time.monotonic()
            rc, out, err = curl(lab, "/bytes/2000000")
            took = time.monotonic() - t0
            wait_log(lab, "agent-client", r"UDP data channel: trying -> fallback", start, 10)
    assert rc == 0 and out == "200 2000000", (out, err)
    lines = log(lab, "agent-client")[start:].splitlines()
    tried = next(stamp(x) for x in lines if "UDP data channel: off -> trying" in x)
    fell = stamp(next(x for x in lines if "UDP data channel: trying -> fallback" in x)) - tried
    assert fell <= TRY_TIMEOUT + 1.5, fell  # the bound, plus the agent's one-second tick
    udp, tls = split(cap["pkts"])
    assert sum(n for _, n in tls) > 2_000_000  # the data went over TLS
    assert not [p for p in udp if p[IP].src == GW_PUBLIC]  # nothing came back over UDP (it was blocked)
    assert "-> up" not in log(lab, "agent-client")[start:]
    print(f"\n(b) curl 200 over TLS in {took:.2f}s; fallback {fell:.2f}s after the key offer")


def stamp(line: str) -> float:
    return datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f").timestamp()


def forge(lab, session, count):
    """Datagrams to the gateway's UDP port from the inet host (off the agent's path): garbage, no-session
    headers, and the live session's header with far-ahead counters and bad tags."""
    code = ("import os, socket, struct\n"
            "s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
            f"for i in range({count}):\n"
            f"    sid = {session} if i % 3 == 0 else 100000 + i\n"
            "    body = os.urandom(80) if i % 3 == 1 else struct.pack('!BIBQ', 0x5a, sid, 0, 10**6 + i) + os.urandom(60)\n"
            f"    s.sendto(body, ('{GW_PUBLIC}', {UDP_PORT}))\n")
    r = lab.exec("inet", [sys.executable, "-c", code], timeout=30)
    assert r.returncode == 0, r.stderr.decode()


def test_udp_blocked_mid_download_switches_to_tls_and_back_and_forged_datagrams_are_dropped(lab):
    restart_agent(lab)
    rc, out, err = curl(lab, "/")
    assert rc == 0, err
    up(lab)
    start = len(log(lab, "agent-client"))
    gw_start = len(log(lab, "gateway"))
    size = 60_000_000
    got = {}
    times = {}
    with uplink_capture(lab, "c") as cap:
        dl = threading.Thread(target=lambda: got.setdefault("r", curl(lab, f"/bytes/{size}", "--limit-rate", "2M",
                                                                      timeout=120)))
        dl.start()
        try:
            time.sleep(3)
            sid = re.findall(r"session (\d+) alice: data over UDP", log(lab, "gateway"))[-1]
            forge(lab, int(sid), 600)
            with udp_blocked(lab):
                times["block"] = time.time()
                times["to_tls"] = wait_log(lab, "agent-client", r"UDP data channel: up -> fallback", start, 15)
                time.sleep(8)  # the inner TCP may sit in a retransmission back-off of a few seconds first
            times["lift"] = time.time()
            times["to_udp"] = wait_log(lab, "agent-client", r"UDP data channel: \w+ -> up", start, 40)
            time.sleep(2)
        finally:
            dl.join()
    rc, out, err = got["r"]
    assert rc == 0 and out == f"200 {size}", (out, err)
    before, _ = split(cap["pkts"], until=times["block"])
    during_udp, during_tls = split(cap["pkts"], since=times["block"] + times["to_tls"], until=times["lift"])
    after, _ = split(cap["pkts"], since=times["lift"] + times["to_udp"] + 0.5)
    assert [p for p in before if p[IP].src == GW_PUBLIC]  # UDP before the block
    assert sum(n for _, n in during_tls) > 1_000_000, sum(n for _, n in during_tls)  # the download went on over TLS
    assert [p for p in after if p[IP].src == GW_PUBLIC]  # and back on UDP after the block was lifted
    gw = log(lab, "gateway")[gw_start:]
    assert re.search(r"dropped a datagram from 203\.0\.113\.1:\d+ on the UDP port: (not a data-channel datagram|no session)", gw)
    assert re.search(rf"dropped a datagram from 203\.0\.113\.1:\d+ for session {sid}: it did not authenticate "
                     r"\(.*bad_tag \d+", gw), gw[-3000:]
    assert "UDP peer now 203.0.113.1" not in gw  # no forged datagram moved the session
    assert "Traceback" not in gw and "Traceback" not in log(lab, "agent-client")
    print(f"\n(c) to TLS {times['to_tls']:.2f}s after the block; back to UDP {times['to_udp']:.2f}s after the lift; "
          f"curl 200 {size} B")
