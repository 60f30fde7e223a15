"""bfloat16 against float32 (``train.precision``) on Omniglot: what reduced precision costs in
accuracy, and what it saves in time, for the first-order learners it applies to.

The protocol is the leaderboard's central 5-way 1-shot one (``leaderboard.py``: the same
training alphabets with rotations, inner step 0.1 as its sweep chose, meta-batch 8, Adam
0.001, 1 inner step in training and 5 in scoring; test alphabets Greek and Korean, 200
episodes, the same for every run; Latin, the validation alphabet, excluded), declared
before the runs:

- learners: first-order MAML and Prototypical Networks (the leaderboard's first-order
  rows) at its budget of 1,200 training episodes (150 meta-updates of 8), and first-order
  MAML at four times that budget (4,800 episodes), to see whether a cost early in training
  stays or fades;
- seeds 0, 1, 2 (``--seeds``); for each learner, budget and seed one run in float32 and
  one in bfloat16
  from the same initial model on the same episodes;
- every final model scored in both precisions on the same test episodes: the training cost
  is the bfloat16-trained model against the float32-trained one, each scored in its own
  precision (paired by seed: t-based 95% CI over seeds); the evaluation-only cost is one
  model scored both ways (paired by episode, pooled over seeds: normal 95% CI);
- training time per run on one thread (``--workers`` runs at once share the host: compare
  times within a study only; ``benchmarks/precision.py`` measures the speed paired).

Writes to ``--out``: ``jobs/<job>/job.json`` (one per run; finished jobs are reused when the
study runs again with the same protocol), ``precision_study.md`` and ``.json`` (the table,
the protocol, the host and the command) and ``precision_study.png`` (test accuracy by
learner, budget and precision, 95% CIs over seeds). Checkpoints are not kept.

    python simulations/precision_study.py --data-dir ../shared/data/omniglot --workers 2
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
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
from leaderboard import TEST, VALIDATION  # noqa: E402
from leaderboard_report import paired_margin, seed_ci  # noqa: E402

PRECISIONS = ("float32", "bfloat16")
LEARNERS = {"fomaml": "first-order MAML", "protonet": "Prototypical Networks"}


@dataclass(frozen=True)
class Run:
    """One training run: a learner at a budget, a seed and a precision."""

    algorithm: str
    episodes: int
    seed: int
    precision: str

    @property
    def key(self) -> str:
        return f"{self.algorithm}-{self.episodes}ep-seed{self.seed}-{self.precision}"


def plan(seeds: tuple[int, ...], quick: bool) -> list[Run]:
    """The protocol's runs (``quick``: one seed, tiny budgets, for a check of the machinery);
    the long budget first (it takes longest)."""
    base = 80 if quick else 1200
    settings = [("fomaml", 4 * base), ("fomaml", base), ("protonet", base)]
    return [Run(a, e, s, p) for a, e in settings for s in seeds for p in PRECISIONS]


def protocol(seeds: tuple[int, ...], quick: bool, test_episodes: int) -> dict[str, Any]:
    return {"runs": [asdict(r) for r in plan(seeds, quick)], "inner_lr": INNER_LR,
            "test_episodes": test_episodes, "test_alphabets": TEST,
            "excluded_alphabet": VALIDATION, "quick": quick}


def train_and_score(run: Run, data_dir: str, test_episodes: int, folder: Path
                    ) -> dict[str, Any]:
    """Train ``run`` on one thread; score its model in both precisions; write job.json."""
    import torch

    torch.set_num_threads(1)
    from fedmeta.meta import MetaTrainer, build_learner
    from fedmeta.meta.evaluation import evaluate_source

    cfg, tasks, model = central_run(run.algorithm, LEARNERS[run.algorithm], run.episodes,
                                    run.seed, data_dir)  # one initial model, both precisions

    def learner(precision: str) -> Any:
        return build_learner(run.algorithm, model, inner_lr=INNER_LR, inner_steps=1,
                             eval_steps=5, precision=precision)

    trainer = MetaTrainer(learner(run.precision), cfg.train.meta_lr, "adam")
    start = time.perf_counter()
    params = trainer.train(tasks.train, cfg.train.iterations, cfg.train.meta_batch,
                           seed=run.seed, progress=False)
    train_s = time.perf_counter() - start
    scores, score_s = {}, {}
    for precision in PRECISIONS:
        start = time.perf_counter()
        scores[precision] = evaluate_source(learner(precision), params, tasks.test,
                                            episodes=test_episodes, batch_size=20,
                                            seed=10_005, steps=5)["post_acc"].round(5).tolist()
        score_s[precision] = round(time.perf_counter() - start, 1)
    record = {"run": asdict(run), "train_s": round(train_s, 1), "score_s": score_s,
              "iterations": cfg.train.iterations, "post_acc": scores}
    save_job(folder, record)
    return record


def run_all(runs: list[Run], args: argparse.Namespace) -> list[dict[str, Any]]:
    """Every run's record: reused from ``--out/jobs`` or trained (``--workers`` at once)."""
    records, todo = [], []
    for run in runs:
        path = args.out / "jobs" / run.key / "job.json"
        (records.append(json.loads(path.read_text())) if path.is_file() else todo.append(run))
    print(f"{len(records)} runs done before, {len(todo)} to run", flush=True)
    if not todo:
        return records
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    spawn = multiprocessing.get_context("spawn")  # not fork: torch's threads
    with ProcessPoolExecutor(max_workers=args.workers, mp_context=spawn) as pool:
        futures = {pool.submit(train_and_score, run, args.data_dir, args.test_episodes,
                               args.out / "jobs" / run.key): run for run in todo}
        for done, fut in enumerate(as_completed(futures), 1):
            record = fut.result()
            records.append(record)
            acc = np.mean(record["post_acc"][futures[fut].precision])
            print(f"[{done}/{len(todo)}] {futures[fut].key}: test acc {acc:.3f} "
                  f"(training {record['train_s']:.0f} s)", flush=True)
    return records


