"""benchmarks/fleet_scale.py's bookkeeping: which round a worker's timed call belongs to,
which run of several is reported, and a results table whose rows all have its columns
(rows recorded before and after the reference timed between rounds, and failed ones)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import fleet_scale  # noqa: E402  (benchmarks/ is not a package)

OLD = {"task": "sinusoid", "devices": 100, "per_round": 10, "ray_workers": 2, "startup_s": 12.7,
       "round1_s": 0.4, "round_s": 0.41, "meta_per_device_ms": 31.8, "overhead_share": 0.58,
       "peak_rss_mb": 1954.0, "driver_peak_rss_mb": 561.0, "worker_peak_rss_mb": 435.0,
       "wall_s": 17.0, "cpu_s_workers": 10.0, "cpu_s_others": 11.0, "started": "then"}


def new_row(share: float, outside: float) -> dict:
    return dict(OLD, devices=1000, per_round=100, dispatch="indexed", worker_queue=2,
                worker_batch=8, meta_batch=10, reference="between rounds",
                meta_per_device_ms=18.6, overhead_share=share, outside_per_device_ms=19.4,
                meta_drift=-0.03, overhead_share_outside=outside, co_run_per_device_ms=19.0,
                overhead_share_co_run=0.13, in_workers_per_device_ms=20.0,
                in_workers_cpu_per_device_ms=18.7, learning_share_in_workers=0.92,
                load=[0.2, 1.9], steal_share=0.0, pin_workers=True, worker_cores=[[0], [1]],
                started="now")


def test_a_call_counts_in_the_round_whose_training_record_follows_it(tmp_path: Path) -> None:
    train = {1: 10.0, 2: 11.0, 3: 12.5}
    (tmp_path / "1.txt").write_text("9.5 0.5 0.4\n10.5 0.25 0.2\n11.0 0.5 0.5\n12.0 0.75 0.7\n")
    (tmp_path / "2.txt").write_text("12.5 1.0 0.9\n13.0 1.0 1.0\n")  # the last: after round 3
    assert fleet_scale.learning_by_round(tmp_path, train, [2, 3]) == {
        2: pytest.approx((0.75, 0.7)), 3: pytest.approx((1.75, 1.6))}


def test_of_several_runs_the_median_share_is_reported_with_every_run() -> None:
    runs = [new_row(0.20, 0.10), new_row(0.05, 0.30), new_row(0.12, 0.02)]
    row = fleet_scale.median_run(runs)
    assert row["overhead_share"] == 0.12 and row["overhead_share_outside"] == 0.02
    assert row["overhead_runs"] == [0.20, 0.05, 0.12]
    assert row["outside_runs"] == [0.10, 0.30, 0.02]


def test_every_row_of_the_table_has_the_header_columns(tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fleet_scale, "RESULTS", tmp_path)
    failed = {"task": "sinusoid", "devices": 10000, "dispatch": "flower", "worker_queue": 1,
              "worker_batch": 1, "per_round": 1000, "error": "RayOutOfMemoryError",
              "started": "now"}
    new = fleet_scale.median_run([new_row(0.13, 0.08), new_row(0.10, 0.20)])
    fleet_scale.write([OLD, new, failed], "now")
    table = [line for line in (tmp_path / "fleet_scale.md").read_text().splitlines()
             if line.startswith("|")]
    columns = table[0].count("|")
    assert [line.count("|") for line in table] == [columns] * len(table)
    old_cells = [c.strip() for c in table[2].split("|")]
    new_cells = [c.strip() for c in table[3].split("|")]
    header = [c.strip() for c in table[0].split("|")]
    share, outside = header.index("overhead share"), header.index(
        "before/after: ms (drift), share")
    assert old_cells[share] == "" and old_cells[outside] == "31.8, 58%"
    assert new_cells[share] == "13% [13, 10]"
    assert new_cells[outside] == "19.4 (-3%), 8% [8, 20]"
    pinned = header.index("pinned")
    assert (old_cells[pinned], new_cells[pinned]) == ("no", "yes (0 / 1)")
    assert "failed: RayOutOfMemoryError" in table[4]
