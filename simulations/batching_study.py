"""Batched episodes against the per-episode loop on Omniglot: the same accuracy, and the wall
time each path takes for a whole training run (issue 20's "before/after" central run).

The protocol is the leaderboard's central 5-way 1-shot one (``leaderboard.py``: the same
training alphabets with rotations, inner step 0.1, meta-batch 8, Adam 0.001, 1 inner step
in training and 5 in scoring; test alphabets Greek and Korean, 200 episodes, the same for
every run; Latin, the validation alphabet, excluded), declared before the runs:

- learners: second-order and first-order MAML at the leaderboard's budget of 1,200 training
  episodes (150 meta-updates of 8);
- seeds 0, 1, 2 (``--seeds``); for each learner and seed one run with ``batched=False``
  (the loop: fedmeta before batching) and one with ``batched=True``, from the same initial
  model on the same episodes, at ``--threads`` torch threads (2: where the CPU default
  batched until 2026-12-03), one run at a time (the point is their times);
- each final model scored on the test episodes by the path that trained it: the accuracy
  difference is paired by seed (t-based 95% CI over seeds); the time ratio (loop / batched
  wall time of training, above 1 when batching is faster) is the median over seeds.

Writes to ``--out``: ``jobs/<job>/job.json`` (one per run; finished jobs are reused when the
study runs again with the same protocol), ``batching_study.md`` and ``.json`` (the table,
the protocol, the host and the command). Checkpoints are not kept.

    python simulations/batching_study.py --data-dir ../shared/data/omniglot --threads 2
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from arguments import at_least_one  # noqa: E402  (benchmarks/arguments.py)
from central_study import (INNER_LR, central_run, declare, pct, points,  # noqa: E402
                           report_facts, report_head, save_job, study_parser)
from host import isa  # noqa: E402  (benchmarks/host.py)
from leaderboard import TEST, VALIDATION, Budget  # noqa: E402
from leaderboard_report import seed_ci  # noqa: E402

LEARNERS = {"maml": "MAML (second order)", "fomaml": "first-order MAML"}
PATHS = {False: "loop", True: "batched"}


@dataclass(frozen=True)
class Run:
    """One training run: a learner at a budget and a seed, on one path."""

    algorithm: str
    episodes: int
    seed: int
    batched: bool

    @property
    def key(self) -> str:
        return f"{self.algorithm}-{self.episodes}ep-seed{self.seed}-{PATHS[self.batched]}"


def plan(seeds: tuple[int, ...], quick: bool) -> list[Run]:
    """The protocol's runs (``quick``: tiny budgets, for a check of the machinery)."""
    episodes = 16 if quick else Budget().episodes_5
    return [Run(a, episodes, s, b) for a in LEARNERS for s in seeds for b in PATHS]


def protocol(seeds: tuple[int, ...], quick: bool, test_episodes: int,
             threads: int) -> dict[str, Any]:
    return {"runs": [asdict(r) for r in plan(seeds, quick)], "inner_lr": INNER_LR,
            "test_episodes": test_episodes, "test_alphabets": TEST,
            "excluded_alphabet": VALIDATION, "threads": threads, "quick": quick}


def train_and_score(run: Run, data_dir: str, test_episodes: int, threads: int,
                    folder: Path) -> dict[str, Any]:
    """Train ``run`` at ``threads`` torch threads, score its model; write job.json."""
    import torch

    torch.set_num_threads(threads)
    from fedmeta.meta import MetaTrainer, build_learner
    from fedmeta.meta.evaluation import evaluate_source

    cfg, tasks, model = central_run(run.algorithm, LEARNERS[run.algorithm], run.episodes,
                                    run.seed, data_dir)  # one initial model, both paths
    learner = build_learner(run.algorithm, model, inner_lr=INNER_LR, inner_steps=1,
                            eval_steps=5, batched=run.batched)
    trainer = MetaTrainer(learner, cfg.train.meta_lr, "adam")
    start = time.perf_counter()
    params = trainer.train(tasks.train, cfg.train.iterations, cfg.train.meta_batch,
                           seed=run.seed, progress=False)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    scores = evaluate_source(learner, params, tasks.test, episodes=test_episodes,
                             batch_size=20, seed=10_005, steps=5)["post_acc"]
    record = {"run": asdict(run), "threads": threads, "train_s": round(train_s, 1),
              "score_s": round(time.perf_counter() - start, 1),
              "iterations": cfg.train.iterations, "post_acc": scores.round(5).tolist()}
    save_job(folder, record)
    return record


