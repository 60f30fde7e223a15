"""``simulate``: a federated run on Flower's simulation engine (Ray), from Python.

The config is validated before Ray starts; Ray is shut down (a cluster joined with
``simulation.ray_address``: left, still running) when the run ends, however it ends.
Flower's and Ray's INFO logs are silenced unless ``verbose``.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import ray
import torch
from flwr.app import Context
from flwr.serverapp import Grid, ServerApp
from flwr.simulation import run_simulation
from tqdm.auto import tqdm

from .. import config as config_module
from ..checkpoint import Checkpoint
from ..config import Config, SimulationConfig
from ..errors import ConfigError, FedmetaError
from ..outputs import claim, write_run
from ..results import Row, summarize_run, table
from ..server_state import STATE_FILE, ServerState
from ..tasks.factory import check_fleet_tasks
from . import client_app, cluster
from .dispatch import message_pump
from .worker_queue import pinned_cores, queued_workers, worker_batch, worker_queue
from .outcome import DeviceReports, outcome_error
from .privacy_wrap import privacy_summary
from .server_app import check_resumable, run_federation


def as_config(config: Config | Mapping[str, Any] | str | Path) -> Config:
    """A validated config (``"auto"`` fields resolved) from a Config, dict or TOML path."""
    if isinstance(config, Config):
        return config_module.from_dict(config.to_dict())
    if isinstance(config, Mapping):
        return config_module.from_dict(dict(config))
    return config_module.load(config)


def backend_config(sim: SimulationConfig, verbose: bool) -> dict[str, Any]:
    """Ray's resources: ``sim.num_cpus``/``num_gpus`` per device, ``ray_cpus`` in all;
    joining a cluster (``sim.ray_address``), only its address: its nodes have their own."""
    client = {"num_cpus": sim.num_cpus, "num_gpus": sim.num_gpus}
    if sim.ray_address:
        return {"client_resources": client, "init_args": {"address": sim.ray_address}}
    total = sim.ray_cpus or os.cpu_count() or 1
    if sim.num_cpus > total:
        raise ConfigError("simulation.num_cpus", sim.num_cpus,
                          f"at most the {total} CPUs Ray has (simulation.ray_cpus)")
    if sim.num_gpus > 0 and not torch.cuda.is_available():
        raise ConfigError("simulation.num_gpus", sim.num_gpus, "0 on a machine without a GPU")
    return {"client_resources": client,
            "init_args": {"num_cpus": total, "include_dashboard": False,
                          "logging_level": "INFO" if verbose else "ERROR",
                          "log_to_driver": verbose}}


def check_simulated_device(cfg: Config) -> None:
    """``train.device`` must exist here (the server computes on it) and, if a GPU, Ray must
    give the devices one: each device computes on the GPU (share) Ray assigns its worker
    (``simulation.num_gpus``), which it sees as ``cuda:0``."""
    device = config_module.resolve_device(cfg.train.device)
    if device.type == "cuda" and cfg.simulation.num_gpus == 0:
        raise ConfigError("train.device", cfg.train.device,
                          "auto or cpu with simulation.num_gpus = 0 (Ray gives the devices no "
                          "GPU); or set simulation.num_gpus, e.g. 0.125 for 8 devices a GPU")
    if cfg.train.device.startswith("cuda:") and cfg.train.device != "cuda:0":
        raise ConfigError("train.device", cfg.train.device,
                          "auto, cpu, cuda or cuda:0 in a simulation (a Ray worker sees only "
                          "the GPU Ray gave it, as cuda:0)")


@contextmanager
def _flower_logs(verbose: bool) -> Iterator[None]:
    """Flower's logs at ERROR (ours at WARNING: dropped replies) unless ``verbose``."""
    levels = {"flwr": logging.ERROR, "flwr.fedmeta": logging.WARNING, "ray": logging.ERROR}
    loggers = {name: logging.getLogger(name) for name in levels}
    saved = {name: lg.level for name, lg in loggers.items()}
    if not verbose:
        for name, lg in loggers.items():
            lg.setLevel(levels[name])
    try:
        with warnings.catch_warnings():
            if not verbose:  # Ray's FutureWarning about accelerator variables, and the like
                warnings.simplefilter("ignore", FutureWarning)
            yield
    finally:
        for name, lg in loggers.items():
            lg.setLevel(saved[name])


