"""simulations/precision_study.py: its statistics against a reference written here, and the
quick study end to end on the real Omniglot data (resumed, and refused under another
protocol)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "simulations"))
import precision_study  # noqa: E402


def _record(algorithm: str, episodes: int, seed: int, precision: str,
            acc: dict[str, list[float]], train_s: float) -> dict:
    return {"run": {"algorithm": algorithm, "episodes": episodes, "seed": seed,
                    "precision": precision}, "train_s": train_s, "post_acc": acc}


def test_costs_are_paired_by_seed_and_by_episode() -> None:
    rng = np.random.default_rng(0)
    records, own, cross = [], {}, {}
    for seed in range(4):
        for precision in precision_study.PRECISIONS:
            acc = {p: rng.uniform(0.5, 1.0, 30).round(3).tolist()
                   for p in precision_study.PRECISIONS}
            own[(seed, precision)] = np.mean(acc[precision])
            cross[seed] = acc if precision == "float32" else cross.get(seed)
            records.append(_record("fomaml", 1200, seed, precision, acc,
                                   10.0 if precision == "float32" else 4.0 + seed))
    records.append(_record("fomaml", 1200, 9, "float32", cross[0], 1.0))  # its pair missing
    [entry] = precision_study.summarize(records)
    assert entry["seeds"] == [0, 1, 2, 3]  # seed 9 has no bfloat16 run: left out
    diffs = np.array([own[(s, "bfloat16")] - own[(s, "float32")] for s in range(4)])
    half = stats.t.ppf(0.975, 3) * diffs.std(ddof=1) / 2
    assert entry["training_cost"][0] == pytest.approx(diffs.mean())
    assert entry["training_cost"][1] == pytest.approx(half)
    per_episode = np.concatenate([np.subtract(cross[s]["bfloat16"], cross[s]["float32"])
                                  for s in range(4)])
    assert entry["evaluation_cost"][0] == pytest.approx(per_episode.mean())
    assert entry["evaluation_cost"][1] == pytest.approx(
        1.96 * per_episode.std(ddof=1) / math.sqrt(120))
    assert entry["train_speed"] == pytest.approx(np.median([10 / (4 + s) for s in range(4)]))


def test_quick_study_end_to_end(omniglot_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "study"
    args = ["--quick", "--seeds", "0", "--test-episodes", "10", "--data-dir",
            str(omniglot_dir), "--out", str(out)]
    precision_study.main(args)
    report = json.loads((out / "precision_study.json").read_text())
    assert [(e["algorithm"], e["episodes"]) for e in report["entries"]] == [
        ("fomaml", 320), ("fomaml", 80), ("protonet", 80)]
    jobs = sorted(p.name for p in (out / "jobs").iterdir())
    assert len(jobs) == 6 and all((out / "jobs" / j / "job.json").is_file() for j in jobs)
    for job in jobs:
        record = json.loads((out / "jobs" / job / "job.json").read_text())
        assert set(record["post_acc"]) == {"float32", "bfloat16"}
        assert all(len(v) == 10 for v in record["post_acc"].values())
    assert not list(out.rglob("*.pt"))  # no checkpoints kept
    assert (out / "precision_study.png").stat().st_size > 0
    assert "| first-order MAML | 320 | 1 |" in (out / "precision_study.md").read_text()
    before = {j: (out / "jobs" / j / "job.json").read_bytes() for j in jobs}
    precision_study.main(args)  # resumed: nothing trained again
    assert {j: (out / "jobs" / j / "job.json").read_bytes() for j in jobs} == before
    with pytest.raises(SystemExit, match="another protocol"):
        precision_study.main([*args[:-4], "--test-episodes", "12", *args[-4:]])
