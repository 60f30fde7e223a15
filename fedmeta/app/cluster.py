"""Join a running Ray cluster (``simulation.ray_address``) and check its nodes.

Every node must import fedmeta itself, at the driver's version (installed, or on the
``PYTHONPATH`` of its ``ray start``), and hold the Omniglot zips when the task needs them
and the fleet's files (profiles, FedScale traces) at the paths the config gives
(docs/scale.md): before the run, a tiny task pinned to each alive node reports what it has,
and a node that lacks one is named in a ``FedmetaError``.
"""

from __future__ import annotations

import socket
from typing import Any

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

import fedmeta

from ..config import Config
from ..errors import FedmetaError

CHECK_TIMEOUT_S = 120.0
CONNECT_TIMEOUT_S = 10.0


def connect(cfg: Config, verbose: bool) -> None:
    """``ray.init`` joining ``cfg.simulation.ray_address`` (no local resources: Ray refuses
    them when connecting), then ``check_nodes``. Flower's engine then uses this Ray."""
    address = cfg.simulation.ray_address
    try:
        _reachable(address)
        ray.init(address=address, logging_level="INFO" if verbose else "ERROR",
                 log_to_driver=verbose)
    except Exception as exc:  # noqa: BLE001 (OSError, ConnectionError, RuntimeError... from Ray)
        raise FedmetaError(f"simulation.ray_address = {address!r}: cannot join a Ray cluster "
                           f"there ({type(exc).__name__}: {_gist(exc)}); start one with "
                           f"'ray start --head' (docs/scale.md)") from None
    try:
        check_nodes(cfg)
    except BaseException:
        ray.shutdown()
        raise


def _reachable(address: str) -> None:
    """Raise ``OSError`` unless ``host:port`` accepts a connection within
    ``CONNECT_TIMEOUT_S`` (``ray.init`` would retry for minutes); ``auto`` and ``ray://``
    are left to Ray."""
    if address == "auto" or address.startswith("ray://"):
        return
    host, _, port = address.rpartition(":")
    with socket.create_connection((host, int(port)), timeout=CONNECT_TIMEOUT_S):
        pass


def _report(needs_omniglot: bool, data_dir: str, files: dict[str, str]) -> dict[str, Any]:
    """What this node has: fedmeta's version and file, the Omniglot zips if needed, and
    which of ``files`` (config field -> path) it lacks."""
    import os

    import fedmeta as here
    from fedmeta.tasks.omniglot import resolve_zips

    data = [f"no file {path} ({field})" for field, path in files.items()
            if not os.path.exists(path)]  # a file, or trace_network's folder
    if needs_omniglot:
        try:
            resolve_zips(data_dir or None)
        except Exception as exc:  # noqa: BLE001 (DataError: no folder, no zips; reported)
            data.append(_gist(exc))
    return {"version": here.__version__, "file": here.__file__, "data": "; ".join(data)}


def node_files(cfg: Config) -> dict[str, str]:
    """The files every node reads where the config says: the fleet's profiles and traces."""
    f = cfg.fleet
    return {f"fleet.{name}": path for name, path in (
        ("profiles_file", f.profiles_file), ("trace_capacity", f.trace_capacity),
        ("trace_behaviour", f.trace_behaviour), ("trace_network", f.trace_network))
        if path and f.tiers.strip()}


def check_nodes(cfg: Config) -> None:
    """Raise a ``FedmetaError`` naming each alive node that cannot import fedmeta at this
    version, or lacks the Omniglot zips the task needs or a file of ``node_files``."""
    needs = cfg.task.kind == "omniglot"
    probe = ray.remote(num_cpus=0)(_report)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    pending = {n["NodeManagerAddress"] + " (node " + n["NodeID"][:12] + ")":
               probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                   n["NodeID"], soft=False)).remote(needs, cfg.task.data_dir, node_files(cfg))
               for n in nodes}
    problems = []
    for name, ref in pending.items():
        try:
            got = ray.get(ref, timeout=CHECK_TIMEOUT_S)
        except Exception as exc:  # noqa: BLE001 (RayTaskError, GetTimeoutError: reported)
            problems.append(f"{name}: cannot import fedmeta ({_gist(exc)})")
            continue
        if got["version"] != fedmeta.__version__:
            problems.append(f"{name}: fedmeta {got['version']} at {got['file']}, the driver "
                            f"has {fedmeta.__version__}")
        if got["data"]:
            problems.append(f"{name}: {got['data']}")
    if problems:
        raise FedmetaError(f"simulation.ray_address = {cfg.simulation.ray_address!r}: "
                           f"{len(problems)} of {len(nodes)} nodes cannot run devices; "
                           + "; ".join(problems) + " (docs/scale.md: what every node needs)")


def _gist(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1].strip() if lines else type(exc).__name__
