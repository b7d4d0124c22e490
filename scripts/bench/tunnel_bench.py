"""Throughput and latency through the ZTNA tunnel, against the plain routed path and other VPNs.

``python scripts/bench/tunnel_bench.py [--seconds 10] [--repeat 3] [--json]`` (as root; scripts/bench.sh tunnel)

One lab, the agent scenario's hosts, no captures; iperf3 from ``client`` to ``app``, 1 stream:
  plain         routed client -> inet -> gateway -> app, no tunnel (the ceiling)
  ztna          through the agent's TUN, the mTLS tunnel and the gateway's NAT (TLS/TCP mode)
  ztna-udp      the same, with the UDP data channel on (docs/datachannel.md): data in datagrams
  wireguard-go  WireGuard in user space (the same kind of program as ours), UDP
  openvpn-udp   OpenVPN over UDP with mutual TLS (same certificates)
  openvpn-tcp   OpenVPN over TCP with mutual TLS: the other TCP-carried tunnel
For each path, ``repeat`` times: idle RTT (ping alone), Mbit/s with loaded RTT (a ping
through the same path during the upload), and the same at 2 % loss: an nft rule on the
inet host's forward hook drops 2 % of the packets both ways (``numgen random``; this
kernel has no netem).  Last, a Cubic upload with its ping behind an 80 Mbit/s tbf
shaper on inet's uplink to the gateway: a slow uplink, where the tunnel's own queue
decides the loaded RTT.  Medians, with min-max, are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

from netns import procs
from netns.lab import Lab
from netns.scenarios.agent import APP, APP_IP, GW_PUBLIC, AgentScenario
from netns.topology import prefix

VPN_NET = "10.8.0.0/24"
WG_NET = "10.9.0.0/24"
WG_PORT = 51821  # not the gateway's UDP data channel port (UDP_PORT): both listen in the gateway's namespace
LOSS_TABLE = "ztna_bench_loss"
PING_INTERVAL = 0.05
SLOW = "80mbit"


def iperf(lab: Lab, target: str, seconds: int, *extra: str) -> float:
    """Mbit/s received at the app, 1 stream."""
    for attempt in (1, 2):
        time.sleep(1)  # iperf3's server serves one test at a time; let the last one finish
        r = lab.exec("client", ["iperf3", "-c", target, "-t", str(seconds), "-J", "--connect-timeout", "3000", *extra],
                     timeout=seconds + 30)
        doc = json.loads(r.stdout or b"{}")
        if "end" in doc and "error" not in doc:
            return doc["end"]["sum_received"]["bits_per_second"] / 1e6
    raise RuntimeError(f"iperf3 to {target} failed twice: {doc.get('error') or r.stderr.decode()}")


def ping(lab: Lab, target: str, seconds: float) -> list[float]:
    """Each reply's RTT in ms, pinging every 50 ms for ``seconds``."""
    count = max(5, int(seconds / PING_INTERVAL))
    r = lab.exec("client", ["ping", "-n", "-i", str(PING_INTERVAL), "-c", str(count), "-W", "2", target],
                 timeout=seconds + 30)
    rtts = [float(m) for m in re.findall(rb"time=([0-9.]+) ms", r.stdout)]
    if not rtts:
        raise RuntimeError(f"no ping reply from {target}: {r.stdout.decode()[-300:]} {r.stderr.decode()[-300:]}")
    return rtts


def loaded(lab: Lab, target: str, seconds: int, *extra: str) -> tuple[float, list[float]]:
    """Mbit/s of an upload and the RTTs of a ping through the same path while it runs."""
    rtts: list[float] = []

    def pinger() -> None:
        time.sleep(2.5)  # past iperf3's start and its sender's slow start
        rtts.extend(ping(lab, target, max(1.0, seconds - 2.5)))

    t = threading.Thread(target=pinger)
    t.start()
    try:
        mbit = iperf(lab, target, seconds, *extra)
    finally:
        t.join()
    return mbit, rtts


