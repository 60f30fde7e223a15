"""Front-end and back-end on Flower's deployment engine, on 127.0.0.1: ``fedmeta deploy
local`` starts a SuperLink and 2 SuperNodes (TLS, node authentication), ``fedmeta deploy
run`` runs 2 rounds of fedmeta-anil on them with ``federation.publish_dir`` set, and an
edge front-end (``fedmeta edge serve``, its own process) serves predictions adapted to its
own labelled examples while the federation publishes versions 0, 1 and 2. The front-end
serves before and after a swap, ends on version 2, and its adapted predictions equal
fedmeta's ANIL adaptation of the published checkpoint; every process the test started is
stopped by its own pid, also when it fails. About 2-4 minutes on 2 busy cores."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_edge_frontend import anil_predictions, get, post, sinusoid, start_frontend

from fedmeta.checkpoint import Checkpoint
from fedmeta.deploy import processes
from fedmeta.deploy.federation import Federation, down
from fedmeta.edge import versions

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "fedmeta-edge-test"


def run_config(publish: Path) -> str:
    return " ".join([
        'federation.algorithm="fedmeta-anil"', "train.seed=4", "federation.rounds=2",
        "federation.eval_every=1", "federation.meta_batch=2", "federation.eval_episodes=3",
        f'federation.publish_dir="{publish}"'])


@pytest.mark.slow
def test_frontend_swaps_to_the_federations_newer_meta_model(tmp_path: Path) -> None:
    folder, publish = (tmp_path / "federation").resolve(), (tmp_path / "models").resolve()
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"), "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    started: list[subprocess.Popen] = []  # ours, stopped by pid in `finally`
    flower_pids: list[int] = []
    try:
        up = subprocess.run([sys.executable, "-m", "fedmeta", "deploy", "local", "--nodes",
                             "2", "--dir", str(folder), "--connection", CONNECTION],
                            cwd=ROOT, env=env, capture_output=True, text=True, timeout=300,
                            check=False)
        assert up.returncode == 0, up.stdout + up.stderr
        federation = Federation.load(folder)
        flower_pids = [federation.superlink_pid, *federation.supernode_pids]
        frontend, url = start_frontend(publish, tmp_path / "frontend.log")
        started.append(frontend)
        run = subprocess.Popen([sys.executable, "-m", "fedmeta", "deploy", "run", CONNECTION,
                                "--", "--run-config", run_config(publish)], cwd=ROOT,
                               env={**env, processes.MARK: str(folder)},  # and its `flwr`
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               start_new_session=True)
        started.append(run)

        # (a) before the swap: the meta-model of round 0 (or 1), adapted to 10 own examples
        assert processes.wait_until(lambda: get(url + "/status")["version"] is not None, 300)
        x, y = sinusoid(10, seed=1)
        code, reply = post(url + "/examples", {"x": x.tolist(), "y": y.tolist()})
        assert code == 200 and reply["examples"] == 10, reply
        query = sinusoid(10, seed=2)[0]
        code, before = post(url + "/predict", {"x": query.tolist()})
        assert code == 200 and before["version"] < 2, before

        log, _ = run.communicate(timeout=600)
        assert run.returncode == 0, log[-3000:]
        assert "finished:completed" in log.splitlines()[-1], log[-3000:]
        assert "published the meta-model of round 2" in log, log[-3000:]

        # (b) it swapped to the newest version, re-adapted on its examples
        assert processes.wait_until(lambda: get(url + "/status")["version"] == 2, 120)
        status = get(url + "/status")
        swaps = [(s["version"], s["round"]) for s in status["swaps"]]
        assert swaps[-1] == (2, 2) and swaps[0][0] == before["version"], status
        assert [v for v, _ in swaps] == sorted({v for v, _ in swaps}), status
        assert status["swaps"][-1]["examples"] == 10 and status["error"] is None, status
        assert sorted(p.name for p in publish.iterdir()) == [
            "latest.json", "v000000", "v000001", "v000002"]
        code, after = post(url + "/predict", {"x": query.tolist()})
        assert code == 200 and after["version"] == 2, after

        # (c) equal to fedmeta's own (ANIL) adaptation of each published checkpoint
        for served in (before, after):
            ck = Checkpoint.load(publish / versions.version_name(served["version"])
                                 / versions.CHECKPOINT)
            assert ck.algorithm == "anil" and ck.model == "mlp"
            np.testing.assert_allclose(np.array(served["outputs"], np.float32),
                                       anil_predictions(ck, x, y, query), rtol=0, atol=1e-5)
        assert np.abs(np.array(after["outputs"]) - np.array(before["outputs"])).max() > 1e-6
    finally:
        # (d) everything started here stops by its own pid: ours, then the federation's
        # (SuperLink, SuperNodes and what they spawned, found by their mark)
        processes.stop([p.pid for p in started], grace=10)
        for proc in started:
            proc.wait(timeout=30)
        down(folder)
    assert not any(processes.running(p.pid) for p in started)
    assert not any(processes.running(pid) for pid in flower_pids)
    assert processes.marked(folder) == []
