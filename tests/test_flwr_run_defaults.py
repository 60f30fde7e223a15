"""``flwr run . --stream`` typed as a Flower user types it on a fresh install (a new
``FLWR_HOME``; Flower 1.42's local simulation federation of 2 SuperNodes, no flags): the
ServerApp sizes the fleet to the 2 SuperNodes, says so, and the default config's 60 rounds
run to the end. About 1.5-2 minutes on 2 busy cores."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from fedmeta.deploy.processes import free_port

ROOT = Path(__file__).resolve().parents[1]


def stop_local_superlink(flwr_home: Path) -> None:
    """End the SuperLink that ``flwr run`` started for this test (its command line names
    this test's ``FLWR_HOME``)."""
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "flower-superlink" in cmdline and str(flwr_home) in cmdline:
            os.kill(int(proc.name), signal.SIGTERM)


@pytest.mark.slow
def test_flwr_run_with_no_flags_runs_on_flowers_two_supernodes(tmp_path: Path) -> None:
    flwr = Path(sys.executable).with_name("flwr")
    env = {**os.environ, "FLWR_HOME": str(tmp_path / "flwr"),
           "PATH": f"{flwr.parent}{os.pathsep}{os.environ['PATH']}",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    try:
        done = subprocess.run([str(flwr), "run", ".", "--stream"], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=600)
    finally:
        stop_local_superlink(tmp_path / "flwr")
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert ("federation.num_devices=auto: the federation has 2 SuperNodes, so num_devices=2, "
            "num_held_out=1 (was 4), min_train_devices=1 (was 2)") in out, out[-3000:]
    assert "round 60 train: 1 devices" in out and "round 60 eval: 1 devices" in out
    assert "fedmeta-maml on held-out devices" in out and "Traceback" not in out