def loss(lab: Lab, percent: int | None) -> None:
    """Drop ``percent`` % of what inet forwards, both ways; None removes the rule."""
    lab.exec("inet", ["nft", "delete", "table", "inet", LOSS_TABLE])
    if percent is None:
        return
    rules = (f"table inet {LOSS_TABLE} {{\n  chain forward {{\n"
             f"    type filter hook forward priority -10; policy accept;\n"
             f"    numgen random mod 100 < {percent} counter drop\n  }}\n}}\n")
    r = procs.run(lab.ns("inet"), ["nft", "-f", "-"], input=rules.encode())
    if r.returncode != 0:
        raise RuntimeError(f"nft loss rule: {r.stderr.decode()}")


def slow_uplink(lab: Lab, on: bool) -> None:
    """A tbf shaper (SLOW, 10 ms of queue) on inet's link to the gateway, or none."""
    lab.exec("inet", ["tc", "qdisc", "del", "dev", "eth1", "root"])
    if on:
        _ok(lab.exec("inet", ["tc", "qdisc", "add", "dev", "eth1", "root", "tbf", "rate", SLOW, "burst", "64kb",
                              "latency", "10ms"]))


def measure(lab: Lab, target: str, seconds: int, repeat: int, say) -> dict:
    runs = []
    for i in range(repeat):
        idle = ping(lab, target, 2.0)
        mbit, busy = loaded(lab, target, seconds)
        loss(lab, 2)
        try:
            lossy_mbit, lossy_busy = loaded(lab, target, seconds)
        finally:
            loss(lab, None)
        # Cubic fills whatever queue the path has: where that queue is shows in the ping.
        slow_uplink(lab, True)
        try:
            slow_mbit, slow_busy = loaded(lab, target, seconds, "-C", "cubic")
        finally:
            slow_uplink(lab, False)
        run = {"mbit": mbit, "idle_rtt": _median(idle), "loaded_rtt": _median(busy),
               "loss_mbit": lossy_mbit, "loss_loaded_rtt": _median(lossy_busy),
               "loss_loaded_rtt_p95": _pct(lossy_busy, 95), "loaded_rtt_p95": _pct(busy, 95),
               "slow_mbit": slow_mbit, "slow_loaded_rtt": _median(slow_busy)}
        say("    run %d: %s" % (i + 1, ", ".join(f"{k} {v:.2f}" for k, v in run.items())))
        runs.append(run)
    return {k: [r[k] for r in runs] for k in runs[0]}


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def _pct(xs: list[float], p: int) -> float:
    if not xs:
        return float("nan")
    s = sorted(xs)
    return s[min(len(s) - 1, int(len(s) * p / 100))]


# ---- the other tunnels ---------------------------------------------------------------------

def wg_dev(side: str) -> str:
    # wireguard-go's control socket is /var/run/wireguard/NAME.sock, one file system for every
    # namespace: each side (and each lab) needs its own interface name.
    return f"{prefix()}wg{side[0]}"


def wireguard_up(lab: Lab) -> None:
    keys = {}
    for side in ("client", "gateway"):
        priv = subprocess.run(["wg", "genkey"], capture_output=True, check=True).stdout.strip()
        pub = subprocess.run(["wg", "pubkey"], input=priv, capture_output=True, check=True).stdout.strip()
        path = lab.root / f"wg-{side}.key"
        path.write_bytes(priv + b"\n")
        os.chmod(path, 0o600)
        keys[side] = (path, pub.decode())
    for side, addr in (("gateway", "10.9.0.2/24"), ("client", "10.9.0.1/24")):
        dev = wg_dev(side)
        # -f: in the foreground, so the lab holds its PID and stops it.
        p = lab.start(side, ["wireguard-go", "-f", dev], name=f"wireguard-{side}", env={"LOG_LEVEL": "error"})
        procs.wait_until(lambda: lab.exec(side, ["wg", "show", dev]).returncode == 0 or not p.alive(),
                         timeout=10, what=f"wireguard-go's {dev} on {side}")
        if not p.alive():
            raise RuntimeError("wireguard-go exited: " + open(p.log).read()[-800:])
        _ok(lab.exec(side, ["ip", "addr", "add", addr, "dev", dev]))
        _ok(lab.exec(side, ["ip", "link", "set", dev, "up"]))
    gw_key, gw_pub = keys["gateway"]
    cl_key, cl_pub = keys["client"]
    _ok(lab.exec("gateway", ["wg", "set", wg_dev("gateway"), "private-key", str(gw_key), "listen-port", str(WG_PORT),
                             "peer", cl_pub, "allowed-ips", "10.9.0.1/32"]))
    _ok(lab.exec("client", ["wg", "set", wg_dev("client"), "private-key", str(cl_key), "peer", gw_pub,
                            "allowed-ips", f"{WG_NET},192.168.1.0/24", "endpoint", f"{GW_PUBLIC}:{WG_PORT}"]))
    _ok(lab.exec("client", ["ip", "route", "add", "192.168.1.0/24", "dev", wg_dev("client")]))


