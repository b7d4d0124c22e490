"""What a scenario is, and how ``ztna lab run`` drives one.

A scenario = topology + services + the user's action + the expected steps.
``run()`` builds, starts, captures, drives, verifies, reports and tears down,
also when any of those fails.
"""

from __future__ import annotations

import os
import signal
import time
import traceback
from dataclasses import asdict
from pathlib import Path
from typing import Callable

from .flow import Tunnel
from .lab import Lab
from .report import Step, keep_pcaps, render, topology_doc, write, write_html
from .topology import Topology


class Scenario:
    """Base class: subclasses fill in the four parts."""

    name: str = ""
    summary: str = ""
    # (host, iface) pairs captured besides every link endpoint (loopback, TUNs...).
    capture_extra: list[tuple[str, str]] = []
    # Commands a person may try once ``ztna lab up NAME`` has built it;
    # ``{ztna}`` is the running ztna command, ``{run}`` the lab's state directory.
    try_this: list[str] = []
    # For the report's picture: addresses (or networks) that belong to a lifeline
    # although no interface of the topology carries them (a TUN's addresses, leased
    # addresses standing for an application), and the tunnels to draw as bands.
    aliases: dict[str, str] = {}
    tunnels: list[Tunnel] = []
    # What the rows and the columns of the steps' cells (Step.cell) are, for the table's corner.
    cell_axes: tuple[str, str] = ("", "")

    def topology(self) -> Topology:
        raise NotImplementedError

    def start(self, lab: Lab) -> None:
        """Start the services (and write PKI and configs)."""
        raise NotImplementedError

    def drive(self, lab: Lab) -> dict:
        """Do what the user does; return what it printed, for verify()."""
        raise NotImplementedError

    def verify(self, lab: Lab, seen: dict) -> list[Step]:
        """Check every documented step against the captures and ``seen``."""
        raise NotImplementedError


class _Terminated(Exception):
    pass


_MAIN_PID = os.getpid()


def _on_term(signum, frame):
    # pyroute2 forks helper children that inherit this handler; only the
    # process that installed it may unwind into the teardown.
    if os.getpid() != _MAIN_PID:
        os._exit(1)
    raise _Terminated(f"signal {signum}")


def run(sc: Scenario, *, keep: bool = False, say: Callable[[str], None] = print, color: bool = True) -> tuple[bool, list[Step], Path | None]:
    """Run one scenario end to end; returns (all steps observed, steps, report path)."""
    global _MAIN_PID
    _MAIN_PID = os.getpid()
    old = signal.signal(signal.SIGTERM, _on_term)
    lab = Lab(sc.name, sc.topology())
    steps: list[Step] = []
    report: Path | None = None
    t0 = time.monotonic()

    def phase(text: str) -> None:
        say(f"[{time.monotonic() - t0:5.1f}s] {text}")

    phase(f"building lab for {sc.name}: {len(lab.topo.hosts)} hosts, namespaces {', '.join(lab.topo.namespaces())}")
    try:
        lab.up()  # on failure it removes what it made, and never another lab
    except BaseException:
        signal.signal(signal.SIGTERM, old)
        raise
    try:
        phase("starting services")
        sc.start(lab)
        phase("starting captures on every link")
        lab.capture_all(sc.capture_extra)
        phase("driving the user's action")
        seen = sc.drive(lab)
        time.sleep(0.3)  # let the last packets reach tcpdump
        lab.stop_captures()
        phase("checking every step against the captures")
        steps = sc.verify(lab, seen)
        folder = lab.report_dir / sc.name
        kept = keep_pcaps(lab.pcap_dir, folder)
        report = write(folder / "report.json", sc.name, steps, {
            "summary": sc.summary, "pcap_dir": str(lab.pcap_dir), "kept_pcaps": str(kept),
            "topology": topology_doc(lab.topo), "aliases": dict(sc.aliases),
            "tunnels": [asdict(t) for t in sc.tunnels], "cell_axes": list(sc.cell_axes), "seen": _jsonable(seen)})
        html = write_html(folder)
        say("")
        say(render(sc.name, steps, color=color))
        say("")
        say(f"report: {report}\n        {html}   captures: {kept}")
    except BaseException as exc:
        say(f"scenario {sc.name} failed to run: {exc}")
        say(traceback.format_exc())
        for p in lab.procs.values():
            if not p.alive():
                say(f"  {p.name} had exited; last lines of {p.log}:")
                say("    " + "\n    ".join(Path(p.log).read_text(errors="replace").splitlines()[-15:]))
        # Even after every step passed, a run that broke (say, writing its report) has failed.
        steps = steps + [Step("-", f"scenario ran to the end ({type(exc).__name__}: {exc})")]
        if isinstance(exc, KeyboardInterrupt):
            raise
    finally:
        if not keep:
            phase("tearing down")
            lab.down()
        signal.signal(signal.SIGTERM, old)
    ok = bool(steps) and all(s.ok for s in steps)
    return ok, steps, report


def _jsonable(seen: dict) -> dict:
    out = {}
    for k, v in seen.items():
        if isinstance(v, bytes):
            v = v.decode(errors="replace")
        out[k] = v if isinstance(v, (str, int, float, bool, list, dict, type(None))) else str(v)
    return out
