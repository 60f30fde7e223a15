"""Checkpoint and resume: the server state (meta-parameters, server optimizer, round, RNG
states, rows) is saved atomically after every round, and a run killed in the middle of a
round and resumed ends exactly like an uninterrupted one: in one process, and as a
``fedmeta run`` killed with SIGKILL on Ray."""

from __future__ import annotations

import logging
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import fedmeta.cli
from fedmeta.app import client_app
from fedmeta.app.server_app import run_federation
from fedmeta.checkpoint import Checkpoint
from fedmeta.config import from_dict
from fedmeta.results import table
from fedmeta.server_state import STATE_FILE, ServerState, rng_states, set_rng_states
from local_grid import LocalGrid

CONFIG = {"train": {"seed": 8}, "faults": {"crash": 0.2, "byzantine": 0.1},
          "meta": {"eval_steps": 2},
          "federation": {"num_devices": 6, "num_held_out": 1, "rounds": 6, "eval_every": 2,
                         "meta_batch": 3, "eval_episodes": 4, "fraction_train": 0.6}}


@pytest.fixture(autouse=True)
def quiet_flower() -> None:
    logging.getLogger("flwr").setLevel(logging.ERROR)


class Killed(Exception):
    """Stands for SIGKILL in the in-process test."""


def test_rng_states_round_trip_through_a_saved_state(tmp_path: Path) -> None:
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = ServerState(4, {"a": {"b": 1}}, {"w": torch.arange(3.0)}, {"x": 1}, rng_states(), [])
    expected = (random.random(), np.random.random(), torch.rand(1))
    state.save(tmp_path / STATE_FILE)
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]  # no temporary left
    loaded = ServerState.load(tmp_path / STATE_FILE)
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    set_rng_states(loaded.rng)
    assert (random.random(), np.random.random(), torch.rand(1)) == expected
    assert loaded.round == 4 and torch.equal(loaded.params["w"], torch.arange(3.0))


def test_a_run_killed_mid_round_and_resumed_equals_an_uninterrupted_one(
        tmp_path: Path) -> None:
    cfg = from_dict(CONFIG)
    whole: list = []
    straight = run_federation(LocalGrid(client_app.app, 6), cfg, whole.append,
                              state_path=tmp_path / "whole.pt").params

    def die_in_round_4(row) -> None:  # after round 4 trained, before it evaluated and saved
        if row.round == 4 and row.source == "train":
            raise Killed
    with pytest.raises(Killed):
        run_federation(LocalGrid(client_app.app, 6), cfg, die_in_round_4,
                       state_path=tmp_path / "killed.pt")
    state = ServerState.load(tmp_path / "killed.pt")
    assert state.round == 3 and state.optimizer["state"]  # Adam's moments were saved
    resumed_rows: list = []
    resumed = run_federation(LocalGrid(client_app.app, 6), from_dict(state.config),
                             resumed_rows.append, state_path=tmp_path / "killed.pt",
                             resume=state).params
    assert [r.round for r in resumed_rows][0] == 4
    for k in straight:
        assert torch.equal(straight[k], resumed[k])
    final = ServerState.load(tmp_path / "killed.pt")
    assert table(final.rows).to_csv() == table(whole).to_csv()
    assert final.round == 6 and table(whole)["crashed"].sum() > 0


def test_resume_errors_are_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert fedmeta.cli.main(["run", "--resume", str(tmp_path)]) == 2
    assert f"{tmp_path / STATE_FILE}: no server state to resume from" in capsys.readouterr().err
    (tmp_path / STATE_FILE).write_text("not a state")
    assert fedmeta.cli.main(["run", "--resume", str(tmp_path)]) == 2
    assert "not a readable server state" in capsys.readouterr().err
    assert fedmeta.cli.main(["run", "--resume", str(tmp_path), "--set",
                             "federation.rounds=9"]) == 2
    assert "--set='given with --resume'" in capsys.readouterr().err


TOML = """\
[train]
seed = 8

[faults]
crash = 0.2
byzantine = 0.1

[federation]
num_devices = 4
num_held_out = 1
rounds = 8
eval_every = 3
meta_batch = 4
eval_episodes = 5

[simulation]
num_cpus = 1
ray_cpus = 2
"""


