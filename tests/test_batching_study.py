"""simulations/batching_study.py: its statistics against a reference written here, and the
quick study end to end on the real Omniglot data (resumed, and refused under another
protocol)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
import batching_study  # noqa: E402


def _record(algorithm: str, seed: int, batched: bool, acc: list[float],
            train_s: float) -> dict:
    return {"run": {"algorithm": algorithm, "episodes": 1200, "seed": seed,
                    "batched": batched}, "train_s": train_s, "post_acc": acc}


def test_accuracy_is_paired_by_seed_and_times_are_loop_over_batched() -> None:
    rng = np.random.default_rng(0)
    records, mean = [], {}
    for seed in range(4):
        for batched in (False, True):
            acc = rng.uniform(0.5, 1.0, 30).round(3).tolist()
            mean[(seed, batched)] = np.mean(acc)
            records.append(_record("maml", seed, batched, acc,
                                   12.0 if batched else 6.0 + seed))
    records.append(_record("maml", 9, False, [1.0] * 30, 1.0))  # its pair missing
    [entry] = batching_study.summarize(records)
    assert entry["seeds"] == [0, 1, 2, 3]  # seed 9 has no batched run: left out
    diffs = np.array([mean[(s, True)] - mean[(s, False)] for s in range(4)])
    assert entry["difference"][0] == pytest.approx(diffs.mean())
    assert entry["difference"][1] == pytest.approx(stats.t.ppf(0.975, 3) * diffs.std(ddof=1)
                                                   / 2)
    assert entry["loop_over_batched"] == pytest.approx(np.median([(6 + s) / 12
                                                                  for s in range(4)]))
    assert entry["ratios"] == [round((6 + s) / 12, 2) for s in range(4)]


def test_quick_study_end_to_end(omniglot_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = ["--quick", "--seeds", "0", "--test-episodes", "10", "--threads", "1",
            "--data-dir", str(omniglot_dir), "--out", str(out)]
    batching_study.main(args)
    report = json.loads((out / "batching_study.json").read_text())
    assert [e["algorithm"] for e in report["entries"]] == ["maml", "fomaml"]
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert jobs == sorted(f"{a}-16ep-seed0-{p}" for a in ("maml", "fomaml")
                          for p in ("loop", "batched"))
    for job in jobs:
        record = json.loads((out / "jobs" / job / "job.json").read_text())
        assert len(record["post_acc"]) == 10 and record["threads"] == 1
    assert not list(out.rglob("*.pt"))  # no checkpoints kept
    assert "| MAML (second order) | 16 | 1 |" in (out / "batching_study.md").read_text()
    before = {j: (out / "jobs" / j / "job.json").read_bytes() for j in jobs}
    batching_study.main(args)  # resumed: nothing trained again
    assert {j: (out / "jobs" / j / "job.json").read_bytes() for j in jobs} == before
    with pytest.raises(SystemExit, match="another protocol"):
        batching_study.main([*args[:-4], "--test-episodes", "12", *args[-4:]])


def test_a_thread_count_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        batching_study.main(["--threads", "0"])
    assert exit_.value.code == 2
    assert "--threads 0: an integer >= 1" in capsys.readouterr().err


def test_quick_federated_study_end_to_end(omniglot_dir: Path, tmp_path: Path) -> None:
    """The federated study's machinery: each seed's two runs differ only in train.batched,
    the records hold the validation curve and the test scores, no run folder is kept."""
    import batching_study_federated as federated

    out = tmp_path / "federated"
    args = ["--quick", "--seeds", "0", "--test-episodes", "10", "--data-dir",
            str(omniglot_dir), "--out", str(out)]
    federated.main(args)
    report = json.loads((out / "batching_study_federated.json").read_text())
    [entry] = report["entries"]
    assert entry["algorithm"] == "fedmeta-fomaml" and entry["episodes"] == 80
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert jobs == ["fedmeta-fomaml-80ep-seed0-batched", "fedmeta-fomaml-80ep-seed0-loop"]
    for job in jobs:
        record = json.loads((out / "jobs" / job / "job.json").read_text())
        assert len(record["post_acc"]) == 10 and record["rounds"] == 4
        assert [point["round"] for point in record["curve"]] == [0, 4]
        assert sorted(p.name for p in (out / "jobs" / job).iterdir()) == ["job.json"]
    assert "| FedMeta first-order MAML (4 drawers a device) | 80 | 1 |" in (
        out / "batching_study_federated.md").read_text()
