"""Throughput through the ZTNA tunnel, against the plain routed path and OpenVPN.

``python scripts/bench/tunnel_bench.py [--seconds 10] [--json]`` (as root; scripts/bench.sh tunnel)

One lab, the agent scenario's hosts; iperf3 from ``client`` to ``app``:
  plain     routed client -> inet -> gateway -> app, no tunnel (the ceiling)
  ztna      through the agent's TUN, the mTLS tunnel and the gateway's NAT
  openvpn   OpenVPN in TCP mode with mutual TLS (same certificates), same hosts
each with 1 stream and 4 parallel streams.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from netns import procs
from netns.lab import Lab
from netns.scenarios.agent import APP, APP_IP, GW_PUBLIC, AgentScenario

VPN_NET = "10.8.0.0/24"


def iperf(lab: Lab, target: str, streams: int, seconds: int) -> float:
    for attempt in (1, 2):
        time.sleep(1)  # iperf3's server serves one test at a time; let the last one finish
        r = lab.exec("client", ["iperf3", "-c", target, "-t", str(seconds), "-P", str(streams), "-J",
                                "--connect-timeout", "3000"], timeout=seconds + 30)
        doc = json.loads(r.stdout or b"{}")
        if "end" in doc and "error" not in doc:
            return doc["end"]["sum_received"]["bits_per_second"] / 1e9
    raise RuntimeError(f"iperf3 to {target} failed twice: {doc.get('error') or r.stderr.decode()}")


def openvpn_up(lab: Lab) -> None:
    pki = lab.pki_dir
    lab.start("gateway", ["openvpn", "--dev", "ovpn0", "--dev-type", "tun", "--proto", "tcp-server", "--local", GW_PUBLIC,
                          "--port", "1194", "--server", "10.8.0.0", "255.255.255.0", "--topology", "subnet",
                          "--ca", f"{pki}/ca.pem", "--cert", f"{pki}/gateway.pem", "--key", f"{pki}/gateway.key",
                          "--dh", "none", "--tls-version-min", "1.3", "--push", "route 192.168.1.0 255.255.255.0",
                          # OpenVPN's own advice for TCP mode: no Nagle, and let the kernel size the buffers.
                          "--tcp-nodelay", "--sndbuf", "0", "--rcvbuf", "0", "--txqueuelen", "1000",
                          "--verb", "3"], name="openvpn-server")
    procs.wait_listening(lab.procs["openvpn-server"], GW_PUBLIC, 1194)
    lab.start("client", ["openvpn", "--client", "--dev", "ovpn0", "--dev-type", "tun", "--proto", "tcp-client",
                         "--remote", GW_PUBLIC, "1194", "--ca", f"{pki}/ca.pem", "--cert", f"{pki}/alice.pem",
                         "--key", f"{pki}/alice.key", "--verify-x509-name", "gateway", "name", "--tls-version-min", "1.3",
                         "--nobind", "--sndbuf", "0", "--rcvbuf", "0", "--verb", "3"], name="openvpn-client")

    def routed() -> bool:
        if not lab.procs["openvpn-client"].alive():
            raise RuntimeError("openvpn client exited: " + open(lab.procs["openvpn-client"].log).read()[-800:])
        return "ovpn0" in lab.exec("client", ["ip", "route", "get", APP_IP]).stdout.decode()

    procs.wait_until(routed, timeout=20, what="OpenVPN to come up")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    a = ap.parse_args()
    say = (lambda s: print(s, file=sys.stderr, flush=True)) if a.json else (lambda s: print(s, flush=True))
    sc = AgentScenario()
    lab = Lab("bench-tunnel", sc.topology())
    results: dict[str, dict[int, float]] = {}
    try:
        say("building the lab and starting agent, gateway, DNS and app")
        lab.up()
        sc.start(lab)
        # The plain path needs routes the ZTNA lab does not have (the LAN is unreachable from outside).
        lab.exec("inet", ["ip", "route", "add", "192.168.1.0/24", "via", GW_PUBLIC])
        for net in ("198.51.100.0/24", VPN_NET):
            lab.exec("app", ["ip", "route", "add", net, "via", "192.168.1.1"])
        lab.start("app", ["iperf3", "-s", "-B", APP_IP], name="iperf3")
        procs.wait_listening(lab.procs["iperf3"], APP_IP, 5201)
        lease = lab.exec("client", ["dig", "+short", APP]).stdout.decode().strip()
        paths = [("plain", APP_IP), ("ztna", lease)]
        for name, target in paths:
            for streams in (1, 4):
                say(f"  {name:<8} {streams} stream(s), {a.seconds}s ...")
                results.setdefault(name, {})[streams] = iperf(lab, target, streams, a.seconds)
        lab.stop("agent-client")  # OpenVPN gets the client to itself
        openvpn_up(lab)
        for streams in (1, 4):
            say(f"  openvpn  {streams} stream(s), {a.seconds}s ...")
            results.setdefault("openvpn", {})[streams] = iperf(lab, APP_IP, streams, a.seconds)
    finally:
        lab.down()
    if a.json:
        print(json.dumps({"seconds": a.seconds, "gbit_per_s": results}, indent=2))
        return
    print()
    print(f"iperf3 client -> app, {a.seconds}s per run, Gbit/s (this machine: {os.cpu_count()} cores)")
    print(f"{'path':<10}{'1 stream':>10}{'4 streams':>11}   vs plain (1/4)   ztna vs this (1/4)")
    for name in ("plain", "ztna", "openvpn"):
        r = results[name]
        vs_plain = f"{r[1] / results['plain'][1]:.2f} / {r[4] / results['plain'][4]:.2f}"
        vs = f"{results['ztna'][1] / r[1]:.2f} / {results['ztna'][4] / r[4]:.2f}"
        print(f"{name:<10}{r[1]:>10.2f}{r[4]:>11.2f}   {vs_plain:>15}   {vs:>17}")


if __name__ == "__main__":
    main()
