"""A VPN client stand-in for the lab: it "connects" by bringing up an interface
and writing its own resolv.conf, then keeps re-asserting that file, as some
VPN clients do (SPEC.md §6, conflict 1).  On SIGTERM it "disconnects": it puts
back the file it found and removes its interface.

    python -m netns.vpn_standin --resolv-conf PATH --server 192.168.1.53 \
        --search corp.example --iface vpn0 --addr 10.8.0.2/24 --every 0.3

The interface is a TUN device inside the namespace this runs in: it joins nothing.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--resolv-conf", required=True)
    ap.add_argument("--server", action="append", required=True)
    ap.add_argument("--search", default="")
    ap.add_argument("--iface", default="vpn0")
    ap.add_argument("--addr", default="10.8.0.2/24")
    ap.add_argument("--every", type=float, default=0.3, help="seconds between checks of the file")
    a = ap.parse_args()

    found = open(a.resolv_conf).read()
    mine = "# written by vpn-standin (connected)\n" + "".join(f"nameserver {s}\n" for s in a.server)
    if a.search:
        mine += f"search {a.search}\n"
    stop = False

    def on_term(signum, frame):
        nonlocal stop
        stop = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    # A TUN device, as a real VPN client would create; with no process behind it it carries nothing.
    subprocess.run(["ip", "tuntap", "add", "dev", a.iface, "mode", "tun"], check=True)
    subprocess.run(["ip", "addr", "add", a.addr, "dev", a.iface], check=True)
    subprocess.run(["ip", "link", "set", a.iface, "up"], check=True)
    print(f"vpn-standin: connected on {a.iface}, asserting nameserver {', '.join(a.server)}", flush=True)
    writes = 0
    while not stop:
        try:
            current = open(a.resolv_conf).read()
        except FileNotFoundError:
            current = ""
        if current != mine:
            tmp = a.resolv_conf + ".vpn-tmp"
            with open(tmp, "w") as f:
                f.write(mine)
            os.replace(tmp, a.resolv_conf)
            writes += 1
            print(f"vpn-standin: re-asserted resolv.conf (write {writes})", flush=True)
        time.sleep(a.every)
    # Disconnect: the file first, then the interface, as a VPN client's down script does.
    tmp = a.resolv_conf + ".vpn-tmp"
    with open(tmp, "w") as f:
        f.write(found)
    os.replace(tmp, a.resolv_conf)
    subprocess.run(["ip", "link", "del", a.iface], check=False)
    print(f"vpn-standin: disconnected after {writes} writes; put back the file it found", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
