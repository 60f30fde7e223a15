"""Scale of federated runs on Flower's simulation engine (Ray): fleets of 100, 1,000 and
10,000 devices, 10% of them sampled per round (``--fraction``; 100,000 devices at 1%:
``--sizes 100000 --fraction 0.01``).

For each task and fleet size, one run in a fresh process (so memory peaks do not mix):

- per-round host time: wall time between consecutive rounds' training records, over the
  rounds after the first (Ray's workers start and devices' first builds fall in round 1)
  that have no evaluation;
- peak memory: the RSS of the whole process tree (driver, Ray's GCS, raylet and workers),
  summed and sampled every 0.2 s by a thread; also the driver's and the largest worker's;
- overhead share: ``1 - meta / round``, where ``meta`` is the devices' own meta-learning
  time (the same ``local_meta_train`` calls, same devices, rounds and seeds, timed
  single-threaded in the driver right after each round while the federation waits, so
  seconds from the round it is compared with) divided by the number of Ray workers that
  ran them; also against the same learning timed just before and just after the Ray run
  (the mean of the two; how far the second timing is from the first shows how much the
  host's speed drifted over the run's minutes);
- the learning as the workers timed it (``load_timed_app``: the Ray workers of
  ``fedmeta.app.worker_queue`` load the ClientApp with its ``local_meta_train`` timed) and
  its share of the round: what is not learning in a worker's round (Ray, Flower, the
  ClientApp around the learning, waiting) is ``1 -`` that share, measured in the same run;
- the overhead share against the learning timed with every core busy with it (``co_run``: as
  many processes at once as Ray workers, each running every device's learning, just after
  the Ray run): what is left is the simulation's own cost (Ray, Flower, the ClientApp and the
  driver); the difference between the two shares is what running side by side costs the
  learning itself (shared caches and memory, the driver's threads preempting it);
- the Ray workers: how many ``ClientAppActor`` (or fedmeta's ``BatchedAppActor``) processes
  the run had at most, and the cores each may run on (``simulation.pin_workers``:
  ``--pin-workers on`` pins each to one).

Each size runs under both of ``simulation.dispatch``'s message pumps (``fedmeta.app.dispatch``):
Flower's own, and fedmeta's indexed one, so their ratio is measured on the same host load.

Evaluation (held-out devices) runs at round 0 and after the last round only and is not
timed. Results: ``benchmarks/results/fleet_scale.md`` and ``.json``.

    python benchmarks/fleet_scale.py [--sizes 100 1000 10000] [--tasks sinusoid omniglot]
                                     [--rounds 4] [--dispatch indexed flower]
                                     [--fraction 0.1] [--worker-queue 2] [--worker-batch 8]
                                     [--meta-batch 0] [--pin-workers off]
                                     [--ray-cpus 0] [--repeat 1] [--keep]
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import multiprocessing
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import torch

from fedmeta.config import DISPATCHES, SimulationConfig
from host import cpu_name  # benchmarks/host.py, beside this script

RESULTS = Path(__file__).resolve().parent / "results"
HELD_OUT = 2
QUEUE = SimulationConfig().worker_queue
PINS = {"off": False, "on": True}  # --pin-workers: simulation.pin_workers
BATCH = SimulationConfig().worker_batch


def per_round(size: int, fraction: float) -> int:
    """Devices sampled per round in a fleet of ``size``."""
    return max(1, round(size * fraction))


def fleet_config(task: str, size: int, rounds: int, dispatch: str,
                 fraction: float = 0.1, queue: int = QUEUE, meta_batch: int = 0,
                 ray_cpus: int = 0, batch: int = BATCH, pin: bool = False) -> dict[str, Any]:
    """A fleet of ``size`` devices, ``per_round(size, fraction)`` sampled per round,
    evaluation only at round 0 and after the last; Flower's engine pumping messages by
    ``dispatch``, each Ray worker holding ``queue`` calls of up to ``batch`` messages,
    pinned to a core of its own if ``pin``;
    ``meta_batch`` episodes a
    local step (0: the task's default, 10 for the sinusoid, 4 for Omniglot); ``ray_cpus``
    CPUs for Ray, one worker each (0: every core)."""
    federation = {"num_devices": size, "num_held_out": HELD_OUT, "rounds": rounds,
                  "fraction_train": 0.0, "min_train_devices": per_round(size, fraction),
                  "eval_every": rounds, "eval_episodes": 5, "meta_batch": meta_batch or 10}
    config: dict[str, Any] = {"federation": federation,
                              "simulation": {"num_cpus": 1,
                                             "ray_cpus": ray_cpus or os.cpu_count() or 1,
                                             "dispatch": dispatch, "worker_queue": queue,
                                             "worker_batch": batch, "pin_workers": pin}}
    if task == "omniglot":
        config["task"] = {"kind": "omniglot", "n_way": 5, "k_shot": 1, "q_query": 5,
                          "partition": "sampled", "device_classes": 10,
                          "data_dir": os.environ.get("FEDMETA_OMNIGLOT_DIR", "")}
        federation.update(meta_batch=meta_batch or 4, algorithm="fedmeta-maml")
        config["meta"] = {"inner_lr": 0.4, "inner_steps": 1, "eval_steps": 1}
    return config


def _is_actor(proc: psutil.Process) -> bool:
    """Whether ``proc`` is one of the simulation's Ray workers (Flower's ``ClientAppActor``
    or fedmeta's ``BatchedAppActor``)."""
    try:
        line = " ".join(proc.cmdline())
        return "ClientAppActor" in line or "BatchedAppActor" in line
    except psutil.Error:
        return False


class TreeMemory:
    """Peak summed RSS of this process and its descendants, sampled in a thread every
    ``every_s``; the tree itself is listed every ``tree_every_s`` (listing it reads every
    process of the host, a cost that would count as the run's overhead)."""

    def __init__(self, every_s: float = 0.2, tree_every_s: float = 2.0) -> None:
        self.every_s, self.peak, self.driver_peak, self.worker_peak = every_s, 0, 0, 0
        self.tree_every_s = tree_every_s
        self.actors = 0
        self.cpu: dict[int, tuple[bool, float]] = {}  # pid -> (is a worker, CPU s so far)
        self.cores: dict[int, list[int]] = {}  # worker pid -> its cores, when last listed
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        tree: dict[int, tuple[psutil.Process, bool]] = {}  # pid -> (process, is a worker)
        listed = -math.inf
        while not self._stop.is_set():
            if time.monotonic() - listed >= self.tree_every_s:
                tree, listed = {p.pid: (p, _is_actor(p)) for p in
                                [me, *me.children(recursive=True)]}, time.monotonic()
                for pid, (proc, is_actor) in tree.items():
                    if is_actor and (cores := self._cores(proc)):
                        self.cores[pid] = cores
            total, actors = 0, 0
            for proc, is_actor in tree.values():
                try:
                    rss = proc.memory_info().rss
                    cpu = proc.cpu_times()
                except psutil.Error:
                    continue
                self.cpu[proc.pid] = (is_actor, cpu.user + cpu.system)
                total += rss
                if is_actor:
                    actors += 1
                    self.worker_peak = max(self.worker_peak, rss)
            self.driver_peak = max(self.driver_peak, me.memory_info().rss)
            self.peak, self.actors = max(self.peak, total), max(self.actors, actors)
            self._stop.wait(self.every_s)

    @staticmethod
    def _cores(proc: psutil.Process) -> list[int]:
        """The cores ``proc``'s threads may run on, all of them together."""
        cores: set[int] = set()
        try:
            threads = proc.threads()
        except psutil.Error:  # the process ended
            return []
        for thread in threads:
            try:
                cores.update(os.sched_getaffinity(thread.id))
            except OSError:  # a thread that ended
                pass
        return sorted(cores)

    def cpu_seconds(self, workers: bool) -> float:
        """CPU seconds of the workers (or of every other process: driver, GCS, raylet)."""
        return sum(s for is_actor, s in self.cpu.values() if is_actor == workers)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def load_timed_app(folder: str) -> Any:
    """fedmeta's device app, loaded in a Ray worker (``fedmeta.app.worker_queue``' loader)
    with its ``local_meta_train`` calls timed: each call's end, seconds and CPU seconds (its
    thread's: time the worker was preempted is not in it) appended to ``<folder>/<pid>.txt``
    (``time.perf_counter``: the host's monotonic clock, the same in every process). What the
    device computes is unchanged."""
    from fedmeta.app import client_app

    learn = client_app.local_meta_train
    if not getattr(learn, "timed", False):
        path = Path(folder) / f"{os.getpid()}.txt"

        def timed(*args: Any, **kwargs: Any) -> Any:
            start, cpu = time.perf_counter(), time.thread_time()
            update = learn(*args, **kwargs)
            end, cpu = time.perf_counter(), time.thread_time() - cpu
            with path.open("a") as log:
                log.write(f"{end} {end - start} {cpu}\n")
            return update
        timed.timed = True  # type: ignore[attr-defined]
        client_app.local_meta_train = timed
    return client_app.app


def learning_by_round(folder: Path, train: dict[int, float], rounds: list[int]
                      ) -> dict[int, tuple[float, float]]:
    """The workers' timed learning (seconds, CPU seconds) in each of ``rounds``: the calls
    that ended between the previous round's training record and this one's."""
    out = {r: (0.0, 0.0) for r in rounds}
    for log in folder.glob("*.txt"):
        for line in log.read_text().splitlines():
            end, seconds, cpu = map(float, line.split())
            r = next((r for r in rounds if train[r - 1] < end <= train[r]), None)
            if r is not None:
                out[r] = (out[r][0] + seconds, out[r][1] + cpu)
    return out


def run_on_ray(config: dict[str, Any]) -> dict[str, Any]:
    """One federated run on the simulation engine; the times of its records and of the
    learning in its workers (``load_timed_app``). Each round's devices' learning is also
    timed in this process right after the round (``between_s``), the
    federation waiting meanwhile: a reference seconds from the round it is compared with,
    not minutes, so the host's speed drifting does not come between them; a round's time
    then starts when that timing of the previous round ended."""
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from flwr.simulation import run_simulation
    import ray

    from fedmeta.app import client_app
    from fedmeta.app.server_app import run_federation
    from fedmeta.app.dispatch import message_pump
    from fedmeta.app import worker_queue as worker_queue_module
    from fedmeta.app.worker_queue import (pinned_cores, queued_workers, worker_batch,
                                          worker_queue)
    from fedmeta.app.simulation import _flower_logs, as_config, backend_config

    cfg = as_config(config)
    marks: list[tuple[int, str, float]] = []
    server = ServerApp()

    between: dict[int, float] = {}  # round -> the reference timed right after it
    resumed: dict[int, float] = {}  # round -> when its reference timing ended
    paused = [0.0, 0.0]  # the seconds and the driver's CPU seconds those timings took

    def on_row(row: Any) -> None:
        """Mark the row; after a training record, time that round's devices' learning in
        this process while the workers have nothing to do (the next round waits for it)."""
        marks.append((row.round, row.source, time.perf_counter()))
        if row.source == "train":
            cpu = time.thread_time()
            timed = meta_learning_seconds(config, [row.round])  # round 1: a warm-up
            if row.round >= 2:
                between[row.round] = timed[row.round]
            resumed[row.round] = time.perf_counter()
            paused[0] += resumed[row.round] - marks[-1][2]
            paused[1] += time.thread_time() - cpu

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        run_federation(grid, cfg, on_row,
                       partitions=nodes.wait(cfg.federation.discovery_timeout))

    backend = backend_config(cfg.simulation, False)
    logs = tempfile.TemporaryDirectory(prefix="fleet_scale_")
    by_reference = worker_queue_module.by_reference
    start, load = time.perf_counter(), os.getloadavg()[0]
    with logs, TreeMemory() as memory, _flower_logs(False), \
            message_pump(cfg.simulation.dispatch) as nodes, \
            queued_workers(worker_queue(cfg), worker_batch(cfg), pinned_cores(cfg)):
        try:  # fedmeta's Ray workers load the timed app
            worker_queue_module.by_reference = lambda _: partial(load_timed_app, logs.name)
            run_simulation(server, client_app.app, num_supernodes=cfg.federation.num_devices,
                           backend_config=backend)
        finally:
            worker_queue_module.by_reference = by_reference
            if ray.is_initialized():
                ray.shutdown()
        wall = time.perf_counter() - start - paused[0]
        train = {r: t for r, source, t in marks if source == "train"}
        evals = {r for r, source, _ in marks if source == "eval"}
        first_eval = next(t for r, source, t in marks if source == "eval" and r == 0)
        steady = {r: train[r] - resumed.get(r - 1, train[r - 1]) for r in sorted(train)
                  if r >= 2 and (r - 1) not in evals}
        in_workers = learning_by_round(Path(logs.name), train, sorted(steady))
    return {"wall_s": wall, "startup_s": first_eval - start,
            "round1_s": train[1] - first_eval, "round_s": steady, "in_workers_s": in_workers,
            "peak_rss_mb": memory.peak / 2**20, "driver_peak_rss_mb": memory.driver_peak / 2**20,
            "worker_peak_rss_mb": memory.worker_peak / 2**20, "ray_workers": memory.actors,
            "worker_cores": sorted(memory.cores.values()),
            "cpu_s_workers": memory.cpu_seconds(True),
            "cpu_s_others": memory.cpu_seconds(False) - paused[1],
            "between_s": {r: between[r] for r in steady if r in between},
            "load": [round(load, 1), round(os.getloadavg()[0], 1)]}


def meta_learning_seconds(config: dict[str, Any], rounds: list[int]) -> dict[int, float]:
    """The summed single-threaded time of the sampled devices' ``local_meta_train`` calls in
    each of ``rounds`` (the same devices, seeds and work as on Ray)."""
    from fedmeta.app.simulation import as_config

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _timed_rounds(as_config(config), rounds)
    finally:
        torch.set_num_threads(threads)


def _warm_and_time(config: dict[str, Any], rounds: list[int]) -> dict[int, float]:
    """``meta_learning_seconds`` after an untimed warm-up round (in a fresh process)."""
    meta_learning_seconds(config, rounds[:1])
    return meta_learning_seconds(config, rounds)


def co_run(config: dict[str, Any], rounds: list[int], processes: int) -> dict[int, float]:
    """``meta_learning_seconds`` in ``processes`` processes at once, each timing every
    device; the mean of their times per round."""
    spawn = multiprocessing.get_context("spawn")  # not fork: this process holds torch/Ray
    with spawn.Pool(processes) as pool:
        timed = pool.starmap(_warm_and_time, [(config, rounds)] * processes)
    return {r: statistics.mean(t[r] for t in timed) for r in rounds}


def _timed_rounds(cfg: Any, rounds: list[int]) -> dict[int, float]:
    from fedmeta.app.strategy import SAMPLING_STREAM
    from fedmeta.federated import FEDERATED_ALGORITHMS, adapt_steps
    from fedmeta.local_update import local_meta_train
    from fedmeta.meta import build_learner
    from fedmeta.models import build_model
    from fedmeta.tasks.factory import build_device_tasks, build_tasks

    fed = cfg.federation
    algorithm = FEDERATED_ALGORITHMS[fed.algorithm]
    tasks = build_tasks(cfg.task, seed=cfg.train.seed)
    learner = build_learner(algorithm.learner, build_model(tasks.model, **tasks.model_kwargs),
                            inner_lr=cfg.meta.inner_lr, inner_steps=cfg.meta.inner_steps,
                            eval_steps=cfg.meta.eval_steps)
    params = learner.init_params()
    score_steps = adapt_steps(algorithm, cfg.meta.inner_steps, cfg.meta.eval_steps, False)
    out = {}
    for r in rounds:
        rng = np.random.default_rng([cfg.train.seed, r, SAMPLING_STREAM])
        picked = np.sort(rng.choice(fed.num_train, size=fed.train_per_round, replace=False))
        total = 0.0
        for p in picked:
            source = build_device_tasks(cfg.task, int(p), fed.num_devices, fed.num_held_out,
                                        seed=cfg.train.seed)
            device_rng = np.random.default_rng([cfg.train.seed, r, int(p)])
            start = time.perf_counter()
            local_meta_train(learner, params, source, device_rng, fed.local_steps,
                             fed.local_lr, fed.meta_batch, score_steps)
            total += time.perf_counter() - start
        out[r] = total
    return out


def one(task: str, size: int, rounds: int, dispatch: str, fraction: float = 0.1,
        queue: int = QUEUE, meta_batch: int = 0, ray_cpus: int = 0,
        batch: int = BATCH, pin: bool = False) -> dict[str, Any]:
    """Measure one task, fleet size, dispatch, queue, batch and pinning (run in a fresh
    process by ``main``)."""
    config = fleet_config(task, size, rounds, dispatch, fraction, queue, meta_batch, ray_cpus,
                          batch, pin)
    count = per_round(size, fraction)
    steady_rounds = list(range(2, rounds + 1))
    meta_learning_seconds(config, steady_rounds[:1])  # warm-up (torch's first calls), untimed
    meta_before = meta_learning_seconds(config, steady_rounds)
    before = steal_and_total()
    ray_run = run_on_ray(config)
    after = steal_and_total()
    steal = (after[0] - before[0]) / max(after[1] - before[1], 1)
    steady = {int(r): s for r, s in ray_run["round_s"].items()}
    meta_after = meta_learning_seconds(config, sorted(steady))
    outside = {r: (meta_before[r] + meta_after[r]) / 2 for r in steady}
    meta = {int(r): s for r, s in ray_run.pop("between_s").items()}
    workers = max(ray_run["ray_workers"], 1)
    shares = [1 - meta[r] / workers / steady[r] for r in steady]
    outside_shares = [1 - outside[r] / workers / steady[r] for r in steady]
    side_by_side = co_run(config, sorted(steady), workers)
    co_shares = [1 - side_by_side[r] / workers / steady[r] for r in steady]
    timings = {int(r): s for r, s in ray_run.pop("in_workers_s").items()}
    in_workers = {r: s for r, (s, _) in timings.items()}
    in_workers_cpu = {r: c for r, (_, c) in timings.items()}
    timed = all(in_workers[r] > 0 for r in steady)  # a round without timed calls: none
    learning_shares = [in_workers[r] / workers / steady[r] for r in steady]
    return {"task": task, "devices": size, "dispatch": dispatch, "per_round": count,
            "rounds": rounds, "worker_queue": queue, "worker_batch": batch, "pin_workers": pin,
            "meta_batch": config["federation"]["meta_batch"], "steal_share": steal,
            "ray_cpus": config["simulation"]["ray_cpus"],
            **ray_run, "round_s": statistics.median(steady.values()),
            "round_s_each": [round(steady[r], 3) for r in sorted(steady)],
            "meta_s_each": [round(meta[r], 3) for r in sorted(steady)],
            "meta_per_device_ms": 1000 * sum(meta.values()) / (len(meta) * count),
            "reference": "between rounds",
            "overhead_share": statistics.median(shares),
            "overhead_share_each": [round(x, 3) for x in shares],
            "outside_per_device_ms": 1000 * sum(outside.values()) / (len(meta) * count),
            "meta_drift": sum(meta_after.values()) / sum(meta_before[r] for r in steady) - 1,
            "overhead_share_outside": statistics.median(outside_shares),
            "co_run_per_device_ms": 1000 * sum(side_by_side.values()) / (len(meta) * count),
            "overhead_share_co_run": statistics.median(co_shares),
            **({"in_workers_per_device_ms": 1000 * sum(in_workers.values())
                / (len(meta) * count),
                "in_workers_cpu_per_device_ms": 1000 * sum(in_workers_cpu.values())
                / (len(meta) * count),
                "learning_share_in_workers": statistics.median(learning_shares)}
               if timed else {})}


def steal_and_total() -> tuple[int, int]:
    """The host's CPU time stolen by the hypervisor and its CPU time in all (jiffies, from
    /proc/stat; zeros elsewhere): a virtual machine's cores run slower while stolen."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return (fields[7] if len(fields) > 7 else 0), sum(fields[:8])


def write(results: list[dict[str, Any]], started: str) -> None:
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "fleet_scale.json").write_text(json.dumps(
        {"started": started, "host": host(), "results": results}, indent=2) + "\n")
    lines = ["# Fleet scale on Flower's simulation engine (Ray)", "",
             f"{started}: {host()}.", "",
             *([f"Rows measured at other times: {sorted({r['started'] for r in results})}.", ""]
               if len({r.get('started') for r in results}) > 1 else []),
             "10% of the fleet sampled per round unless `per round` says otherwise; one run "
             "per row in a fresh process; "
             "per-round times are the median over rounds 2..R (round 1 starts the workers); "
             "overhead share = 1 - (devices' meta-learning time, single-threaded, / Ray "
             "workers) / round time, the median over those rounds. Between rounds (rows "
             "measured from 2026-12-03 13:40 UTC): each round's devices' learning is timed in "
             "the driver right after that round, the federation waiting meanwhile (the pause "
             "is left out of the round's time and of the wall time), so the reference is "
             "seconds from the round it is compared with; the overhead share column is "
             "against it. Before/after: the learning timed just before and just after the "
             "Ray run (rows measured before 2026-12-03 08:30 UTC: after only), their mean, "
             "and the change from the first timing to the second in brackets (the host's "
             "speed drifting over minutes); rows measured before 13:40 UTC have only this "
             "reference. Side by side (rows measured from 2026-12-03 12:00 UTC): "
             "the devices' learning timed in as many processes at once as Ray workers (every "
             "core busy with it, as on Ray) and the overhead share against that: the "
             "simulation's own cost; the gap to the overhead share is what running side by "
             "side costs the learning itself. In workers (from 12:15 UTC): the learning as "
             "the Ray workers timed it (a device's `local_meta_train`, in the same run; from "
             "12:40 UTC also its thread's CPU time, which leaves out preemption) and "
             "its share of the round per worker. Dispatch: how Flower's engine pumps messages to "
             "nodes (`simulation.dispatch`, fedmeta/app/dispatch.py): `flower` is Flower's "
             "own pump (every node asks for its messages every 0.1 s, each ask scans every "
             "stored message), `indexed` is fedmeta's (each message checked once, a poll "
             "whenever one is stored). Rows with a load column: the server took the nodes' "
             "partitions from the engine (`fedmeta.app.dispatch.EngineNodes`) instead of "
             "asking each node, and the load column is the host's 1-minute load average at "
             "the run's start and end (2 cores; the host was shared). Queue: messages a Ray "
             "worker holds at once (`simulation.worker_queue`, fedmeta/app/worker_queue.py; "
             "1 is Flower's pool, as in every row without a steal column). Batch: messages "
             "sent to a Ray worker in one call (`simulation.worker_batch`, "
             "fedmeta/app/ray_batches.py; 1 is Flower's actors, a call per message, as in "
             "every row measured before the option, 2026-12-02 19:00 UTC). Rows of several "
             "runs (`--repeat`, the queues interleaved): the times of the run of median "
             "overhead share (of two, the higher), every run's share in brackets. Steal: the "
             "share of the host's CPU time the hypervisor took during the runs (a virtual "
             "machine's cores are slower then). Pinned: each Ray worker pinned to a core of "
             "its own (`simulation.pin_workers`, fedmeta/app/pinning.py; rows measured "
             "before 2026-12-03 16:10 UTC: no), with the cores each worker's threads were "
             "seen on.",
             "",
             "| task | devices | dispatch | queue | batch | meta-batch | per round | Ray workers | "
             "pinned | "
             "start-up s | round 1 s | round s (median) | device meta-learning ms, between "
             "rounds | overhead share | before/after: ms (drift), share | "
             "side by side: ms, share | in workers: ms, learning share | "
             "peak RSS tree MB | driver MB | "
             "largest worker MB | wall s | "
             "CPU s workers / others | load | steal |",
             "|---|---:|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---:|---|---|---|"
             "---:|"
             "---:|"
             "---:|---:|---:|---|---:|"]
    for r in results:
        steal = f"{100 * r['steal_share']:.0f}%" if "steal_share" in r else ""
        if "error" in r:
            lines.append(f"| {r['task']} | {r['devices']} | {r.get('dispatch', 'flower')} | "
                         f"{r.get('worker_queue', 1)} | {r.get('worker_batch', 1)} | "
                         f"{r.get('meta_batch', '?')} | "
                         f"{r.get('per_round', '?')} | failed: {r['error']} |" + " |" * 16)
            continue
        runs = r.get("overhead_runs", [])
        drift = f" ({100 * r['meta_drift']:+.0f}%)" if "meta_drift" in r else ""
        if r.get("reference") == "between rounds":
            between = f"{r['meta_per_device_ms']:.1f}"
            share = f"{100 * r['overhead_share']:.0f}%" + spread(runs)
            outside = (f"{r['outside_per_device_ms']:.1f}{drift}, "
                       f"{100 * r['overhead_share_outside']:.0f}%"
                       + spread(r.get("outside_runs", [])))
        else:  # measured before the reference between rounds: before/after only
            between, share = "", ""
            outside = (f"{r['meta_per_device_ms']:.1f}{drift}, "
                       f"{100 * r['overhead_share']:.0f}%" + spread(runs))
        co = (f"{r['co_run_per_device_ms']:.1f}, {100 * r['overhead_share_co_run']:.0f}%"
              + spread(r.get("co_run_runs", []))
              if "overhead_share_co_run" in r else "")
        inside = (f"{r['in_workers_per_device_ms']:.1f}"
                  + (f" ({r['in_workers_cpu_per_device_ms']:.1f} CPU)"
                     if "in_workers_cpu_per_device_ms" in r else "") + ", "
                  f"{100 * r['learning_share_in_workers']:.0f}%"
                  if "learning_share_in_workers" in r else "")
        lines.append(
            f"| {r['task']} | {r['devices']} | {r.get('dispatch', 'flower')} | "
            f"{r.get('worker_queue', 1)} | {r.get('worker_batch', 1)} | {meta_batch_of(r)} | "
            f"{r['per_round']} | {r['ray_workers']} | {pinned(r)} | "
            f"{r['startup_s']:.1f} | {r['round1_s']:.1f} | {r['round_s']:.2f} | "
            f"{between} | {share} | {outside} | {co} | {inside} | "
            f"{r['peak_rss_mb']:.0f} | {r['driver_peak_rss_mb']:.0f} | "
            f"{r['worker_peak_rss_mb']:.0f} | {r['wall_s']:.0f} | "
            f"{r.get('cpu_s_workers', float('nan')):.0f} / "
            f"{r.get('cpu_s_others', float('nan')):.0f} | "
            f"{'-'.join(str(x) for x in r.get('load', [])) or '?'} | "
            f"{steal} |")
    lines += ["", "Rerun: `python benchmarks/fleet_scale.py` (see its docstring for options).",
              ""]
    (RESULTS / "fleet_scale.md").write_text("\n".join(lines))


def pinned(row: dict[str, Any]) -> str:
    """Whether a row's workers were pinned, and the cores each was seen on."""
    cores = " / ".join(",".join(map(str, c)) for c in row.get("worker_cores", []))
    return ("yes" if row.get("pin_workers") else "no") + (f" ({cores})" if cores else "")


def spread(shares: list[float]) -> str:
    """Every run's share in brackets, in percent (nothing for a single run)."""
    return " [" + ", ".join(f"{100 * x:.0f}" for x in shares) + "]" if len(shares) > 1 else ""


def host() -> str:
    return (f"{cpu_name()}, {os.cpu_count()} cores, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB; Python "
            f"{platform.python_version()}, torch {torch.__version__}, "
            f"load average when written {os.getloadavg()[0]:.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--tasks", nargs="+", default=["sinusoid"],
                        choices=["sinusoid", "omniglot"])
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--fraction", type=float, default=0.1,
                        help="share of the fleet sampled per round")
    parser.add_argument("--dispatch", nargs="+", default=list(DISPATCHES), choices=DISPATCHES,
                        help="message pumps to compare (simulation.dispatch)")
    parser.add_argument("--worker-queue", type=int, nargs="+", default=[QUEUE],
                        help="messages a Ray worker holds at once, to compare "
                             "(simulation.worker_queue; 1: Flower's pool)")
    parser.add_argument("--worker-batch", type=int, nargs="+", default=[BATCH],
                        help="messages sent to a Ray worker in one call, to compare "
                             "(simulation.worker_batch; 1: Flower's actors)")
    parser.add_argument("--meta-batch", type=int, default=0,
                        help="episodes per local step (0: 10 for the sinusoid, 4 for "
                             "Omniglot); fewer make a device's learning shorter")
    parser.add_argument("--pin-workers", nargs="+", default=["off"], choices=PINS,
                        help="Ray workers each pinned to a core, or not, to compare "
                             "(simulation.pin_workers)")
    parser.add_argument("--ray-cpus", type=int, default=0,
                        help="CPUs for Ray, one worker each (0: every core)")
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each row, the rows interleaved run by run")
    parser.add_argument("--keep", action="store_true",
                        help="keep the recorded rows not measured now")
    parser.add_argument("--one", nargs=3, metavar=("TASK", "SIZE", "DISPATCH"),
                        help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(one(args.one[0], int(args.one[1]), args.rounds, args.one[2],
                             args.fraction, args.worker_queue[0], args.meta_batch,
                             args.ray_cpus, args.worker_batch[0],
                             PINS[args.pin_workers[0]])))
        return
    started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    results: list[dict[str, Any]] = []
    keys = sorted(((t, s, d, q, b, n) for t in args.tasks for s in args.sizes
                   for d in args.dispatch for q in args.worker_queue for b in args.worker_batch
                   for n in args.pin_workers),
                  key=lambda k: (k[0], k[1], k[2] != "flower", k[3], k[4], PINS[k[5]]))
    measured = {row_key({"task": t, "devices": s, "dispatch": d, "worker_queue": q,
                         "worker_batch": b, "pin_workers": PINS[n],
                         "meta_batch": args.meta_batch or None,
                         "ray_cpus": args.ray_cpus or os.cpu_count()})
                for t, s, d, q, b, n in keys}
    previous = RESULTS / "fleet_scale.json"
    if args.keep and previous.exists():
        old = json.loads(previous.read_text())
        results = [dict(r, started=r.get("started", old["started"]))
                   for r in old["results"] if row_key(r) not in measured]
    runs: dict[tuple[str, int, str, int, int, str], list[dict[str, Any]]] = {k: [] for k in keys}
    for _ in range(args.repeat):
        for task, size, dispatch, queue, batch, pin in keys:
            proc = subprocess.run([sys.executable, __file__, "--one", task, str(size), dispatch,
                                   "--rounds", str(args.rounds), "--fraction",
                                   str(args.fraction), "--worker-queue", str(queue),
                                   "--worker-batch", str(batch), "--pin-workers", pin,
                                   "--meta-batch", str(args.meta_batch),
                                   "--ray-cpus", str(args.ray_cpus)],
                                  capture_output=True, text=True)
            if proc.returncode == 0:
                run = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                run = {"task": task, "devices": size, "dispatch": dispatch,
                       "worker_queue": queue, "worker_batch": batch, "pin_workers": PINS[pin],
                       "per_round": per_round(size, args.fraction),
                       "error": (proc.stderr.strip().splitlines() or ["?"])[-1][:200]}
            print(json.dumps(run), flush=True)
            runs[(task, size, dispatch, queue, batch, pin)].append(run)
        done = [median_run(r) for r in runs.values() if r]
        write(sorted(results + [dict(r, started=started) for r in done], key=row_key), started)


