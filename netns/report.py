"""Steps, their evidence, and the printed/JSON report of a scenario run.

A step's evidence is two things: the lines printed beside it (``evidence``) and
the structured items the HTML report draws its arrows from (``items``,
``netns.flow.Item``).  ``see``/``passed`` take both at once: a line and the
records (DNS messages, TCP segments, notes) that line is about.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click

from . import flow


@dataclass
class Step:
    """One documented step and what the captures show for it."""

    number: str
    text: str
    ok: bool = False
    evidence: list[str] = field(default_factory=list)
    items: list[flow.Item] = field(default_factory=list)
    # (row, column) when the step is one cell of a table (SPEC §4's record type x category).
    cell: tuple[str, str] | None = None

    def see(self, line: str, *records, label: str | None = None, frm: str = "", to: str = "") -> "Step":
        """Add an evidence line and the records it rests on (each becomes one arrow of the picture)."""
        self.evidence.append(line)
        return self.attach(*records, label=label, frm=frm, to=to)

    def attach(self, *records, label: str | None = None, frm: str = "", to: str = "") -> "Step":
        """Add records to the picture without a printed line (None, for a record not found, is skipped)."""
        self.items += [flow.item(r, label, frm=frm, to=to) for r in records if r is not None]
        return self

    def passed(self, line: str, *records, label: str | None = None, frm: str = "", to: str = "") -> "Step":
        self.ok = True
        return self.see(line, *records, label=label, frm=frm, to=to)


def render(scenario: str, steps: list[Step], *, color: bool = True) -> str:
    width = max((len(s.text) for s in steps), default=20)
    width = min(width, 70)
    out = [f"scenario {scenario}: {sum(s.ok for s in steps)}/{len(steps)} steps observed", ""]
    for s in steps:
        mark = "PASS" if s.ok else "FAIL"
        if color:
            mark = click.style(mark, fg="green" if s.ok else "red", bold=True)
        out.append(f" {s.number:>3}  {mark}  {s.text}")
        for e in s.evidence or ["(no evidence found in the captures)"]:
            out.append(f"            {e}")
    return "\n".join(out)


def topology_doc(topo) -> dict:
    """The hosts (in the topology's order) and their addresses, for the report's lifelines."""
    return {"hosts": [{"name": h.name, "addrs": [a for cidrs in h.addrs.values() for a in cidrs]} for h in topo.hosts.values()]}


def keep_pcaps(pcap_dir: Path, folder: Path) -> Path:
    """Keep a run's captures beside its report (hard links where possible), so the report outlives the lab.

    The next ``lab up`` lays the lab's pcap folder anew; these stay until the
    same scenario runs again.
    """
    import os
    import shutil

    dest = folder / "pcap"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for p in sorted(Path(pcap_dir).glob("*.pcap")):
        try:
            os.link(p, dest / p.name)
        except OSError:
            shutil.copy2(p, dest / p.name)
    return dest


def write_html(folder: Path) -> Path:
    """Draw ``report.html`` from ``report.json`` and the pcaps kept beside it (``ztna lab report``)."""
    from . import htmlreport

    doc = json.loads((folder / "report.json").read_text())
    pcaps = {p.name: p.stat().st_size for p in sorted((folder / "pcap").glob("*.pcap"))}
    out = folder / "report.html"
    out.write_text(htmlreport.render(doc, pcaps=pcaps))
    return out


def write(path: Path, scenario: str, steps: list[Step], extra: dict | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "scenario": scenario,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "ok": all(s.ok for s in steps),
        "steps": [asdict(s) for s in steps],
        **(extra or {}),
    }
    path.write_text(json.dumps(doc, indent=2) + "\n")
    return path