def run_all(runs: list[Run], args: argparse.Namespace,
            job: Callable[..., dict[str, Any]] = train_and_score) -> list[dict[str, Any]]:
    """Every run's record: reused from ``--out/jobs`` or made by ``job`` (``run, data_dir,
    test_episodes, threads, folder``: writes ``folder/job.json``), one at a time, each in a
    fresh process (``OMP_NUM_THREADS`` set before torch starts there)."""
    os.environ["OMP_NUM_THREADS"] = str(args.threads)  # what the spawned processes inherit
    spawn = multiprocessing.get_context("spawn")  # not fork: this process may hold torch
    records = []
    with ProcessPoolExecutor(max_workers=1, mp_context=spawn, max_tasks_per_child=1) as pool:
        for done, run in enumerate(runs, 1):
            path = args.out / "jobs" / run.key / "job.json"
            if not path.is_file():
                pool.submit(job, run, args.data_dir, args.test_episodes, args.threads,
                            path.parent).result()
            record = json.loads(path.read_text())
            records.append(record)
            print(f"[{done}/{len(runs)}] {run.key}: test acc {np.mean(record['post_acc']):.3f} "
                  f"(training {record['train_s']:.0f} s)", flush=True)
    return records


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per learner: accuracy on each path, the paired difference, the times."""
    by = {(r["run"]["algorithm"], r["run"]["seed"], r["run"]["batched"]): r for r in records}
    out = []
    for algorithm in dict.fromkeys(a for a, _, _ in by):
        seeds = sorted({s for a, s, _ in by if a == algorithm
                        and all((a, s, b) in by for b in PATHS)})
        if not seeds:
            continue
        run = {(s, b): by[(algorithm, s, b)] for s in seeds for b in PATHS}
        acc = {PATHS[b]: seed_ci([float(np.mean(run[(s, b)]["post_acc"])) for s in seeds])
               for b in PATHS}
        difference = seed_ci([float(np.mean(run[(s, True)]["post_acc"])
                                    - np.mean(run[(s, False)]["post_acc"])) for s in seeds])
        times = {PATHS[b]: float(np.median([run[(s, b)]["train_s"] for s in seeds]))
                 for b in PATHS}
        ratio = float(np.median([run[(s, False)]["train_s"] / run[(s, True)]["train_s"]
                                 for s in seeds]))
        out.append({"algorithm": algorithm, "episodes": run[(seeds[0], False)]["run"]
                    ["episodes"], "seeds": seeds, "accuracy": acc, "difference": difference,
                    "train_s_median": times, "loop_over_batched": ratio,
                    "ratios": [round(run[(s, False)]["train_s"] / run[(s, True)]["train_s"], 2)
                               for s in seeds]})
    return out


def write_report(out: Path, entries: list[dict[str, Any]], meta: dict[str, Any],
                 doc: str = __doc__ or "", stem: str = "batching_study",
                 learners: dict[str, str] = LEARNERS) -> None:
    """``<stem>.md`` and ``.json`` in ``out``: the table, headed by ``doc``'s protocol."""
    lines = [*report_head(doc, "Batched episodes against the loop on Omniglot "
                          "(`batched`)" + (", federated" if stem.endswith("federated") else ""),
                          meta,
                          f"one run at a time, {meta['threads']} torch "
                          f"thread{'s' if meta['threads'] != 1 else ''}; load average "
                          f"{meta['load'][0]} before, {meta['load'][1]} after"),
             "| learner | training episodes | seeds | test acc %: loop | batched | batched - "
             "loop, points (paired by seed) | training s: loop / batched (median) | loop / "
             "batched time (each seed) |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for e in entries:
        lines.append(
            f"| {learners[e['algorithm']]} | {e['episodes']} | {len(e['seeds'])} | "
            f"{pct(e['accuracy']['loop'])} | {pct(e['accuracy']['batched'])} | "
            f"{points(e['difference'])} | {e['train_s_median']['loop']:.0f} / "
            f"{e['train_s_median']['batched']:.0f} | {e['loop_over_batched']:.2f} "
            f"({', '.join(f'{x:.2f}' for x in e['ratios'])}) |")
    lines += ["", "Intervals: t-based 95% CI over seeds. A time ratio above 1: batching was "
              "faster."]
    (out / f"{stem}.md").write_text("\n".join(lines) + "\n")
    (out / f"{stem}.json").write_text(json.dumps({**meta, "entries": entries}, indent=1))


def main(argv: list[str] | None = None) -> None:
    p = study_parser(__doc__ or "", "runs/batching_study")
    p.add_argument("--threads", type=int, default=2, help="torch threads of each run")
    args = p.parse_args(argv)
    at_least_one(p, args, "threads", "test_episodes")
    seeds = tuple(args.seeds)
    declared = protocol(seeds, args.quick, args.test_episodes, args.threads)
    declare(args.out, declared)
    start, load = time.perf_counter(), os.getloadavg()[0]
    records = run_all(plan(seeds, args.quick), args)
    write_report(args.out, summarize(records), {
        **report_facts("batching_study.py", argv, start),
        "isa": ", ".join(isa()) or "no AVX-512/AMX", "threads": args.threads,
        "seeds": list(seeds), "load": [round(load, 1), round(os.getloadavg()[0], 1)],
        "protocol": declared})
    print((args.out / "batching_study.md").read_text())


if __name__ == "__main__":
    main()
