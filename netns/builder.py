"""Build and remove a topology's namespaces with pyroute2.

Every veth is created inside a lab namespace with its peer placed directly in
another lab namespace, so no interface ever exists in the root namespace.
Removal tolerates what is already gone, so it is safe after a failed build.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import subprocess

from pyroute2 import NetNS, netns

from .topology import Topology

log = logging.getLogger("ztna.lab")


class BuildError(RuntimeError):
    """The kernel refused part of the topology; the message names the part."""


def existing() -> set[str]:
    return set(netns.listnetns())


def sysctl(ns: str, key: str, value: str) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "sysctl", "-qw", f"{key}={value}"], check=True)


def build(topo: Topology) -> None:
    """Create every namespace, link, address and route of ``topo``."""
    topo.validate()
    clash = existing() & set(topo.namespaces())
    if clash:
        raise BuildError(
            f"namespaces already exist: {', '.join(sorted(clash))}; a lab is up. Run 'ztna lab down' first."
        )
    for ns in topo.namespaces():
        netns.create(ns)
        sysctl(ns, "net.ipv6.conf.all.disable_ipv6", "1")
        sysctl(ns, "net.ipv6.conf.default.disable_ipv6", "1")
        with NetNS(ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
    for l in topo.links:
        with NetNS(topo.ns(l.a)) as ipr:
            try:
                ipr.link("add", ifname=l.a_if, kind="veth", peer={"ifname": l.b_if, "net_ns_fd": topo.ns(l.b)})
            except Exception as exc:  # pyroute2 raises NetlinkError
                raise BuildError(f"veth {l.a}:{l.a_if} <-> {l.b}:{l.b_if}: {exc}") from exc
    for s in topo.switches:
        sw = topo.ns(s.name)
        with NetNS(sw) as ipr:
            ipr.link("add", ifname="br0", kind="bridge")
            br = ipr.link_lookup(ifname="br0")[0]
            ipr.link("set", index=br, state="up")
        for host, ifname in s.members:
            port = host[:15]
            with NetNS(topo.ns(host)) as ipr:
                ipr.link("add", ifname=ifname, kind="veth", peer={"ifname": port, "net_ns_fd": sw})
            with NetNS(sw) as ipr:
                idx = ipr.link_lookup(ifname=port)[0]
                ipr.link("set", index=idx, master=br, state="up")
    for h in topo.hosts.values():
        ns = topo.ns(h.name)
        if h.forward:
            sysctl(ns, "net.ipv4.ip_forward", "1")
        with NetNS(ns) as ipr:
            for ifname, cidrs in h.addrs.items():
                idx = ipr.link_lookup(ifname=ifname)[0]
                for c in cidrs:
                    itf = ipaddress.ip_interface(c)
                    ipr.addr("add", index=idx, address=str(itf.ip), prefixlen=itf.network.prefixlen)
                ipr.link("set", index=idx, state="up", txqlen=1000)
            for ifname in {i for _, i in [(hh, ii) for hh, ii in topo.endpoints() if hh == h.name]} - set(h.addrs):
                ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state="up")
            for dst, via, dev, metric in h.routes:
                kw: dict = {"dst": "0.0.0.0/0" if dst == "default" else dst}
                if via:
                    kw["gateway"] = via
                if dev:
                    kw["oif"] = ipr.link_lookup(ifname=dev)[0]
                if metric is not None:
                    kw["priority"] = metric
                try:
                    ipr.route("add", **kw)
                except Exception as exc:
                    raise BuildError(f"route on {h.name}: {dst} via {via or dev}: {exc}") from exc


def destroy(names: list[str]) -> list[str]:
    """Remove the given namespaces (their veths go with them); return those removed."""
    removed = []
    present = existing()
    for ns in names:
        if ns in present:
            try:
                netns.remove(ns)
                removed.append(ns)
            except OSError as exc:
                log.warning("could not remove namespace %s: %s", ns, exc)
        etc = f"/etc/netns/{ns}"
        if os.path.isdir(etc):
            for f in os.listdir(etc):
                os.unlink(os.path.join(etc, f))
            os.rmdir(etc)
    return removed


def stop_ns_processes(names: list[str], grace: float = 3.0) -> None:
    """Stop whatever still runs inside these lab namespaces (started there by the
    lab or by a person through ``ztna lab exec``): SIGTERM, then SIGKILL."""
    import signal
    import time

    for sig in (signal.SIGTERM, signal.SIGKILL):
        pids = [pid for ns in names for pid in ns_pids(ns)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(ns_pids(ns) for ns in names):
            time.sleep(0.05)


def ns_pids(ns: str) -> list[int]:
    """PIDs of processes living in a lab namespace (the ones this lab started)."""
    out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True)
    return [int(p) for p in out.stdout.split()] if out.returncode == 0 else []
