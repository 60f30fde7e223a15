"""``fedmeta deploy run``: ``flwr run`` with an exit status that tells the truth.

Flower's ``flwr run`` exits 0 once the run is submitted and its streamed log ends, whether
the run completed or failed. This runs ``flwr run APP [CONNECTION] --stream ...``, passes
its output through, reads the run id it prints, asks ``flwr ls --run-id ID --format json``
for the run's final status and raises ``RunFailed`` (exit status 3, as a failed
``fedmeta run``) unless it is ``finished:completed``; a ``flwr`` command that fails is a
``FedmetaError`` (status 2).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TextIO

from ..errors import FedmetaError, RunFailed
from .federation import flower_command

STARTED = re.compile(r"Successfully started run (\d+)")
COMPLETED = "finished:completed"


def run_status(run_id: str, connection: str | None, wait_s: float = 60.0) -> tuple[str, str]:
    """The run's final status and its details, as ``flwr ls`` reports them."""
    command = [str(flower_command("flwr")), "ls", *([connection] if connection else []),
               "--run-id", run_id, "--format", "json"]
    deadline = time.monotonic() + wait_s
    while True:
        listed = subprocess.run(command, capture_output=True, text=True, timeout=120)
        try:
            run = json.loads(listed.stdout)["runs"][0]
        except (ValueError, KeyError, IndexError):
            raise FedmetaError(f"`{' '.join(command)}` did not list run {run_id} (status "
                               f"{listed.returncode}): {listed.stdout[-500:]}") from None
        if run["status"].startswith("finished") or time.monotonic() > deadline:
            return run["status"], run.get("status-details", "")
        time.sleep(1.0)


def run_app(app: Path, connection: str | None, flwr_args: list[str],
            out: TextIO = sys.stdout) -> str:
    """Run the app with ``flwr run`` and its log streamed to ``out``; return a line saying
    it completed, or raise ``RunFailed`` saying how it ended."""
    command = [str(flower_command("flwr")), "run", str(app),
               *([connection] if connection else []), "--stream", *flwr_args]
    run_id = None
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True) as flwr:
        for line in flwr.stdout:
            out.write(line)
            out.flush()
            started = STARTED.search(line)
            if started and run_id is None:
                run_id = started.group(1)
    if flwr.returncode != 0:
        raise FedmetaError(f"flwr run failed with status {flwr.returncode}")
    if run_id is None:
        raise FedmetaError("flwr run did not say which run it started (see its output above)")
    status, details = run_status(run_id, connection)
    if status != COMPLETED:
        raise RunFailed(f"run {run_id} ended {status}: {details}")
    return f"run {run_id} {status}"
