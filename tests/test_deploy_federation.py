"""A real federation on loopback: ``fedmeta deploy local`` starts ``flower-superlink`` (TLS
from a local CA, SuperNode authentication) and 2 ``flower-supernode`` processes with
registered keys, private and git-ignored; ``fedmeta deploy run fedmeta-test`` (``flwr run``)
runs 2 rounds of fedmeta-maml on it, sized to the 2 SuperNodes, and its results table
equals, byte for byte, the same config run by ``fedmeta.simulate``; a run config the
ServerApp refuses is one line and exit status 2. A SuperNode with an unregistered key, and
connections without TLS, are refused, and ``fedmeta deploy check`` explains the latter;
``fedmeta deploy down`` leaves no process behind. About 2-3 minutes on 2 busy cores."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from fedmeta.app.server_app import RESULTS_CSV
from fedmeta.deploy import processes
from fedmeta.deploy.federation import down
from fedmeta.deploy.node_keys import make_node_key

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
CONNECTION = "fedmeta-test"
CONFIG = {"train": {"seed": 4},
          "federation": {"num_devices": 2, "num_held_out": 1, "min_train_devices": 1,
                         "rounds": 2, "eval_every": 2, "meta_batch": 2, "eval_episodes": 3},
          "simulation": {"num_cpus": 1, "ray_cpus": 2}}
# federation.num_devices left at "auto": the ServerApp sizes the fleet to the 2 SuperNodes
# (1 held out, min_train_devices 1), which is CONFIG
RUN_CONFIG = " ".join(f"{section}.{key}={value}" for section in ("train", "federation")
                      for key, value in CONFIG[section].items()
                      if key not in ("num_devices", "num_held_out", "min_train_devices"))


@dataclass(frozen=True)
class Deployed:
    folder: Path
    env: dict[str, str]
    address: str
    ca_cert: Path
    supernode_pids: list[int]


def fedmeta_cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedmeta", *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def flwr(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(BIN / "flwr"), *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.fixture(scope="module")
def fed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployed]:
    """A SuperLink and 2 SuperNodes, with TLS and node authentication; always torn down."""
    tmp = tmp_path_factory.mktemp("deploy")
    folder = (tmp / "federation").resolve()
    env = {**os.environ, "FLWR_HOME": str(tmp / "flwr"), "OMP_NUM_THREADS": "1",
           "PATH": os.pathsep.join([str(BIN), os.environ["PATH"]]),
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    try:
        up = fedmeta_cli(env, "deploy", "local", "--nodes", "2", "--dir", str(folder),
                         "--connection", CONNECTION)
        assert up.returncode == 0, up.stdout + up.stderr
        assert "with TLS and SuperNode authentication; 2 SuperNodes online" in up.stdout
        assert f"run:  flwr run . {CONNECTION} --stream\n" in up.stdout
        state = json.loads((folder / "federation.json").read_text())
        yield Deployed(folder, env, state["address"], folder / "certs" / "ca.crt",
                       state["supernode_pids"])
    finally:
        down(folder)  # a no-op after test_down_leaves_no_process_behind, else the safety net


def online_nodes(fed: Deployed) -> list[dict]:
    listed = flwr(fed.env, "supernode", "list", CONNECTION, "--format", "json")
    assert listed.returncode == 0, listed.stdout + listed.stderr
    return [n for n in json.loads(listed.stdout)["nodes"] if n["status"] == "online"]


def logged_results(log: str, lines: int) -> str:
    """The ``lines`` lines of CSV that follow the ServerApp's ``results.csv:`` line."""
    rows = log.splitlines()
    start = next(i for i, row in enumerate(rows) if row.rstrip().endswith(RESULTS_CSV))
    return "\n".join(rows[start + 1:start + 1 + lines]) + "\n"


