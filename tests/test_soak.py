"""The soak (benchmarks/soak.py), as a test: 1,000 devices, 200 rounds, 20% crash + 5% NaN
+ 5% malformed replies, the state saved every round, one SIGKILL and ``--resume`` in the
middle. It finishes, the resumed run's ``results.csv`` and final meta-parameters equal the
uninterrupted run's, and the process tree's memory grows by at most 10% from round 20 to
the end. Two Ray runs of 200 rounds: an hour or more on a 2-core host (docs/reliability.md
has the numbers)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "soak.py"


@pytest.mark.slow
@pytest.mark.timeout(3 * 3600)  # about an hour on 2 cores: more than the default 900 s
def test_a_long_faulty_run_killed_and_resumed_equals_the_straight_one_without_growing(
        tmp_path: Path) -> None:
    out = tmp_path / "soak.json"
    env = {**os.environ, "PYTHONPATH": str(SCRIPT.parents[1])}
    done = subprocess.run([sys.executable, str(SCRIPT), "--devices", "1000", "--rounds",
                           "200", "--kill-at", "100", "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=6 * 3600)
    assert out.exists(), done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert 100 <= result["killed_after_round"] < 200
    assert result["same_results_csv"] and result["same_final_params"]
    assert result["rss_growth"] <= 0.10, result
    assert done.returncode == 0
