"""``simulations/fedmeta_leaf.py`` at a tiny budget on FEMNIST- and Shakespeare-schema
fixtures: one table row per algorithm x dataset with finite accuracies, and a second run
into the same ``--out`` refused."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from hf_fixtures import femnist_writers, write_femnist, write_shakespeare

SCRIPT = Path(__file__).resolve().parents[1] / "simulations" / "fedmeta_leaf.py"
ALGORITHMS = ["fedavg", "fedavg-ft", "fedmeta-maml", "fedmeta-metasgd"]


@pytest.mark.slow  # 8 Ray runs (the 6.6M-parameter CNN, the 820k-parameter LSTM)
def test_fedmeta_leaf_writes_every_algorithm_and_dataset_and_refuses_a_used_out(
        tmp_path: Path) -> None:
    femnist = write_femnist(tmp_path / "femnist", femnist_writers(6, classes=3, per_class=5))
    shakespeare = write_shakespeare(tmp_path / "shakespeare",
                                    [(f"ROLE_{r}", 20 + 2 * r) for r in range(6)])
    out = tmp_path / "out"
    command = [sys.executable, str(SCRIPT), "--dataset", "both", "--femnist-data",
               str(femnist), "--shakespeare-data", str(shakespeare), "--rounds", "1",
               "--devices", "6", "--held-out", "0.34", "--eval-episodes", "2",
               "--ray-cpus", "2", "--out", str(out)]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf-cache"),
           "FEDMETA_CACHE": str(tmp_path / "fedmeta-cache"),
           "PYTHONPATH": os.pathsep.join([str(SCRIPT.parents[1]),
                                          os.environ.get("PYTHONPATH", "")])}
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=1800,
                         env=env)
    assert run.returncode == 0, run.stderr[-3000:]

    table = pd.read_csv(out / "table.csv")
    assert sorted(zip(table["dataset"], table["algorithm"])) == sorted(
        (d, a) for d in ("femnist", "shakespeare") for a in ALGORITHMS)
    for column in ("pre_acc", "post_acc", "pre_acc_ci95", "post_acc_ci95", "wall_s"):
        assert table[column].map(math.isfinite).all(), (column, table)
    assert ((table["pre_acc"].between(0, 1)) & (table["post_acc"].between(0, 1))).all()
    assert (table["rounds"] == 1).all()
    # FedAvg is scored without adaptation: its post-adaptation score is its pre-adaptation one
    plain = table[table["algorithm"] == "fedavg"]
    assert (plain["pre_acc"] == plain["post_acc"]).all()
    markdown = (out / "table.md").read_text()
    assert all(name in markdown for name in ("FedAvg(Meta)", "FedMeta(Meta-SGD)"))
    study = json.loads((out / "study.json").read_text())
    assert set(study["wall_s"]) == {f"{d}/{a}" for d in ("femnist", "shakespeare")
                                    for a in ALGORITHMS}
    config = study["configs"]["femnist/fedmeta-maml"]
    assert config["meta"]["inner_steps"] == 5 and config["federation"]["min_train_devices"] == 4
    assert (out / "accuracy.png").stat().st_size > 0
    for d in ("femnist", "shakespeare"):
        assert (out / d / "fedmeta-metasgd" / "summary.json").is_file()

    before = (out / "table.csv").read_bytes()
    again = subprocess.run(command, check=False, capture_output=True, text=True, timeout=300,
                           env=env)
    assert again.returncode != 0 and "--overwrite" in again.stderr
    assert (out / "table.csv").read_bytes() == before
