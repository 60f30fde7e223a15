"""``flwr run`` on Flower's local simulation SuperLink, as a user runs it, in a private
``FLWR_HOME``; the SuperLink it starts is stopped afterwards, also when the run fails."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

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


def flwr_run(flwr_home: Path, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """``flwr run . --stream ARGS`` from the project root with ``flwr_home`` as a fresh
    ``FLWR_HOME`` (free ports, no runtime installs); its output captured as text."""
    flwr = Path(sys.executable).with_name("flwr")
    env = {**os.environ, "FLWR_HOME": str(flwr_home),
           "PATH": f"{flwr.parent}{os.pathsep}{os.environ['PATH']}",
           "FLWR_LOCAL_SUPERLINK_HTTP_API_PORT": str(free_port()),
           "FLWR_LOCAL_CONTROL_API_PORT": str(free_port()),
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    try:
        return subprocess.run([str(flwr), "run", ".", "--stream", *args], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=timeout)
    finally:
        stop_local_superlink(flwr_home)
