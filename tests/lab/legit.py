"""A legitimate user's request loop beside a hostile probe, and the campaign's table.

Every hostile case (``tests/lab/test_hostile_*.py``) runs its probe inside
``with Legit(...) as user:`` and then asserts two things: the refusal it
expected, and ``user.assert_clean()`` (the loop ran at least once while the
probe ran and never failed).  ``record`` keeps one row per case;
``tests/lab/conftest.py`` prints the rows as a table at the end of the run.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

ROWS: list[dict] = []


@dataclass
class Attempt:
    ok: bool
    detail: str
    seconds: float


class Legit:
    """Run ``argv`` in lab ``host`` again and again on a thread until the block ends.

    ``check(rc, stdout)`` says whether one attempt succeeded (default: exit 0).
    The loop stops at the end of the ``with`` block, after the attempt in flight.
    """

    def __init__(self, lab, host: str, argv: list[str], *, check=None, interval: float = 0.2,
                 timeout: float = 15.0, min_attempts: int = 1):
        self.lab, self.host, self.argv = lab, host, argv
        self.check = check or (lambda rc, out: rc == 0)
        self.interval, self.timeout, self.min_attempts = interval, timeout, min_attempts
        self.attempts: list[Attempt] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True, name=f"legit-{host}")

    def _once(self) -> None:
        t0 = time.monotonic()
        try:
            r = self.lab.exec(self.host, self.argv, timeout=self.timeout)
            out = r.stdout.decode(errors="replace")
            ok = bool(self.check(r.returncode, out))
            detail = "" if ok else f"rc={r.returncode} out={out[-200:]!r} err={r.stderr.decode(errors='replace')[-200:]!r}"
        except Exception as exc:  # a hung or failed attempt is a failure of the legitimate user
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.attempts.append(Attempt(ok, detail, time.monotonic() - t0))

    def _loop(self) -> None:
        while not self._stop.is_set() or len(self.attempts) < self.min_attempts:
            self._once()
            self._stop.wait(self.interval)

    def __enter__(self) -> "Legit":
        self._once()  # the user is served before the probe starts, or the case means nothing
        if not self.attempts[-1].ok:
            raise AssertionError(f"the legitimate user fails before any probe: {self.attempts[-1].detail}")
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)

    @property
    def failures(self) -> list[Attempt]:
        return [a for a in self.attempts if not a.ok]

    def assert_clean(self) -> None:
        assert len(self.attempts) >= 2, "the legitimate loop did not run beside the probe"
        bad = self.failures
        assert not bad, f"{len(bad)} of {len(self.attempts)} legitimate requests failed: {bad[0].detail}"


def record(case: str, attempts: int, result: str, user: Legit) -> None:
    """One row of the campaign's table: the case, how many hostile attempts, what they got."""
    ROWS.append({"case": case, "attempts": attempts, "result": result,
                 "legit": f"{len(user.failures)}/{len(user.attempts)}"})


def table() -> str:
    if not ROWS:
        return ""
    cols = ("case", "attempts", "result", "legit")
    heads = {"case": "case", "attempts": "attempts", "result": "result", "legit": "legit failures/requests"}
    width = {c: max(len(heads[c]), *(len(str(r[c])) for r in ROWS)) for c in cols}
    line = lambda r: " | ".join(str(r[c]).ljust(width[c]) for c in cols)  # noqa: E731
    return "\n".join([line(heads), "-+-".join("-" * width[c] for c in cols), *map(line, ROWS)])
