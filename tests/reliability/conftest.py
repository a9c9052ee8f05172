"""Reliability suite: bad input, faults and re-runs on real local Spark + Delta (+ Horovod).

Every test registers what it tried in the session-wide ``reliability``
collector (bad-input cases, faults, re-runs, and input rows vs rows accounted
for); ``pytest_terminal_summary`` prints the totals at the end of the run, so
the closing note's numbers come from the run itself.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

import pytest


@dataclass
class Tally:
    """What the suite tried and whether every input row was accounted for."""
    bad_input: list[str] = field(default_factory=list)
    faults: list[str] = field(default_factory=list)
    reruns: list[str] = field(default_factory=list)
    rows_in: int = 0
    rows_accounted: int = 0
    losses: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def bad(self, *cases: str) -> None:
        with self._lock:
            self.bad_input.extend(cases)

    def fault(self, *cases: str) -> None:
        with self._lock:
            self.faults.extend(cases)

    def rerun(self, *cases: str) -> None:
        with self._lock:
            self.reruns.extend(cases)

    def rows(self, case: str, rows_in: int, rows_accounted: int) -> None:
        """Record a row balance; the test itself asserts it, this only sums it up."""
        with self._lock:
            self.rows_in += int(rows_in)
            self.rows_accounted += int(rows_accounted)
            if rows_in != rows_accounted:
                self.losses.append(f"{case}: {rows_in} in, {rows_accounted} accounted")


TALLY = Tally()

# Tests elsewhere in the repo that are reliability cases too (counted when
# they ran and passed in the same session).
EXTERNAL_FAULTS = {
    "tests/test_training_e2e.py::test_killed_training_resumes_from_checkpoint":
        "SIGKILL `courier train` (horovod/petastorm path) and resume from checkpoint",
}


@pytest.fixture(scope="session")
def reliability() -> Tally:
    return TALLY


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    t = TALLY
    passed = {r.nodeid for r in terminalreporter.stats.get("passed", [])}
    external = [what for nodeid, what in EXTERNAL_FAULTS.items() if nodeid in passed]
    if not (t.bad_input or t.faults or t.reruns or external):
        return  # no reliability test ran in this session
    faults = t.faults + external
    tw = terminalreporter
    tw.section("reliability summary", sep="=", bold=True)
    tw.line(f"bad-input cases tried: {len(t.bad_input)}")
    tw.line(f"faults injected:       {len(faults)}")
    tw.line(f"re-runs checked:       {len(t.reruns)}")
    lost = t.rows_in - t.rows_accounted
    verdict = "no row lost" if not t.losses else f"ROWS LOST: {'; '.join(t.losses)}"
    tw.line(f"input rows accounted:  {t.rows_accounted}/{t.rows_in} -> {verdict}"
            + ("" if not t.losses else f" ({lost} missing)"))
    for title, cases in (("bad input", t.bad_input), ("faults", faults), ("re-runs", t.reruns)):
        tw.line(f"  {title}: " + (", ".join(cases) if cases else "none"))
