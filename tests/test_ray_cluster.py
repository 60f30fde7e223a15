"""A federated run across a real two-node Ray cluster (``simulation.ray_address``).

The test starts a head and a second node on 127.0.0.1 with ``ray start`` (1 CPU each, a
custom resource each, a private temp dir), runs the tiny sinusoid config on it with one CPU
per device, so that Flower's two device actors must sit one on each node, and checks from
Ray's actor table that both nodes ran devices, that ``results.csv`` equals a run on a local
Ray byte for byte, and that the cluster's processes (its own process groups) are gone after.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedmeta.errors import ConfigError, FedmetaError

ROOT = Path(__file__).resolve().parents[1]
RAY = Path(sys.executable).parent / "ray"
TINY = {"train": {"seed": 4},
        "federation": {"num_devices": 4, "num_held_out": 1, "rounds": 3, "eval_every": 2,
                       "meta_batch": 4, "eval_episodes": 5},
        "simulation": {"num_cpus": 1, "ray_cpus": 2}}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ray_processes(temp_dir: Path) -> list[str]:
    """Command lines of the processes that still use ``temp_dir`` (raylet, gcs_server...)."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True,
                         check=True).stdout
    return [line for line in out.splitlines() if str(temp_dir) in line and "ps -eo" not in line]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A head and a worker node on 127.0.0.1, each ``ray start --block`` in its own process
    group; both groups killed afterwards, however the test ended."""
    import ray

    temp_dir = Path("/tmp") / f"fm_ray_{os.getpid()}_{_free_port()}"  # short: socket paths
    port = _free_port()
    address = f"127.0.0.1:{port}"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "RAY_ADDRESS": ""}
    common = ["--block", "--num-cpus=1", "--object-store-memory=100000000",
              "--disable-usage-stats"]
    logs = [open(tmp_path / f"ray_{n}.log", "w") for n in ("head", "worker")]  # noqa: SIM115
    procs: list[subprocess.Popen] = []
    try:
        procs.append(subprocess.Popen(
            [str(RAY), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
             f"--temp-dir={temp_dir}", "--include-dashboard=false",
             '--resources={"fedmeta_node_a": 1}', *common],
            env=env, stdout=logs[0], stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_nodes(address, 1, procs)
        procs.append(subprocess.Popen(
            [str(RAY), "start", f"--address={address}", "--node-ip-address=127.0.0.1",
             '--resources={"fedmeta_node_b": 1}', *common],
            env=env, stdout=logs[1], stderr=subprocess.STDOUT, start_new_session=True))
        _wait_for_nodes(address, 2, procs)
        yield address
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in procs:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=60)
        for log in logs:
            log.close()
        deadline = time.monotonic() + 30
        while _ray_processes(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.5)
        left = _ray_processes(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)
        assert not left, f"Ray processes of the test cluster left: {left}"


def _wait_for_nodes(address: str, count: int, procs: list[subprocess.Popen]) -> None:
    """Poll until ``count`` alive nodes are in the cluster (one subprocess per poll, so this
    process never holds a Ray connection)."""
    probe = (f"import ray; ray.init(address={address!r}, logging_level='ERROR'); "
             "print(sum(n['Alive'] for n in ray.nodes()))")
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a ray start exited"
        got = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             env={**os.environ, "RAY_ADDRESS": ""}, check=False)
        if got.returncode == 0 and got.stdout.strip().splitlines()[-1:] == [str(count)]:
            return
        time.sleep(1)
    raise AssertionError(f"the Ray cluster at {address} did not reach {count} nodes")


def _nodes_that_ran_devices(address: str) -> set[str]:
    """The custom resource (``fedmeta_node_*``) of each node that hosted a device actor."""
    import ray
    from ray._private import state

    ray.init(address=address, logging_level="ERROR")
    try:
        names = {n["NodeID"]: next(r for r in n["Resources"] if r.startswith("fedmeta_node"))
                 for n in ray.nodes()}
        actors = state.actors().values()
        return {names[a["Address"]["NodeID"]] for a in actors
                if a["ActorClassName"].endswith(("ClientAppActor", "BatchedAppActor"))}
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_a_run_across_two_nodes_equals_a_local_run(cluster: str, tmp_path: Path) -> None:
    import fedmeta

    start = time.perf_counter()
    joined = {**TINY, "simulation": {"num_cpus": 1, "ray_address": cluster}}
    fedmeta.simulate(joined, tmp_path / "cluster", progress=False)
    cluster_s = time.perf_counter() - start
    assert _nodes_that_ran_devices(cluster) == {"fedmeta_node_a", "fedmeta_node_b"}
    fedmeta.simulate(TINY, tmp_path / "local", progress=False)
    assert ((tmp_path / "cluster" / "results.csv").read_bytes()
            == (tmp_path / "local" / "results.csv").read_bytes())
    print(f"run across the 2-node cluster: {cluster_s:.1f} s")


def test_an_unreachable_cluster_names_the_field(tmp_path: Path) -> None:
    import ray

    import fedmeta

    address = f"127.0.0.1:{_free_port()}"  # nothing listens there
    with pytest.raises(FedmetaError, match=r"simulation\.ray_address = '127\.0\.0\.1:\d+'"):
        fedmeta.simulate({**TINY, "simulation": {"ray_address": address}}, progress=False)
    assert not ray.is_initialized()


def test_a_node_with_another_fedmeta_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """The driver claims another version than the one its (local) Ray node imports."""
    import ray

    import fedmeta
    from fedmeta.app.cluster import check_nodes
    from fedmeta.config import from_dict

    real = fedmeta.__version__
    monkeypatch.setattr(fedmeta, "__version__", "99.0")
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        node = ray.nodes()[0]
        with pytest.raises(FedmetaError, match=(
                rf"1 of 1 nodes.*{node['NodeManagerAddress']} \(node {node['NodeID'][:12]}\)"
                rf": fedmeta {real} at .*the driver has 99\.0")):
            check_nodes(from_dict({"simulation": {"ray_address": "auto"}}))
    finally:
        ray.shutdown()


@pytest.mark.parametrize("address", ["host", "host:0", "host:70000", "ray://", ":6379",
                                     "http://host:6379", "a b:1"])
def test_a_malformed_address_is_a_config_error(address: str) -> None:
    from fedmeta import config

    with pytest.raises(ConfigError, match="simulation.ray_address"):
        config.from_dict({"simulation": {"ray_address": address}})
    for good in ("auto", "10.0.0.1:6379", "head-node:6379", "ray://head:10001"):
        assert config.from_dict({"simulation": {"ray_address": good}})


def test_a_node_without_the_fleets_trace_file_is_named(tmp_path: Path) -> None:
    """Every node reads the FedScale traces at the configured path; one lacking it is named."""
    import pickle

    import ray

    from fedmeta.app.cluster import check_nodes
    from fedmeta.config import from_dict

    trace = tmp_path / "client_device_capacity"
    trace.write_bytes(pickle.dumps({1: {"computation": 10.0, "communication": 100.0}}))
    cfg = from_dict({"simulation": {"ray_address": "auto"},
                     "fleet": {"tiers": "phone:1", "policy": "wait",
                               "trace_capacity": str(trace)}})
    trace.unlink()  # present when the config was checked, gone when the node looks
    ray.init(num_cpus=1, include_dashboard=False, logging_level="ERROR",
             runtime_env={"env_vars": {"PYTHONPATH": str(ROOT)}})
    try:
        with pytest.raises(FedmetaError, match=rf"1 of 1 nodes.*: no file {trace} "
                                               r"\(fleet\.trace_capacity\)"):
            check_nodes(cfg)
    finally:
        ray.shutdown()
