"""``flwr run . --stream`` typed as a Flower user types it on a fresh install (a new
``FLWR_HOME``; Flower 1.42's local simulation federation of 2 SuperNodes, no flags): the
ServerApp sizes the fleet to the 2 SuperNodes, says so, and the default config's 60 rounds
run to the end. About 1.5-2 minutes on 2 busy cores."""

from __future__ import annotations

from pathlib import Path

import pytest

from local_flwr import flwr_run


@pytest.mark.slow
def test_flwr_run_with_no_flags_runs_on_flowers_two_supernodes(tmp_path: Path) -> None:
    done = flwr_run(tmp_path / "flwr", timeout=600)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert ("federation.num_devices=auto: the federation has 2 SuperNodes, so num_devices=2, "
            "num_held_out=1 (was 4), min_train_devices=1 (was 2)") in out, out[-3000:]
    assert "round 60 train: 1 devices" in out and "round 60 eval: 1 devices" in out
    assert "fedmeta-maml on held-out devices" in out and "Traceback" not in out
