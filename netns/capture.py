"""tcpdump on every lab interface, and reading the captures back with scapy.

Captures start before the user's action and are stopped with SIGINT so tcpdump
flushes its buffer; ``-U`` writes each packet as it comes.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass
from pathlib import Path

from . import procs


@dataclass
class Capture:
    """A running tcpdump on one interface of one lab host."""

    host: str
    iface: str
    path: Path
    proc: procs.Proc


def start(ns: str, host: str, iface: str, pcap_dir: Path, log_dir: Path, snaplen: int = 0) -> Capture:
    pcap_dir.mkdir(parents=True, exist_ok=True)
    path = pcap_dir / f"{host}-{iface}.pcap"
    argv = ["tcpdump", "-i", iface, "-n", "-U", "-w", str(path), "-Z", "root", "--immediate-mode"]
    if snaplen:
        argv += ["-s", str(snaplen)]
    proc = procs.start(ns, argv, name=f"tcpdump-{host}-{iface}", log_dir=log_dir)
    return Capture(host, iface, path, proc)


def wait_ready(caps: list[Capture], timeout: float = 10.0) -> None:
    """Wait until every tcpdump says it is listening."""
    def ready() -> bool:
        for c in caps:
            if not c.proc.alive():
                raise RuntimeError(f"tcpdump on {c.host}:{c.iface} exited: {Path(c.proc.log).read_text()[-500:]}")
        return all("listening on" in Path(c.proc.log).read_text(errors="replace") for c in caps)

    procs.wait_until(ready, timeout=timeout, what="tcpdump to start")


def stop(caps: list[Capture]) -> None:
    for c in caps:
        procs.stop(c.proc, sig=signal.SIGINT)


def read(path: Path) -> list:
    """All packets of a capture (scapy objects); an empty list for an empty file.

    Each packet carries ``ztna_at`` = (file name, 1-based frame number), so the
    evidence read from it can say where it came from (``netns.flow``).
    """
    from scapy.utils import rdpcap  # scapy is slow to import; only analysis needs it

    path = Path(path)
    if not path.exists() or path.stat().st_size <= 24:
        return []
    pkts = list(rdpcap(str(path)))
    for i, p in enumerate(pkts, start=1):
        p.ztna_at = (path.name, i)
    return pkts