def test_flwr_run_on_the_deployed_federation_matches_the_simulation(fed: Deployed) -> None:
    """Through ``fedmeta deploy run`` (``flwr run . fedmeta-test --stream``, then the run's
    status from ``flwr ls``)."""
    import fedmeta

    run = subprocess.Popen([sys.executable, "-m", "fedmeta", "deploy", "run", CONNECTION,
                            "--", "--run-config", RUN_CONFIG], cwd=ROOT, env=fed.env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        simulated = fedmeta.simulate(CONFIG, progress=False)  # on Ray, meanwhile
        log, _ = run.communicate(timeout=400)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    assert run.returncode == 0, log[-3000:]
    assert "finished:completed" in log.splitlines()[-1], log[-3000:]
    assert "federation.num_devices=auto: the federation has 2 SuperNodes" in log, log[-3000:]
    expected = simulated.to_csv(index=False, lineterminator="\n")
    assert [(r, s) for r, s in simulated[["round", "source"]].itertuples(index=False)] == [
        (0, "eval"), (1, "train"), (2, "train"), (2, "eval")]
    # Tolerance: none. Same seeds, same sampling, replies ordered by partition: same bytes.
    assert logged_results(log, expected.count("\n")) == expected, log[-3000:]


def test_a_refused_run_is_one_line_and_a_failure(fed: Deployed) -> None:
    """``flwr run`` exits 0 for a failed run; ``fedmeta deploy run`` exits 3 and says so."""
    run = fedmeta_cli(fed.env, "deploy", "run", CONNECTION, "--", "--run-config",
                      "federation.num_devices=3 federation.num_held_out=1")
    assert run.returncode == 3, run.stdout[-3000:] + run.stderr
    assert "ended finished:failed" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    refused = [line for line in run.stdout.splitlines() if "fedmeta: " in line]
    assert refused and "federation.num_devices=3 is not allowed: expected the federation's " \
                       "size: it has 2 SuperNodes" in refused[0], run.stdout[-3000:]
    assert "Traceback" not in run.stdout, run.stdout[-3000:]


def supernode(fed: Deployed, folder: Path, *flags: str) -> subprocess.Popen:
    """A SuperNode that gives up at its first failed connection; its output to a file (its
    SuperExec child would hold a pipe open), marked so that teardown finds its children."""
    env = {**fed.env, processes.MARK: str(fed.folder), "FLWR_HOME": str(folder)}
    command = [str(BIN / "flower-supernode"), "--superlink", fed.address, *flags,
               "--max-retries", "0", "--port", str(processes.free_port()),
               "--node-config", "partition-id=0 num-partitions=2"]
    return processes.start(command, folder / "supernode.log", env)


def test_supernode_with_an_unregistered_key_is_refused(fed: Deployed, tmp_path: Path) -> None:
    key = tmp_path / "intruder"
    make_node_key(key)
    intruder = supernode(fed, tmp_path, "--root-certificates", str(fed.ca_cert),
                         "--auth-supernode-private-key", str(key))
    # Flower logs its exit code 305 but the process exits with status 1 (flwr_exit)
    assert intruder.wait(timeout=120) == 1
    out = processes.log_text(tmp_path / "supernode.log")
    assert "Failed to activate SuperNode" in out and "Exit Code: 305" in out, out
    assert len(online_nodes(fed)) == 2  # the registered two, and only them


def test_connections_without_tls_are_refused(fed: Deployed, tmp_path: Path) -> None:
    plain_node = supernode(fed, tmp_path, "--insecure")
    (tmp_path / "cli").mkdir()
    config = Path(fed.env["FLWR_HOME"]) / "config.toml"
    (tmp_path / "cli" / "config.toml").write_text(
        config.read_text() + f'\n[superlink.plain]\naddress = "{fed.address}"\ninsecure = true\n')
    listed = flwr({**fed.env, "FLWR_HOME": str(tmp_path / "cli")}, "supernode", "list", "plain")
    assert listed.returncode != 0, listed.stdout
    assert "Connection to the SuperLink is unavailable" in listed.stdout + listed.stderr
    assert plain_node.wait(timeout=120) != 0
    out = processes.log_text(tmp_path / "supernode.log")
    assert "Failed to initialize the connection to the SuperLink" in out, out


def test_secrets_are_private_and_hidden_from_git(fed: Deployed) -> None:
    assert (fed.folder / ".gitignore").read_text().splitlines()[-1] == "*"
    for key in ("certs/ca.key", "certs/server.key", "keys/node-0", "keys/node-1"):
        assert stat.S_IMODE(os.stat(fed.folder / key).st_mode) == 0o600, key


def test_check_explains_an_insecure_supernode_against_this_superlink(fed: Deployed) -> None:
    wrong = fedmeta_cli(fed.env, "deploy", "check", "--superlink", fed.address, "--insecure")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1, wrong.stderr
    assert "speaks TLS" in wrong.stderr and "pass --root-certificates" in wrong.stderr
    right = fedmeta_cli(fed.env, "deploy", "check", "--superlink", fed.address,
                        "--root-certificates", str(fed.ca_cert))
    assert right.returncode == 0 and "verifies against" in right.stdout, right.stderr


def test_a_second_federation_in_the_same_folder_is_refused(fed: Deployed) -> None:
    again = fedmeta_cli(fed.env, "deploy", "local", "--nodes", "2", "--dir", str(fed.folder))
    assert again.returncode == 2 and "already running" in again.stderr, again.stderr
    assert len(online_nodes(fed)) == 2


def test_down_leaves_no_process_behind(fed: Deployed) -> None:
    assert len(processes.marked(fed.folder)) >= 3 + 2  # SuperLink, SuperNodes, SuperExecs
    done = fedmeta_cli(fed.env, "deploy", "down", "--dir", str(fed.folder))
    assert done.returncode == 0, done.stderr
    assert processes.marked(fed.folder) == []
    assert not any(processes.running(p) for p in fed.supernode_pids)
    flower = tomllib.loads((Path(fed.env["FLWR_HOME"]) / "config.toml").read_text())
    assert CONNECTION not in flower["superlink"] and "local" in flower["superlink"]