def summarize(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per learner and budget: accuracy by (trained, scored) precision, the paired
    costs and the training times."""
    by = {(r["run"]["algorithm"], r["run"]["episodes"], r["run"]["seed"],
           r["run"]["precision"]): r for r in records}
    out = []
    for algorithm, episodes in dict.fromkeys((a, e) for a, e, _, _ in by):
        seeds = sorted({s for a, e, s, _ in by if (a, e) == (algorithm, episodes)
                        and all((a, e, s, p) in by for p in PRECISIONS)})
        if not seeds:
            continue
        run = {(s, p): by[(algorithm, episodes, s, p)] for s in seeds for p in PRECISIONS}
        acc = {(t, e): seed_ci([float(np.mean(run[(s, t)]["post_acc"][e])) for s in seeds])
               for t in PRECISIONS for e in PRECISIONS}
        training = seed_ci([float(np.mean(run[(s, "bfloat16")]["post_acc"]["bfloat16"])
                                  - np.mean(run[(s, "float32")]["post_acc"]["float32"]))
                            for s in seeds])
        evaluation = paired_margin([run[(s, "float32")]["post_acc"]["bfloat16"] for s in seeds],
                                   [run[(s, "float32")]["post_acc"]["float32"] for s in seeds])
        times = {p: float(np.median([run[(s, p)]["train_s"] for s in seeds]))
                 for p in PRECISIONS}
        speed = float(np.median([run[(s, "float32")]["train_s"] / run[(s, "bfloat16")]["train_s"]
                                 for s in seeds]))
        out.append({"algorithm": algorithm, "episodes": episodes, "seeds": seeds,
                    "accuracy": {f"{t}->{e}": v for (t, e), v in acc.items()},
                    "training_cost": training, "evaluation_cost": evaluation,
                    "train_s_median": times, "train_speed": speed})
    return out


def write_report(out: Path, entries: list[dict[str, Any]], meta: dict[str, Any]) -> None:
    lines = [*report_head(__doc__ or "", "bfloat16 against float32 on Omniglot "
                          "(`train.precision`)", meta,
                          f"{meta['workers']} runs at once, one torch thread each"),
             "| learner | training episodes | seeds | test acc %: float32-trained, scored in "
             "float32 | bfloat16-trained, scored in bfloat16 | training cost, points "
             "(paired by seed) | float32-trained, scored in bfloat16 | evaluation cost, "
             "points (paired by episode) | training s, float32 / bfloat16 (median) | "
             "float32 / bfloat16 time |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for e in entries:
        a = e["accuracy"]
        lines.append(
            f"| {LEARNERS[e['algorithm']]} | {e['episodes']} | {len(e['seeds'])} | "
            f"{pct(a['float32->float32'])} | {pct(a['bfloat16->bfloat16'])} | "
            f"{points(e['training_cost'])} | {pct(a['float32->bfloat16'])} | "
            f"{points(e['evaluation_cost'])} | {e['train_s_median']['float32']:.0f} / "
            f"{e['train_s_median']['bfloat16']:.0f} | {e['train_speed']:.2f} |")
    lines += ["", "Intervals: accuracy and training cost, t-based 95% CI over seeds; evaluation "
              "cost, normal 95% CI over the episodes of every seed (the same episodes scored "
              "twice). A cost is negative when bfloat16 scores lower."]
    (out / "precision_study.md").write_text("\n".join(lines) + "\n")
    (out / "precision_study.json").write_text(json.dumps({**meta, "entries": entries},
                                                         indent=1))
    plot(entries, out / "precision_study.png")


def plot(entries: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 0.9 + 0.9 * len(entries)))
    labels = []
    for i, e in enumerate(entries):
        for j, (key, colour) in enumerate((("float32->float32", "tab:blue"),
                                           ("bfloat16->bfloat16", "tab:orange"))):
            mean, ci = e["accuracy"][key]
            ax.errorbar(100 * mean, i + 0.2 * (j - 0.5),
                        xerr=None if math.isnan(ci) else 100 * ci, fmt="o", color=colour,
                        capsize=3, label=key.split("->")[0] if i == 0 else None)
        labels.append(f"{LEARNERS[e['algorithm']]}\n{e['episodes']} episodes")
    ax.set(yticks=range(len(entries)), yticklabels=labels, xlabel="test accuracy % (95% CI "
           "over seeds), 5-way 1-shot", title="Omniglot: trained and scored in each precision")
    ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def cpu_flags() -> str:
    """The CPU's bfloat16 units, if any."""
    return ", ".join(f for f in isa() if f.endswith("bf16")) or "no bfloat16 units"


def main(argv: list[str] | None = None) -> None:
    p = study_parser(__doc__ or "", "runs/precision_study")
    p.add_argument("--workers", type=int, default=1, help="training runs at once")
    args = p.parse_args(argv)
    at_least_one(p, args, "workers", "test_episodes")
    seeds = tuple(args.seeds)
    declared = protocol(seeds, args.quick, args.test_episodes)
    declare(args.out, declared)
    start = time.perf_counter()
    records = run_all(plan(seeds, args.quick), args)
    write_report(args.out, summarize(records), {
        **report_facts("precision_study.py", argv, start), "isa": cpu_flags(),
        "workers": args.workers, "seeds": list(seeds), "protocol": declared})
    print((args.out / "precision_study.md").read_text())


if __name__ == "__main__":
    main()
