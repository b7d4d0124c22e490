"""Steps, their evidence, and the printed/JSON report of a scenario run."""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import click


@dataclass
class Step:
    """One documented step and what the captures show for it."""

    number: str
    text: str
    ok: bool = False
    evidence: list[str] = field(default_factory=list)

    def see(self, line: str) -> "Step":
        self.evidence.append(line)
        return self

    def passed(self, line: str) -> "Step":
        self.ok = True
        return self.see(line)


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