def median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The run of median overhead share (of two middle ones, the higher), with every run's
    share; a failed run, if any failed."""
    failed = [r for r in runs if "error" in r]
    if failed:
        return failed[0]
    ordered = sorted(runs, key=lambda r: r["overhead_share"])
    return dict(ordered[len(ordered) // 2],
                overhead_runs=[r["overhead_share"] for r in runs],
                outside_runs=[r.get("overhead_share_outside", math.nan) for r in runs],
                co_run_runs=[r.get("overhead_share_co_run", math.nan) for r in runs])


def meta_batch_of(row: dict[str, Any]) -> int:
    """A row's episodes per local step (rows recorded before the option: the defaults)."""
    return row.get("meta_batch") or (4 if row["task"] == "omniglot" else 10)


def row_key(row: dict[str, Any]) -> tuple[str, int, str, int, int, int, int, bool]:
    """A row's task, fleet size, dispatch, queue, batch, meta-batch, Ray CPUs and pinning
    (rows recorded before these were options: Flower's pump, one message a worker and a
    call, the task's meta-batch, every core of the 2-core host, unpinned workers)."""
    return (row["task"], row["devices"], row.get("dispatch", "flower"),
            row.get("worker_queue", 1), row.get("worker_batch", 1), meta_batch_of(row),
            row.get("ray_cpus", 2), row.get("pin_workers", False))


if __name__ == "__main__":
    main()
