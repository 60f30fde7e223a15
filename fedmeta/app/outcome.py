"""Whether a federated run succeeded, and what its devices reported when it did not.

A run fails (``RunFailed``) when no training round stepped the server (every round
``retried``/``skipped``, or none ran) or when its last held-out evaluation scored no
episode. The message gives what the devices reported: every rejected or missing reply
counted by kind, and the first problem of each kind, with its round and device.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from ..errors import RunFailed
from ..results import Row

MAX_CHARS = 300  # of a device's problem, in the one-line message


@dataclass
class DeviceReports:
    """The replies rejected or missed over a run, by kind (``crashed``, ``timed_out``,
    ``non_finite``, ``malformed``), and the first problem of each kind."""

    counts: Counter = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)

    def add(self, kind: str, where: str, problem: str, count: int = 1) -> None:
        """Count ``count`` replies of ``kind``; keep the first ``where: problem``."""
        if count > 0:
            self.counts[kind] += count
            lines = [line.strip() for line in problem.splitlines() if line.strip()]
            text = lines[-1] if lines else "?"  # a traceback's last line says what it was
            self.first.setdefault(kind, f"{where}: {text[:MAX_CHARS]}")

    def describe(self) -> str:
        """One line: the counts by kind, then the first problem of each kind."""
        if not self.counts:
            return "no device reported a problem"
        counts = ", ".join(f"{n} {kind}" for kind, n in self.counts.most_common())
        firsts = "; ".join(f"first {kind}: {self.first[kind]}"
                           for kind, _ in self.counts.most_common())
        return f"replies rejected or missing: {counts}; {firsts}"


def outcome_error(rows: list[Row], reports: DeviceReports) -> RunFailed | None:
    """The ``RunFailed`` of a run without a server step or a final held-out score."""
    trained = [r for r in rows if r.source == "train"]
    evaluated = [r for r in rows if r.source == "eval"]
    if not any(r.status == "ok" for r in trained):
        what = (f"none of its {len({r.round for r in trained})} training rounds had a good "
                f"reply to aggregate (federation.min_good_replies)") if trained else \
            "no training round ran"
    elif not evaluated or evaluated[-1].episodes == 0:
        last = evaluated[-1].round if evaluated else "the last"
        what = f"no held-out device scored the meta-model at round {last}"
    else:
        return None
    return RunFailed(f"the run failed: {what}; {reports.describe()}")
