"""What the roaming stub costs: sequential query latency through the stub
against asking the same server directly, in the sealed `roaming` lab.

Run by scripts/bench/roaming.sh (root).  Bounded: N queries per path.
"""

from __future__ import annotations

import sys
import time

from netns.lab import Lab
from netns.scenarios import roaming as R

N = int(sys.argv[1]) if len(sys.argv) > 1 else 300

PROBE = r"""
import sys, time, statistics
from ztna.dnswire import ask
server, name, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ts = []
for i in range(n):
    t0 = time.perf_counter()
    ask(server, name, "A", timeout=2, tries=1)
    ts.append((time.perf_counter() - t0) * 1000)
ts.sort()
print(f"{statistics.median(ts):.3f} {ts[int(len(ts) * 0.95)]:.3f}")
"""


def main() -> None:
    sc = R.Roaming()
    lab = Lab("roaming-bench", sc.topology())
    lab.up()
    try:
        sc.start(lab)
        R.start_client(lab, sc.conf)
        rows = []
        for label, server, name in [
            ("internal, through the stub", "127.0.0.1", R.INTRANET),
            ("internal, LAN server directly", R.LAN_DNS, R.INTRANET),
            ("external, through the stub", "127.0.0.1", R.GOOD),
            ("external, cloud resolver directly", R.CLOUD[0], R.GOOD),
        ]:
            out = lab.exec("laptop", [sys.executable, "-c", PROBE, server, name, str(N)], timeout=120)
            med, p95 = out.stdout.decode().split()
            rows.append((label, float(med), float(p95)))
        print(f"{N} sequential A queries per path (ms), laptop namespace, {time.strftime('%Y-%m-%d')}")
        print(f"{'path':<36} {'median':>8} {'p95':>8}")
        for label, med, p95 in rows:
            print(f"{label:<36} {med:8.3f} {p95:8.3f}")
    finally:
        lab.down()


if __name__ == "__main__":
    main()
