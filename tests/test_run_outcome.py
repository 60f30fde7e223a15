"""A run without a training round that stepped the server, or without a final held-out
score, is a failure (``fedmeta.errors.RunFailed``) at every entry point: the ServerApp of
``flwr run`` raises it, ``fedmeta.simulate`` raises it after writing the outputs, and
``fedmeta run`` exits with status 3; its message counts the devices' problems by kind and
quotes the first of each. A config that could never run fails validation first (status 2)."""

from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd
import pytest
from flwr.app import Context, RecordDict

import fedmeta
import fedmeta.cli
from fedmeta.app import client_app, server_app
from fedmeta.app.outcome import DeviceReports, outcome_error
from fedmeta.config import from_dict
from fedmeta.errors import RunFailed
from fedmeta.results import Row
from local_grid import LocalGrid

TINY = {"train": {"seed": 3}, "faults": {"crash": 1.0},
        "federation": {"num_devices": 4, "num_held_out": 1, "rounds": 2, "eval_every": 2,
                       "meta_batch": 2, "eval_episodes": 3, "max_retries": 1},
        "simulation": {"num_cpus": 1, "ray_cpus": 2}}
# 2 rounds x 2 attempts (max_retries=1) x 2 devices sampled (min_train_devices): 8 crashes
SETS = [f"{s}.{k}={v}" for s, fields in TINY.items() for k, v in fields.items()]


@pytest.fixture(autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)


def row(source: str, status: str = "ok", episodes: int = 5, round_: int = 1) -> Row:
    return Row(round_, source, 1, 0, episodes, {}, 0, 0, status=status)


def test_a_run_with_a_step_and_a_final_score_succeeds() -> None:
    rows = [row("eval", round_=0), row("train", "skipped"), row("train"), row("eval")]
    assert outcome_error(rows, DeviceReports()) is None


@pytest.mark.parametrize("rows, says", [
    ([row("eval", round_=0), row("train", "retried"), row("train", "skipped"), row("eval")],
     "none of its 1 training rounds had a good reply to aggregate "
     "(federation.min_good_replies)"),
    ([row("eval", round_=0)], "no training round ran"),
    ([row("eval", round_=0), row("train"), row("eval", episodes=0, round_=2)],
     "no held-out device scored the meta-model at round 2"),
])
def test_no_server_step_or_no_final_score_is_a_failure(rows: list[Row], says: str) -> None:
    reports = DeviceReports()
    reports.add("crashed", "round 1, device 0", "Traceback (most recent call last):\n  ...\n"
                                                "RuntimeError: out of memory")
    reports.add("crashed", "round 1, device 2", "RuntimeError: again")
    reports.add("timed_out", "round 2 (train)", "devices [1] did not reply", 3)
    error = outcome_error(rows, reports)
    assert isinstance(error, RunFailed) and error.exit_code == 3
    assert str(error) == (f"the run failed: {says}; replies rejected or missing: 3 "
                          f"timed_out, 2 crashed; first timed_out: round 2 (train): devices "
                          f"[1] did not reply; first crashed: round 1, device 0: "
                          f"RuntimeError: out of memory")


def test_the_flwr_run_server_app_raises_when_every_device_crashes() -> None:
    cfg = from_dict(TINY)
    context = Context(run_id=1, node_id=1, node_config={}, state=RecordDict(),
                      run_config=cfg.to_flat())
    with pytest.raises(server_app.ServerAppFailed,
                       match=r"none of its 2 training rounds had a good reply.*"
                             r"8 crashed; first crashed: round 1, device \d: "
                             r".*injected fault: the device crashed"):
        server_app.main(LocalGrid(client_app.app, 4), context)


@pytest.mark.slow  # a Ray run (~50 s on a loaded 2-core host); the CLI test below runs simulate too
def test_simulate_raises_when_every_device_crashes_and_keeps_the_outputs(
        tmp_path: Path) -> None:
    with pytest.raises(RunFailed, match=r"the run failed: none of its 2 training rounds .*"
                                        r"8 crashed; first crashed: round 1, device \d"):
        fedmeta.simulate(TINY, tmp_path / "run", progress=False)
    frame = pd.read_csv(tmp_path / "run" / "results.csv")
    train = frame[frame["source"] == "train"]
    assert train["status"].tolist() == ["retried", "skipped"] * 2
    assert train["crashed"].sum() == 8 and train["bytes_up"].sum() == 0


def test_fedmeta_run_exits_3_when_every_device_crashes(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["run", "--no-progress", "--out", str(tmp_path / "run")]
    code = fedmeta.cli.main([*argv, *(a for s in SETS for a in ("--set", s))])
    err = capsys.readouterr().err
    assert code == 3, err
    assert err.startswith("fedmeta run: error: the run failed: none of its 2 training rounds")
    assert "8 crashed" in err and "injected fault: the device crashed" in err


def test_a_k_shot_of_a_billion_fails_validation_before_ray(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = fedmeta.cli.main(["run", "--set", "task.k_shot=1000000000", "--out",
                             str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert "task.k_shot=1000000000 is not allowed: expected at most 10,000" in err
    assert not (tmp_path / "run").exists()