def wireguard_down(lab: Lab) -> None:
    for side in ("client", "gateway"):
        if f"wireguard-{side}" in lab.procs:
            lab.stop(f"wireguard-{side}")


def _ok(r: subprocess.CompletedProcess) -> None:
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, r.args))}: {r.stderr.decode()}")


def openvpn_up(lab: Lab, proto: str) -> None:
    pki = lab.pki_dir
    common = ["--dev", "ovpn0", "--dev-type", "tun", "--ca", f"{pki}/ca.pem", "--tls-version-min", "1.3",
              # OpenVPN's own advice: let the kernel size the buffers.
              "--sndbuf", "0", "--rcvbuf", "0", "--verb", "3"]
    server = ["openvpn", *common, "--proto", "tcp-server" if proto == "tcp" else "udp", "--local", GW_PUBLIC,
              "--port", "1194", "--server", "10.8.0.0", "255.255.255.0", "--topology", "subnet",
              "--cert", f"{pki}/gateway.pem", "--key", f"{pki}/gateway.key", "--dh", "none",
              "--push", "route 192.168.1.0 255.255.255.0", "--txqueuelen", "1000"]
    if proto == "tcp":
        server.append("--tcp-nodelay")  # no Nagle on the carrying TCP
    lab.start("gateway", server, name="openvpn-server")
    procs.wait_listening(lab.procs["openvpn-server"], GW_PUBLIC, 1194, proto=proto)
    lab.start("client", ["openvpn", "--client", *common, "--proto", "tcp-client" if proto == "tcp" else "udp",
                         "--remote", GW_PUBLIC, "1194", "--cert", f"{pki}/alice.pem", "--key", f"{pki}/alice.key",
                         "--verify-x509-name", "gateway", "name", "--nobind"], name="openvpn-client")

    def routed() -> bool:
        if not lab.procs["openvpn-client"].alive():
            raise RuntimeError("openvpn client exited: " + open(lab.procs["openvpn-client"].log).read()[-800:])
        return "ovpn0" in lab.exec("client", ["ip", "route", "get", APP_IP]).stdout.decode()

    procs.wait_until(routed, timeout=20, what=f"OpenVPN ({proto}) to come up")


def openvpn_down(lab: Lab) -> None:
    for name in ("openvpn-client", "openvpn-server"):
        if name in lab.procs:
            lab.stop(name)


PATHS = ("plain", "ztna", "ztna-udp", "wireguard-go", "openvpn-udp", "openvpn-tcp")
UDP_PORT = 51820


class BenchScenario(AgentScenario):
    """The agent lab, its gateway with the UDP data channel's port open; ``udp`` turns it on at the agent."""

    udp = False

    def gateway_conf(self, lab: Lab) -> str:
        return super().gateway_conf(lab).replace("port = 443\n", f"port = 443\nudp_port = {UDP_PORT}\n", 1)

    def agent_conf(self, lab: Lab, host: str, ident: str):
        path = super().agent_conf(lab, host, ident)
        if self.udp:
            path.write_text(path.read_text().replace("[agent]\n", "[agent]\nudp = true\n", 1))
        return path


