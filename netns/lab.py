"""A running lab: its namespaces, processes, captures, PKI and state on disk.

The state file (``<run dir>/state.json``) lists every namespace and PID the lab
made, so ``ztna lab down`` from another shell removes exactly those.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from pathlib import Path

from ztna import files, pki

from . import builder, capture, procs
from .topology import Topology, prefix

log = logging.getLogger("ztna.lab")


def run_dir() -> Path:
    """Where a running lab keeps its state (ZTNA_LAB_DIR overrides, for parallel labs)."""
    return Path(os.environ.get("ZTNA_LAB_DIR", "/run/ztna-lab"))


class Lab:
    """One lab instance built from a topology."""

    def __init__(self, scenario: str, topo: Topology, root: Path | None = None):
        self.scenario = scenario
        self.topo = topo
        self.root = Path(root or run_dir())
        self.pki_dir = self.root / "pki"
        self.conf_dir = self.root / "conf"
        self.log_dir = self.root / "logs"
        self.pcap_dir = self.root / "pcap"
        self.report_dir = self.root / "reports"
        self.procs: dict[str, procs.Proc] = {}
        self.captures: list[capture.Capture] = []
        self._ca: pki.Issued | None = None

    # ---- lifecycle -------------------------------------------------------
    def up(self) -> None:
        """Build the namespaces; the run directory is laid anew (reports are kept).

        Refuses, touching nothing, when a lab is already up; if the build fails
        half-way, removes what it made and nothing else.
        """
        if (self.root / "state.json").exists():
            raise builder.BuildError(f"a lab is already up (state in {self.root}/state.json); run 'ztna lab down' first")
        clash = builder.existing() & set(self.topo.namespaces())
        if clash:
            raise builder.BuildError(f"namespaces already exist: {', '.join(sorted(clash))}; "
                                     "another lab is up: run 'ztna lab down' first")
        for d in (self.pki_dir, self.conf_dir, self.log_dir, self.pcap_dir):
            shutil.rmtree(d, ignore_errors=True)
            d.mkdir(parents=True)
        self.report_dir.mkdir(parents=True, exist_ok=True)
        self._save()
        try:
            builder.build(self.topo)
        except BaseException:
            self.down()
            raise

    @contextmanager
    def built(self):
        """``up`` for the block, ``down`` after it, whatever happens inside (the tests' fixtures)."""
        self.up()
        try:
            yield self
        finally:
            self.down()

    def down(self) -> list[str]:
        """Stop every process and capture, remove every namespace; never raises."""
        capture.stop(self.captures)
        for p in reversed(list(self.procs.values())):
            try:
                procs.stop(p)
            except Exception as exc:  # keep tearing down whatever happens
                log.warning("stopping %s (pid %s): %s", p.name, p.pid, exc)
        # Anything still inside our namespaces was started there, by the lab or by hand.
        builder.stop_ns_processes(self.topo.namespaces())
        removed = builder.destroy(self.topo.namespaces())
        try:
            (self.root / "state.json").unlink()
        except FileNotFoundError:
            pass
        return removed

    def _save(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        state = {
            "scenario": self.scenario,
            "prefix": prefix(),
            "namespaces": self.topo.namespaces(),
            "hosts": list(self.topo.hosts),
            "procs": [p.to_json() for p in self.procs.values()] + [c.proc.to_json() for c in self.captures],
        }
        files.write_atomic(self.root / "state.json", json.dumps(state, indent=2))

    # ---- hosts and processes ---------------------------------------------
    def ns(self, host: str) -> str:
        return self.topo.ns(host)

    def start(self, host: str, argv: list[str], *, name: str, env: dict | None = None) -> procs.Proc:
        if name in self.procs and self.procs[name].alive():
            raise RuntimeError(f"process {name} is already running (pid {self.procs[name].pid})")
        p = procs.start(self.ns(host), argv, name=name, log_dir=self.log_dir, env=env)
        self.procs[name] = p
        self._save()
        return p

    def stop(self, name: str, sig: int = 15) -> None:
        p = self.procs.pop(name)
        procs.stop(p, sig=sig)
        self._save()

    def exec(self, host: str, argv: list[str], *, timeout: float = 30, env: dict | None = None) -> subprocess.CompletedProcess:
        return procs.run(self.ns(host), argv, timeout=timeout, env=env)

    def set_resolvers(self, host: str, servers: list[str], search: list[str] | None = None) -> Path:
        """Give ``host`` its own /etc/resolv.conf (ip netns exec bind-mounts it)."""
        d = Path("/etc/netns") / self.ns(host)
        d.mkdir(parents=True, exist_ok=True)
        text = "".join(f"nameserver {s}\n" for s in servers)
        if search:
            text += "search " + " ".join(search) + "\n"
        (d / "resolv.conf").write_text(text)
        return d / "resolv.conf"

    def resolv_conf_path(self, host: str) -> Path:
        return Path("/etc/netns") / self.ns(host) / "resolv.conf"

    # ---- captures ----------------------------------------------------------
    def capture_all(self, extra: list[tuple[str, str]] = ()) -> list[capture.Capture]:
        """tcpdump on every link endpoint plus ``extra`` (host, iface) pairs."""
        targets = list(dict.fromkeys(list(self.topo.endpoints()) + list(extra)))
        for host, iface in targets:
            self.captures.append(capture.start(self.ns(host), host, iface, self.pcap_dir, self.log_dir))
        self._save()
        capture.wait_ready(self.captures)
        return self.captures

    def stop_captures(self) -> None:
        capture.stop(self.captures)

    def pcap(self, host: str, iface: str) -> Path:
        return self.pcap_dir / f"{host}-{iface}.pcap"

    # ---- PKI ----------------------------------------------------------------
    def ca(self) -> pki.Issued:
        if self._ca is None:
            self._ca = pki.new_ca("ztna lab CA", now=pki.utcnow())
            pki.save(self._ca, self.pki_dir, "ca")
        return self._ca

    def issue(self, name: str, kind: str, *, dns: list[str] = (), ips: list[str] = (), days: float = 30,
              ca: pki.Issued | None = None, now: dt.datetime | None = None) -> tuple[Path, Path]:
        leaf = pki.issue(ca or self.ca(), name, kind=kind, now=now or pki.utcnow(), dns_names=list(dns), ips=list(ips), days=days)
        return pki.save(leaf, self.pki_dir, name)

    def write_conf(self, name: str, text: str) -> Path:
        path = self.conf_dir / name
        path.write_text(text)
        return path


def down_from_state(root: Path | None = None) -> list[str]:
    """Tear down whatever lab the state file describes (used by ``ztna lab down``)."""
    root = Path(root or run_dir())
    state_path = root / "state.json"
    names: list[str] = []
    if state_path.exists():
        state = json.loads(state_path.read_text())
        for p in reversed(state.get("procs", [])):
            procs.stop(procs.Proc(p["name"], p["ns"], p["pid"], p["log"]))
        names = state.get("namespaces", [])
    # Namespaces carrying our prefix are the lab's even if the state was lost.
    names += [n for n in builder.existing() if n.startswith(prefix()) and n not in names]
    builder.stop_ns_processes(names)
    removed = builder.destroy(names)
    if state_path.exists():
        state_path.unlink()
    return removed


@contextmanager
def started(scenario, root: Path | None = None):
    """``scenario``'s lab built and its services started (``lab.sc`` is the scenario); always torn down."""
    lab = Lab(scenario.name, scenario.topology(), root=root)
    with lab.built():
        scenario.start(lab)
        lab.sc = scenario
        yield lab
