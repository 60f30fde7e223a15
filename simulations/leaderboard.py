"""Omniglot leaderboard: federated meta-learning against central references, several seeds.

Every row trains at the same number of training episodes per setting, on the same training
alphabets, and is scored once, on the same test episodes, on alphabets nobody trained or
tuned on. Hyperparameters come from a small sweep scored on a validation alphabet only.
The protocol (``Budget`` and ``rows`` below; its text heads the written table) is declared
before the runs; ``--quick`` shrinks every budget for CI without changing the protocol's shape.

Writes to ``--out``: ``jobs/<job>/`` (one folder per training run: its record, and for
federated rows the ``fedmeta run`` outputs), ``leaderboard.md`` (the table, with the
protocol, goals and the command), ``leaderboard.json`` (every job's record and the
aggregated rows), ``leaderboard_curves.png`` (validation accuracy of the federated runs by
round) and ``leaderboard_accuracy.png`` (test accuracy per row, mean and 95% CI over
seeds). Finished jobs are reused when the script runs again with the same protocol, so an
interrupted leaderboard resumes; ``--readme README.md`` also replaces the README's leaderboard table.

    python simulations/leaderboard.py --data-dir ../shared/data/omniglot --workers 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from host import cpu_name  # noqa: E402  (benchmarks/host.py)
from leaderboard_report import TARGETS, write_report  # noqa: E402

TEST = "Greek,Korean"
VALIDATION = "Latin"


@dataclass(frozen=True)
class Budget:
    """Training episodes per setting and how they are spent."""

    episodes_5: int = 1200  # 5-way: central 150 x 8; federated 60 rounds x 5 devices x 4
    episodes_20: int = 600  # 20-way: central 75 x 8; federated 30 rounds x 5 devices x 4
    devices_per_round: int = 5
    episodes_per_device: int = 4  # a device's local meta-batch
    central_meta_batch: int = 8
    eval_every: int = 15  # rounds between validation scores of federated runs
    val_episodes: int = 20  # per held-out (validation) device and evaluation
    test_episodes_5: int = 200  # per seed: 600 over three seeds
    test_episodes_20: int = 100
    lake_runs: int = 100
    sweep_episodes: int = 600  # per sweep point (5-way, seed 0, validation alphabet)
    sweep_grid: tuple[float, ...] = (0.1, 0.4)  # inner steps tried (0.4: MAML's Omniglot)
    # federated server Adam steps tried, at the chosen inner step (0.01: fedmeta's default)
    server_grid: tuple[float, ...] = (0.0003, 0.001, 0.003, 0.01)
    seeds: tuple[int, ...] = (0, 1, 2)

    def episodes(self, ways: int) -> int:
        return self.episodes_5 if ways == 5 else self.episodes_20


QUICK = Budget(episodes_5=320, episodes_20=160, eval_every=8, val_episodes=20,
               test_episodes_5=150, test_episodes_20=100, lake_runs=60, sweep_episodes=80,
               sweep_grid=(0.4,), server_grid=(0.01,), seeds=(0,))


@dataclass(frozen=True)
class Row:
    """One line of the table: a learner trained one way, at one N-way setting."""

    name: str
    kind: str  # "central", "federated" or "init" (the untrained model, fine-tuned)
    algorithm: str  # meta.algorithm (central) or federation.algorithm (federated)
    ways: int
    partition: str = ""  # federated: drawer, drawer4, alphabet, dirichlet
    headline: bool = True


PARTITIONS = {  # name: (task.partition, training devices, what a device holds)
    "drawer": ("drawer", 20, "one drawer (1 image per character)"),
    "drawer4": ("drawer", 5, "four drawers (4 images per character)"),
    "alphabet": ("alphabet", 5, "one whole alphabet (all 20 drawers)"),
    "dirichlet": ("dirichlet", 20, "Dirichlet(0.5) share of each character's images"),
}


def rows(quick: bool) -> list[Row]:
    """The leaderboard's rows (``quick``: the CI check's three)."""
    if quick:
        return [Row("fine-tune the initial model", "init", "fomaml", 5),
                Row("central first-order MAML", "central", "fomaml", 5),
                Row("fedmeta-fomaml (4 drawers/device)", "federated", "fedmeta-fomaml", 5,
                    "drawer4")]
    out = []
    for ways in (5, 20):
        out += [Row("fine-tune the initial model", "init", "fomaml", ways),
                Row("central MAML", "central", "maml", ways, headline=ways == 5),
                Row("central first-order MAML", "central", "fomaml", ways),
                Row("central ANIL", "central", "anil", ways, headline=False),
                Row("central Prototypical Networks", "central", "protonet", ways)]
        for part in ("drawer4", "drawer") + (("alphabet", "dirichlet") if ways == 5 else ()):
            out.append(Row(f"fedmeta-fomaml ({part})", "federated", "fedmeta-fomaml", ways,
                           part, headline=part == "drawer4" or (part, ways) == ("drawer", 5)))
        out.append(Row("fedavg-ft (drawer4)", "federated", "fedavg-ft", ways, "drawer4",
                       headline=ways == 5))
    return out


@dataclass(frozen=True)
class Job:
    """One training run (a row at one seed) and everything that decides its numbers."""

    row: Row
    seed: int
    inner_lr: float
    server_lr: float
    budget: Budget
    data_dir: str
    stage: str = "final"  # "final" (scored on test) or "sweep" (scored on validation only)

    @property
    def key(self) -> str:
        r = self.row
        base = f"{r.kind}-{r.algorithm}-{r.partition or 'none'}-{r.ways}way-seed{self.seed}"
        if self.stage == "final":
            return base
        server = f"-server{self.server_lr:g}" if r.kind == "federated" else ""
        return f"sweep-{base}-inner{self.inner_lr:g}{server}"


def task_overrides(job: Job, ways: int, held_out: str, excluded: str) -> dict[str, Any]:
    return {"kind": "omniglot", "data_dir": job.data_dir, "n_way": ways, "k_shot": 1,
            "q_query": 5, "rotations": True, "test_alphabet_names": held_out,
            "exclude_alphabets": excluded}


def central_config(job: Job, held_out: str, excluded: str) -> dict[str, Any]:
    """Central training (and, for every row, the test or validation alphabets' tasks)."""
    b = job.budget
    algorithm = "fomaml" if job.row.kind == "federated" else job.row.algorithm
    return {"task": task_overrides(job, job.row.ways, held_out, excluded),
            "meta": {"algorithm": algorithm, "inner_lr": job.inner_lr,
                     "inner_steps": 1, "eval_steps": 5},
            "train": {"seed": job.seed, "meta_batch": b.central_meta_batch,
                      "iterations": (b.sweep_episodes if job.stage == "sweep"
                                     else b.episodes(job.row.ways)) // b.central_meta_batch}}


def federated_config(job: Job, batched: bool | None = None) -> dict[str, Any]:
    """The run's config: held-out devices hold the VALIDATION alphabet (its curve and the
    cost-to-target columns), the test alphabets are excluded from the run entirely;
    ``batched``: ``train.batched`` (None: the default, ``auto``)."""
    b, r = job.budget, job.row
    partition, devices, _ = PARTITIONS[r.partition]
    held = 1 if partition == "alphabet" else 2  # the validation set is one alphabet
    per_round = b.devices_per_round * b.episodes_per_device
    task = task_overrides(job, r.ways, VALIDATION, TEST)
    task.update(augment=True, partition=partition)
    episodes = b.sweep_episodes if job.stage == "sweep" else b.episodes(r.ways)
    return {"task": task,
            "meta": {"inner_lr": job.inner_lr, "inner_steps": 1, "eval_steps": 5},
            "federation": {"algorithm": r.algorithm, "num_devices": devices + held,
                           "num_held_out": held, "rounds": episodes // per_round,
                           "fraction_train": 0.0, "min_train_devices": b.devices_per_round,
                           "meta_batch": b.episodes_per_device, "eval_every": b.eval_every,
                           "eval_episodes": b.val_episodes,
                           **({"server_lr": job.server_lr}
                              if r.algorithm.startswith("fedmeta") else {})},
            "fleet": {"tiers": "phone:1.0:0:1.0", "policy": "wait"},  # always available: clock only
            "simulation": {"ray_cpus": 1},
            "train": {"seed": job.seed, **({} if batched is None else {"batched": batched})}}


def run_job(job: Job, folder: Path, batched: bool | None = None) -> dict[str, Any]:
    """Train ``job`` and score it: on the test alphabets (final) or validation (sweep);
    a federated job with ``train.batched = batched`` (None: ``auto``)."""
    import torch

    torch.set_num_threads(1)
    from fedmeta import config as cfgmod
    from fedmeta.checkpoint import Checkpoint
    from fedmeta.federated import FEDERATED_ALGORITHMS, adapt_steps
    from fedmeta.meta import MetaTrainer, build_learner
    from fedmeta.models import build_model
    from fedmeta.tasks.factory import build_tasks

    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    record: dict[str, Any] = {"job": job.key, "row": asdict(job.row), "seed": job.seed,
                              "inner_lr": job.inner_lr, "server_lr": job.server_lr,
                              "stage": job.stage}
    test_on = VALIDATION if job.stage == "sweep" else TEST
    excluded = TEST if job.stage == "sweep" else VALIDATION
    held_out = cfgmod.from_dict(central_config(job, test_on, excluded))
    tasks = build_tasks(held_out.task, seed=job.seed)
    if job.row.kind == "federated":
        import fedmeta

        fed_cfg = cfgmod.from_dict(federated_config(job, batched))
        frame = fedmeta.simulate(fed_cfg, out=folder / "run", progress=False, overwrite=True)
        checkpoint = frame.attrs["checkpoint"]
        learner = checkpoint.learner()
        params = checkpoint.params
        algo = FEDERATED_ALGORITHMS[job.row.algorithm]
        steps = adapt_steps(algo, 1, 5, True)
        record["curve"] = curve(frame)
        record["summary"] = {k: frame.attrs["summary"].get(k)
                             for k in ("bytes_down", "bytes_up", "sim_time_s", "wall_s")}
        record["episodes"] = fed_cfg.federation.rounds * job.budget.devices_per_round \
            * job.budget.episodes_per_device
    else:
        torch.manual_seed(job.seed)
        model = build_model(tasks.model, **tasks.model_kwargs)
        learner = build_learner(job.row.algorithm, model, inner_lr=job.inner_lr,
                                inner_steps=1, eval_steps=5)
        steps = 5
        trainer = MetaTrainer(learner, held_out.train.meta_lr, "adam")
        params = trainer.params
        record["episodes"] = 0
        if job.row.kind == "central":
            params = trainer.train(tasks.train, held_out.train.iterations,
                                   held_out.train.meta_batch, seed=job.seed, progress=False)
            record["episodes"] = held_out.train.iterations * held_out.train.meta_batch
        checkpoint = Checkpoint(job.row.algorithm, tasks.model, tasks.model_kwargs,
                                {"inner_lr": job.inner_lr, "inner_steps": 1,
                                 "eval_steps": 5}, params, tasks.info)
    record["train_wall_s"] = round(time.perf_counter() - start, 1)
    record["scores"] = score(learner, params, tasks, held_out.task, job, steps)
    record["wall_s"] = round(time.perf_counter() - start, 1)
    if job.row.kind != "init":
        checkpoint.save(folder / "checkpoint.pt")
    partial = folder / "job.json.partial"  # job.json appears whole or not at all
    partial.write_text(json.dumps(record, indent=1))
    partial.replace(folder / "job.json")
    return record


def score(learner: Any, params: dict, tasks: Any, task: Any, job: Job, steps: int
          ) -> dict[str, Any]:
    """Per-episode post-adaptation accuracy on the held-out alphabets of ``task`` (same
    episodes for every row: seeds fixed here), and Lake's within-alphabet runs for 20-way
    models."""
    from fedmeta.meta.evaluation import evaluate_source
    from fedmeta.tasks.factory import omniglot_split
    from fedmeta.tasks.within_alphabet import WithinAlphabetSource

    b = job.budget
    n = b.test_episodes_5 if job.row.ways == 5 else b.test_episodes_20
    out = {}
    scores = evaluate_source(learner, params, tasks.test, episodes=n, batch_size=20,
                             seed=10_000 + job.row.ways, steps=steps)
    out["standard"] = {m: scores[m].round(5).tolist() for m in ("pre_acc", "post_acc")}
    if job.row.ways == 20:
        data = omniglot_split(task, job.seed)[1]
        lake = evaluate_source(learner, params, WithinAlphabetSource(data, 20),
                               episodes=b.lake_runs, batch_size=20, seed=20_000, steps=steps)
        out["lake"] = {"post_acc": lake["post_acc"].round(5).tolist()}
    return out


def curve(frame: Any) -> list[dict[str, float]]:
    """Validation scores by round, with cumulative bytes and simulated time."""
    ev = frame[frame["source"] == "eval"]
    cols = [c for c in ("round", "post_acc", "bytes_total", "sim_time_s") if c in ev]
    return ev[cols].astype(float).to_dict("records")


def run_all(jobs: list[Job], out: Path, workers: int, run: bool = True
            ) -> list[dict[str, Any]]:
    """Every job's record: reused from ``out/jobs`` when it finished before with the same
    protocol, otherwise run (``workers`` processes; ``run=False``: left out)."""
    records, todo = [], []
    for job in jobs:
        path = out / "jobs" / job.key / "job.json"
        record = json.loads(path.read_text()) if path.is_file() else None
        if record and record["inner_lr"] == job.inner_lr and (
                job.row.kind != "federated" or record["server_lr"] == job.server_lr):
            records.append(record)
        else:
            todo.append(job)
    print(f"{len(records)} jobs done before, {len(todo)} to run", flush=True)
    if not todo or not run:
        return records
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spawn = multiprocessing.get_context("spawn")  # not fork: the parent may hold torch/Ray
    with ProcessPoolExecutor(max_workers=workers, mp_context=spawn) as pool:
        futures = {pool.submit(run_job, job, out / "jobs" / job.key): job for job in todo}
        for done, fut in enumerate(as_completed(futures), 1):
            job = futures[fut]
            record = fut.result()
            records.append(record)
            acc = np.mean(record["scores"]["standard"]["post_acc"])
            print(f"[{done}/{len(todo)}] {job.key}: test-set acc {acc:.3f} "
                  f"({record['wall_s']:.0f} s)", flush=True)
    return records


def sweep_jobs(budget: Budget, data_dir: str) -> list[Job]:
    """The sweep of the inner step: central first-order MAML, 5-way, scored on the
    validation alphabet (none when the grid has one point: nothing to choose)."""
    if len(budget.sweep_grid) == 1:
        return []
    row = Row("central first-order MAML", "central", "fomaml", 5)
    return [Job(row, 0, inner, 0.0, budget, data_dir, "sweep") for inner in budget.sweep_grid]


def server_sweep_jobs(budget: Budget, data_dir: str, inner_lr: float) -> list[Job]:
    """The sweep of the federated server Adam step at the chosen inner step: fedmeta-fomaml
    on four drawers per device, 5-way, scored on the validation alphabet (none when the grid
    has one point)."""
    if len(budget.server_grid) == 1:
        return []
    row = Row("fedmeta-fomaml (drawer4)", "federated", "fedmeta-fomaml", 5, "drawer4")
    return [Job(row, 0, inner_lr, server, budget, data_dir, "sweep")
            for server in budget.server_grid]


def best(records: list[dict], field: str, default: float) -> float:
    """``field`` of the sweep run with the best validation accuracy (``default``: none ran)."""
    if not records:
        return default
    return max(records, key=lambda r: np.mean(r["scores"]["standard"]["post_acc"]))[field]


def protocol(budget: Budget, quick: bool) -> dict[str, Any]:
    return {"test_alphabets": TEST, "validation_alphabet": VALIDATION, "quick": quick,
            "budget": json.loads(json.dumps(asdict(budget))),
            "targets": {str(k): v for k, v in TARGETS.items()}}


def host() -> dict[str, str]:
    return {"cpu": cpu_name(), "cores": str(os.cpu_count()),
            "python": platform.python_version()}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="", help="folder of Omniglot zips (default: "
                   "$FEDMETA_OMNIGLOT_DIR, else the cache of `fedmeta data download`)")
    p.add_argument("--out", type=Path, default=Path("runs/leaderboard"))
    p.add_argument("--quick", action="store_true",
                   help="tiny budgets and three rows (CI): checks the machinery and that "
                        "meta-learning beats fine-tuning the initial model")
    p.add_argument("--workers", type=int, default=1, help="training runs at once")
    p.add_argument("--kinds", default="init,central,federated",
                   help="comma-separated row kinds to run (default: all); e.g. run the "
                        "central rows in one invocation and the federated in another")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="run only these of the protocol's seeds (default: all)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the table from the jobs finished so far in --out "
                        "(e.g. while another invocation is still running)")
    p.add_argument("--readme", type=Path, help="also write the table into this README "
                   "between its leaderboard markers")
    args = p.parse_args(argv)
    if args.workers < 1:
        p.error(f"--workers {args.workers}: an integer >= 1")
    unknown = set(args.kinds.split(",")) - {"init", "central", "federated"}
    if unknown:
        p.error(f"--kinds {args.kinds}: {sorted(unknown)} not among init, central, federated")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    budget = QUICK if args.quick else Budget()
    record_path = args.out / "protocol.json"
    declared = protocol(budget, args.quick)
    if record_path.is_file() and json.loads(record_path.read_text()) != declared:
        raise SystemExit(f"{args.out} holds a leaderboard of another protocol "
                         f"({record_path}); use another --out")
    if args.report_only and not record_path.is_file():
        raise SystemExit(f"--report-only: {args.out} holds no leaderboard ({record_path})")
    args.out.mkdir(parents=True, exist_ok=True)
    record_path.write_text(json.dumps(declared, indent=1))
    start = time.perf_counter()
    run = not args.report_only
    inner_sweep = run_all(sweep_jobs(budget, args.data_dir), args.out, args.workers, run)
    inner_lr = best(inner_sweep, "inner_lr", budget.sweep_grid[0])
    print(f"sweep: inner step {inner_lr} (validation: {VALIDATION})", flush=True)
    server_sweep = run_all(server_sweep_jobs(budget, args.data_dir, inner_lr), args.out,
                           args.workers, run)
    server_lr = best(server_sweep, "server_lr", budget.server_grid[0])
    print(f"sweep: server Adam step {server_lr} (validation: {VALIDATION})", flush=True)
    # headline rows at every seed (federated first: they take longest), then the others
    rows_ = rows(args.quick)
    headline = sorted((r for r in rows_ if r.headline), key=lambda r: r.kind != "federated")
    rest = [r for r in rows_ if not r.headline]
    first, *others = budget.seeds
    order = [(seed, row) for seed in budget.seeds for row in headline] \
        + [(first, row) for row in rest] + [(seed, row) for seed in others for row in rest]
    kinds = set(args.kinds.split(","))
    order = [(seed, row) for seed, row in order if row.kind in kinds
             and (args.seeds is None or seed in args.seeds)]
    records = run_all([Job(row, seed, inner_lr, server_lr, budget, args.data_dir)
                       for seed, row in order], args.out, args.workers, run)
    given = [a for a in (sys.argv[1:] if argv is None else argv) if a != "--report-only"]
    command = "python simulations/leaderboard.py " + " ".join(given)
    write_report(args.out, records, inner_sweep + server_sweep, declared, {
        "command": command, "wall_s_this_invocation": round(time.perf_counter() - start),
        "host": host(), "inner_lr": inner_lr, "server_lr": server_lr,
        "git": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=Path(__file__).parent).stdout.strip()},
        rows(args.quick), args.readme)


if __name__ == "__main__":
    main()