def udp_state(lab: Lab) -> str:
    r = lab.exec("client", procs.ztna_argv("agent", "status", "--state-dir", str(lab.root / "agent-client"), "--json"))
    try:
        return json.loads(r.stdout)["tunnel"]["udp"]["state"]
    except (ValueError, KeyError, TypeError):
        return "unknown"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--paths", default=",".join(PATHS), help=f"comma-separated, of {', '.join(PATHS)}")
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    paths = [p for p in a.paths.split(",") if p]
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    sc = BenchScenario()
    lab = Lab("bench-tunnel", sc.topology())
    results: dict[str, dict] = {}
    try:
        say("building the lab and starting agent, gateway, DNS and app (no captures)")
        lab.up()
        sc.start(lab)
        # The plain path needs routes the ZTNA lab does not have (the LAN is unreachable from outside).
        lab.exec("inet", ["ip", "route", "add", "192.168.1.0/24", "via", GW_PUBLIC])
        for net in ("198.51.100.0/24", VPN_NET, WG_NET):
            lab.exec("app", ["ip", "route", "add", net, "via", "192.168.1.1"])
        lab.start("app", ["iperf3", "-s", "-B", APP_IP], name="iperf3")
        procs.wait_listening(lab.procs["iperf3"], APP_IP, 5201)
        lease = lab.exec("client", ["dig", "+short", APP]).stdout.decode().strip()
        for name, target in (("plain", APP_IP), ("ztna", lease)):
            if name in paths:
                say(f"  {name} ...")
                results[name] = measure(lab, target, a.seconds, a.repeat, say)
        if "ztna-udp" in paths:
            lab.stop("agent-client")
            sc.udp = True
            sc.start_agent(lab, "client", "alice")
            lease = lab.exec("client", ["dig", "+short", APP]).stdout.decode().strip()
            lab.exec("client", ["ping", "-c", "3", "-i", "0.2", lease])  # the tunnel comes up on demand
            procs.wait_until(lambda: udp_state(lab) == "up", timeout=15, what="the agent's UDP path to come up")
            say("  ztna-udp ...")
            results["ztna-udp"] = measure(lab, lease, a.seconds, a.repeat, say)
            results["ztna-udp"]["udp_state_after"] = udp_state(lab)
        lab.stop("agent-client")  # the other tunnels get the client to itself
        if "wireguard-go" in paths:
            wireguard_up(lab)
            say("  wireguard-go ...")
            results["wireguard-go"] = measure(lab, APP_IP, a.seconds, a.repeat, say)
            wireguard_down(lab)
        for proto in ("udp", "tcp"):
            if f"openvpn-{proto}" in paths:
                openvpn_up(lab, proto)
                say(f"  openvpn-{proto} ...")
                results[f"openvpn-{proto}"] = measure(lab, APP_IP, a.seconds, a.repeat, say)
                openvpn_down(lab)
    finally:
        lab.down()
    if a.json:
        print(json.dumps({"seconds": a.seconds, "repeat": a.repeat, "results": results}, indent=2))
        return
    print()
    print(f"iperf3 client -> app, 1 stream, {a.seconds}s, median of {a.repeat} (min-max); RTT: median ping "
          f"every {PING_INTERVAL * 1000:.0f} ms; loss: 2 % both ways at inet. This machine: {os.cpu_count()} cores")
    cols = [("mbit", "clean Mbit/s", 0), ("idle_rtt", "idle RTT ms", 2), ("loaded_rtt", "loaded RTT ms", 2),
            ("loss_mbit", "2% loss Mbit/s", 0), ("loss_loaded_rtt", "loaded RTT at 2% ms", 2),
            ("loss_loaded_rtt_p95", "(p95)", 1), ("slow_mbit", f"{SLOW} uplink, Cubic: Mbit/s", 0),
            ("slow_loaded_rtt", "its loaded RTT ms", 1)]
    print("| path | " + " | ".join(c[1] for c in cols) + " |")
    print("|---" * (len(cols) + 1) + "|")
    for name in paths:
        r = results[name]
        cells = []
        for key, _, d in cols:
            xs = r[key]
            cells.append(f"{statistics.median(xs):,.{d}f} ({min(xs):,.{d}f}-{max(xs):,.{d}f})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
