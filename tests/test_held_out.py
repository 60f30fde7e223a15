"""Rescoring a federated run's meta-model on its held-out devices (``fedmeta.held_out``):
with the run's episode count it is the run's last evaluation, with more a finer one."""

from __future__ import annotations

import json
import logging

import pytest

from fedmeta.app import client_app
from fedmeta.app.server_app import run_federation
from fedmeta.cli import main
from fedmeta.config import from_dict
from fedmeta.errors import ConfigError, DataError
from fedmeta.held_out import rescore_run, score_held_out
from fedmeta.results import table
from local_grid import LocalGrid, set_task_identity

CFG = from_dict({"train": {"seed": 4},
                 "federation": {"num_devices": 6, "num_held_out": 2, "rounds": 3,
                                "fraction_train": 1.0, "meta_batch": 2, "eval_every": 3,
                                "eval_episodes": 5}})


@pytest.fixture(scope="module")
def finished() -> tuple:
    set_task_identity()
    logging.getLogger("flwr").setLevel(logging.ERROR)
    rows: list = []
    checkpoint = run_federation(LocalGrid(client_app.app, 6), CFG, rows.append)
    return checkpoint, table(rows).query("source == 'eval'").iloc[-1]


def test_the_runs_episode_count_gives_its_last_evaluation(finished: tuple) -> None:
    checkpoint, last = finished
    scores = score_held_out(CFG, checkpoint, CFG.federation.eval_episodes)
    assert scores["episodes"] == last["episodes"] == 10
    for metric in ("pre_loss", "post_loss", "post_loss_ci95"):
        assert scores[metric] == pytest.approx(last[metric], rel=1e-9), metric


def test_more_episodes_narrow_the_interval(finished: tuple) -> None:
    checkpoint, last = finished
    scores = score_held_out(CFG, checkpoint, 80)
    assert scores["episodes"] == 160
    assert scores["post_loss_ci95"] < last["post_loss_ci95"]


def test_rescore_run_reads_a_run_folder(finished: tuple, tmp_path) -> None:
    checkpoint, last = finished
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    checkpoint.save(tmp_path / "checkpoint.pt")
    assert rescore_run(tmp_path, 5)["post_loss"] == pytest.approx(last["post_loss"], rel=1e-9)
    with pytest.raises(ConfigError, match="episodes"):
        rescore_run(tmp_path, 0)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="checkpoint.pt"):
        rescore_run(tmp_path, 5)
    with pytest.raises(DataError, match="config.json"):
        rescore_run(tmp_path / "missing", 5)


def test_rescore_command_prints_json(finished: tuple, tmp_path, capsys) -> None:
    checkpoint, last = finished
    (tmp_path / "config.json").write_text(json.dumps(CFG.to_dict()))
    checkpoint.save(tmp_path / "checkpoint.pt")
    assert main(["rescore", str(tmp_path), "--episodes", "5"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["post_loss"] == pytest.approx(last["post_loss"], rel=1e-9)
    assert main(["rescore", str(tmp_path / "missing")]) == 2
    assert "config.json" in capsys.readouterr().err
