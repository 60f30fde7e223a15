"""Batched episodes against the per-episode loop in a federated Omniglot run: the same
accuracy, and the wall time of the whole run (issue 20's federated "before/after" run).

The protocol is the leaderboard's federated 5-way 1-shot row `fedmeta-fomaml (drawer4)`
(``leaderboard.py``: 5 training devices of four drawers each, all 5 sampled every round, 4
episodes a device's local meta-batch, 60 rounds (1,200 training episodes), inner step 0.1,
one local step, server Adam 0.001 (the leaderboard's sweep), validation on Latin every 15
rounds; the test alphabets Greek and Korean are left out of the run, 200 test episodes, the
same for every run), declared before the runs:

- seeds 0, 1, 2 (``--seeds``); for each seed one run with ``train.batched = false`` (the
  loop: fedmeta before batching) and one with ``true``, the same config otherwise, one run
  at a time on one Ray worker (``simulation.ray_cpus = 1``), every device and the server on
  one torch thread (where ``auto`` would loop: ``true`` is what a user who sets it gets);
- each final model scored on the test episodes by the same scorer (the checkpoint's
  learner: the loop, on one thread): the accuracy difference is paired by seed (t-based 95%
  CI over seeds); the time ratio (loop / batched wall time of the whole federated run: Ray's
  start, the 60 rounds and the validation scores; above 1 when batching is faster) is the
  median over seeds.

Writes to ``--out``: ``jobs/<job>/job.json`` (one per run; finished jobs are reused when the
study runs again with the same protocol), ``batching_study_federated.md`` and ``.json``.
Checkpoints and run folders are not kept.

    python simulations/batching_study_federated.py --data-dir ../shared/data/omniglot
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from arguments import at_least_one  # noqa: E402  (benchmarks/arguments.py)
from batching_study import PATHS, Run, run_all, summarize, write_report  # noqa: E402
from central_study import INNER_LR, declare, report_facts, save_job, study_parser  # noqa: E402
from host import isa  # noqa: E402  (benchmarks/host.py)
from leaderboard import TEST, VALIDATION, Budget, Job, Row  # noqa: E402

ALGORITHM = "fedmeta-fomaml"
LEARNERS = {ALGORITHM: "FedMeta first-order MAML (4 drawers a device)"}
SERVER_LR = 0.001  # the leaderboard's sweep (simulations/results/leaderboard.md)
THREADS = 1  # each Ray device and the server


def plan(seeds: tuple[int, ...], quick: bool) -> list[Run]:
    """The protocol's runs (``quick``: 4 rounds, for a check of the machinery)."""
    budget = Budget()
    episodes = (4 if quick else 60) * budget.devices_per_round * budget.episodes_per_device
    return [Run(ALGORITHM, episodes, s, b) for s in seeds for b in PATHS]


def protocol(seeds: tuple[int, ...], quick: bool, test_episodes: int) -> dict[str, Any]:
    return {"runs": [asdict(r) for r in plan(seeds, quick)], "inner_lr": INNER_LR,
            "server_lr": SERVER_LR, "partition": "drawer4", "test_episodes": test_episodes,
            "test_alphabets": TEST, "validation_alphabet": VALIDATION, "threads": THREADS,
            "quick": quick}


def run_federated(run: Run, data_dir: str, test_episodes: int, threads: int,
                  folder: Path) -> dict[str, Any]:
    """The leaderboard's federated job for ``run`` with ``train.batched = run.batched``,
    scored on ``test_episodes``; write job.json, keep no checkpoint."""
    from leaderboard import run_job

    rounds = run.episodes // (Budget().devices_per_round * Budget().episodes_per_device)
    budget = Budget(episodes_5=run.episodes, test_episodes_5=test_episodes,
                    eval_every=min(Budget().eval_every, rounds))
    job = Job(Row(LEARNERS[ALGORITHM], "federated", ALGORITHM, 5, "drawer4"), run.seed,
              INNER_LR, SERVER_LR, budget, data_dir)
    work = folder / "work"
    done = run_job(job, work, batched=run.batched)
    record = {"run": asdict(run), "threads": threads, "train_s": done["train_wall_s"],
              "score_s": round(done["wall_s"] - done["train_wall_s"], 1),
              "rounds": rounds,
              "curve": done["curve"], "post_acc": done["scores"]["standard"]["post_acc"]}
    shutil.rmtree(work)
    save_job(folder, record)
    return record


def main(argv: list[str] | None = None) -> None:
    p = study_parser(__doc__ or "", "runs/batching_study_federated")
    args = p.parse_args(argv)
    at_least_one(p, args, "test_episodes")
    args.threads = THREADS
    seeds = tuple(args.seeds)
    declared = protocol(seeds, args.quick, args.test_episodes)
    declare(args.out, declared)
    start, load = time.perf_counter(), os.getloadavg()[0]
    records = run_all(plan(seeds, args.quick), args, run_federated)
    write_report(args.out, summarize(records), {
        **report_facts("batching_study_federated.py", argv, start),
        "isa": ", ".join(isa()) or "no AVX-512/AMX", "threads": THREADS,
        "seeds": list(seeds), "load": [round(load, 1), round(os.getloadavg()[0], 1)],
        "protocol": declared}, __doc__ or "", "batching_study_federated", LEARNERS)
    print((args.out / "batching_study_federated.md").read_text())


if __name__ == "__main__":
    main()