def simulate(config: Config | Mapping[str, Any] | str | Path, out: str | Path | None = None,
             *, progress: bool = True, verbose: bool = False,
             resume: ServerState | None = None, overwrite: bool = False) -> pd.DataFrame:
    """Run the federated config on Ray; return the tidy table of rounds (``results.table``).

    With ``out``, also write every output there (``fedmeta.outputs.FILES``), the server
    state (``server_state.pt``) after every round. With ``resume`` (read from a killed run's
    ``server_state.pt``, of the same config), continue after its round; without it, an
    ``out`` that holds another run is refused (``overwrite``: its files are deleted first),
    all before Ray starts. The summary
    (final held-out scores with 95% CIs, bytes, wall time) is in ``frame.attrs["summary"]``
    and the final meta-model in ``frame.attrs["checkpoint"]``.
    """
    cfg = as_config(config)
    fed = cfg.federation
    if resume is not None and config_module.from_dict(resume.config).to_dict() != cfg.to_dict():
        raise ConfigError("resume", "a server state of another config",
                          "the config the run started with (its server_state.pt holds it)")
    if resume is not None:
        check_resumable(cfg)
    backend = backend_config(cfg.simulation, verbose)
    check_simulated_device(cfg)
    check_fleet_tasks(cfg.task, fed.num_devices, fed.num_held_out, cfg.train.seed)
    if out is not None and resume is None:
        claim(Path(out), overwrite)
    rows: list[Row] = list(resume.rows) if resume is not None else []
    finished: list[Checkpoint] = []
    bar = tqdm(total=fed.rounds, desc=fed.algorithm, unit="round", disable=not progress,
               dynamic_ncols=True, initial=resume.round if resume is not None else 0)
    latest: dict[str, str] = {}

    def report(row: Row) -> None:
        rows.append(row)
        latest[row.source] = row.brief()
        bar.set_postfix(latest, refresh=False)
        bar.update(1 if row.source == "train" and row.status != "retried" else 0)

    state_path = Path(out) / STATE_FILE if out is not None else None
    server = ServerApp()

    reports = DeviceReports()

    @server.main()
    def main(grid: Grid, context: Context) -> None:  # partitions: the engine's (EngineNodes)
        partitions = nodes.wait(fed.discovery_timeout)
        finished.append(run_federation(grid, cfg, report, state_path, resume, partitions,
                                       reports=reports))

    start = time.perf_counter()
    try:
        if cfg.simulation.ray_address:
            cluster.connect(cfg, verbose)
        with _flower_logs(verbose), message_pump(cfg.simulation.dispatch) as nodes, \
                queued_workers(worker_queue(cfg), worker_batch(cfg), pinned_cores(cfg)):
            run_simulation(server, client_app.app, num_supernodes=fed.num_devices,
                           backend_config=backend, verbose_logging=verbose)
    finally:
        bar.close()
        if ray.is_initialized():
            ray.shutdown()
    wall_s = time.perf_counter() - start
    if not finished:
        raise FedmetaError("the federated run did not finish; run it again with "
                           "verbose=True (--verbose) to see Flower's and Ray's logs")
    failure = outcome_error(rows, reports)
    frame = table(rows)
    summary = {**summarize_run(frame, fed.algorithm, fed.rounds, wall_s),
               **privacy_summary(cfg, frame)}
    if out is not None:  # a failed run's too: its results.csv shows the faults of each round
        write_run(Path(out), frame, cfg, finished[0], summary)
    if failure is not None:
        raise failure
    frame.attrs.update(summary=summary, checkpoint=finished[0])
    return frame