def _fedmeta_run(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "fedmeta", "run", "--no-progress", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _finish(proc: subprocess.Popen) -> str:
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    return out


@pytest.mark.slow  # three Ray runs: about 1 minute idle, 2.5 minutes on a loaded 2-core host
def test_fedmeta_run_killed_with_sigkill_mid_round_resumes_to_the_same_end(
        tmp_path: Path) -> None:
    config = tmp_path / "run.toml"
    config.write_text(TOML)
    state = tmp_path / "killed" / STATE_FILE
    killed = _fedmeta_run("--config", str(config), "--out", str(tmp_path / "killed"))
    try:
        deadline = time.monotonic() + 240
        while not (state.exists() and ServerState.load(state).round >= 3):
            assert killed.poll() is None and time.monotonic() < deadline, "no state saved"
            time.sleep(0.05)
        os.killpg(killed.pid, signal.SIGKILL)  # the run and its Ray processes, mid round 4
    finally:
        if killed.poll() is None:
            os.killpg(killed.pid, signal.SIGKILL)
        killed.wait()
    saved = ServerState.load(state).round
    assert 3 <= saved < 8 and not (tmp_path / "killed" / "results.csv").exists()

    _finish(_fedmeta_run("--resume", str(tmp_path / "killed")))
    _finish(_fedmeta_run("--config", str(config), "--out", str(tmp_path / "whole")))
    resumed, whole = tmp_path / "killed", tmp_path / "whole"
    assert (resumed / "results.csv").read_bytes() == (whole / "results.csv").read_bytes()
    a, b = (Checkpoint.load(d / "checkpoint.pt").params for d in (resumed, whole))
    assert all(torch.equal(a[k], b[k]) for k in a)
    frame = pd.read_csv(whole / "results.csv")
    assert frame["round"].max() == 8 and frame["crashed"].sum() > 0


def _no_ray(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if a run would start Flower's simulation (and Ray)."""
    import fedmeta.app.simulation as simulation

    def started(*args, **kwargs) -> None:
        raise AssertionError("Ray was started")
    monkeypatch.setattr(simulation, "run_simulation", started)


def _finished_run(folder: Path) -> None:
    """A finished run's folder: every round's state saved, outputs written."""
    cfg = from_dict({**CONFIG, "federation": {**CONFIG["federation"], "rounds": 2}})
    run_federation(LocalGrid(client_app.app, 6), cfg, lambda row: None,
                   state_path=folder / STATE_FILE)
    (folder / "summary.json").write_text('{"wall_s": 1.0}\n')
    (folder / "results.csv").write_text("round\n")


def test_a_fresh_run_into_a_folder_holding_a_run_is_refused_before_ray_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_ray(monkeypatch)
    _finished_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    for folder in (tmp_path, tmp_path / "killed"):
        if folder.name == "killed":  # a killed run: only its server state
            folder.mkdir()
            (folder / STATE_FILE).write_bytes((tmp_path / STATE_FILE).read_bytes())
        assert fedmeta.cli.main(["run", "--out", str(folder)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--out='{folder}' is not allowed" in err
        assert f"--resume {folder}" in err and "--overwrite" in err and STATE_FILE in err
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before
    assert fedmeta.cli.main(["run", "--resume", str(tmp_path), "--overwrite"]) == 2
    assert "--overwrite='given with --resume'" in capsys.readouterr().err


def test_overwrite_deletes_only_the_old_runs_files(tmp_path: Path) -> None:
    from fedmeta.outputs import FILES, claim
    _finished_run(tmp_path)
    (tmp_path / "notes.txt").write_text("mine")
    claim(tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    assert not set(FILES) & {p.name for p in tmp_path.iterdir()}
    claim(tmp_path, overwrite=False)  # nothing of a run left: a fresh run may go there


def test_resuming_a_finished_run_says_so_and_changes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_ray(monkeypatch)
    _finished_run(tmp_path)
    before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in tmp_path.iterdir()}
    assert fedmeta.cli.main(["run", "--resume", str(tmp_path)]) == 0
    assert f"{tmp_path}: this run is finished (all 2 rounds" in capsys.readouterr().out
    assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns)
            for p in tmp_path.iterdir()} == before


def test_a_private_run_is_refused_resume_before_ray_starts(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    _no_ray(monkeypatch)
    private = from_dict({**CONFIG, "privacy": {"clipping": "fixed"}})
    ServerState(1, private.to_dict(), {"w": torch.zeros(1)}, {}, rng_states(), []).save(
        tmp_path / STATE_FILE)
    assert fedmeta.cli.main(["run", "--resume", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "privacy='on' is not allowed: expected off for --resume" \
        in err
    assert [p.name for p in tmp_path.iterdir()] == [STATE_FILE]
