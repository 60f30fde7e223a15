"""Privacy-utility trade-off of federated meta-learning on Omniglot partitioned by drawer.

For each noise multiplier (0: the non-private run, no clipping), one federated run on Ray
with client-level DP (fixed clipping, central noise, Opacus RDP accountant), then:

- epsilon spent (at ``--delta``) and held-out devices' post-adaptation accuracy;
- loss-threshold membership inference against the meta-model: were these tasks (from the
  training devices' alphabets) in training, against tasks of held-out alphabets;
- loss-threshold and LiRA against devices' adapted models: which examples of a held-out
  device's task were its support set (local adaptation, which meta-update DP does not
  cover).

Every AUC comes with a 95% BCa bootstrap interval and every TPR at 1% FPR with the
Clopper-Pearson interval of the members above the threshold (and the threshold's FPR on
the non-members), over hundreds of non-members a side (``fedmeta.privacy.attacks.metrics``).

Writes ``table.csv``, ``table.md``, ``privacy_utility.png`` and ``study.json`` to ``--out``.

    FEDMETA_OMNIGLOT_DIR=../shared/data/omniglot python simulations/privacy_study.py
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import torch

from fedmeta import config
from fedmeta.app.simulation import simulate
from fedmeta.privacy.attacks import lira, loss_threshold
from fedmeta.privacy.attacks.targets import adapted_model_stats, task_losses
from fedmeta.tasks.episode import sample_batch, stack_episodes
from fedmeta.tasks.factory import build_device_tasks

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--noise", type=float, nargs="+", default=[0.0, 0.3, 0.7, 1.5],
                   help="noise multipliers (0: the non-private run, no clipping)")
    p.add_argument("--clip-norm", type=float, default=0.5, help="fixed clip norm")
    p.add_argument("--delta", type=float, default=1e-3, help="delta of the reported epsilon")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--devices", type=int, default=12, help="devices, held-out included")
    p.add_argument("--held-out", type=int, default=2)
    p.add_argument("--per-round", type=int, default=5, help="training devices per round")
    p.add_argument("--meta-batch", type=int, default=4, help="episodes per local step")
    p.add_argument("--attack-tasks", type=int, default=500,
                   help="tasks per side, meta-model attack (hundreds: TPR at 1%% FPR)")
    p.add_argument("--lira-tasks", type=int, default=100,
                   help="held-out tasks for the adapted-model attacks (n_way members and "
                        "n_way * q_query non-members each)")
    p.add_argument("--shadows", type=int, default=8, help="LiRA shadow adaptations")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/privacy_study"))
    return p.parse_args()


def run_config(args: argparse.Namespace, noise: float) -> config.Config:
    num_train = args.devices - args.held_out
    privacy = [] if noise == 0 else [
        "privacy.clipping=fixed", f"privacy.clip_norm={args.clip_norm}", "privacy.noise=central",
        f"privacy.noise_multiplier={noise}", f"privacy.delta={args.delta}"]
    return config.load(overrides=[
        "task.kind=omniglot", "task.partition=drawer", "task.n_way=5", "task.k_shot=1",
        "task.q_query=1", "meta.inner_lr=0.4", "meta.inner_steps=1", "meta.eval_steps=3",
        "federation.algorithm=fedmeta-fomaml", f"federation.num_devices={args.devices}",
        f"federation.num_held_out={args.held_out}", f"federation.rounds={args.rounds}",
        f"federation.fraction_train={args.per_round / num_train}",
        f"federation.min_train_devices={args.per_round}",
        f"federation.meta_batch={args.meta_batch}", f"federation.eval_every={args.rounds}",
        "federation.eval_episodes=25", "simulation.ray_cpus=2", f"train.seed={args.seed}",
        *privacy])


def tasks_of(cfg: config.Config, devices: range, count: int, seed: int):
    """``count`` tasks spread over ``devices``' own task sources."""
    fed, rng = cfg.federation, np.random.default_rng(seed)
    per_device = [sample_batch(build_device_tasks(cfg.task, d, fed.num_devices,
                                                  fed.num_held_out, seed=cfg.train.seed),
                               rng, math.ceil(count / len(devices))) for d in devices]
    return stack_episodes([e for episodes in per_device for e in episodes][:count])


def attack(cfg: config.Config, frame: pd.DataFrame, args: argparse.Namespace) -> dict:
    checkpoint = frame.attrs["checkpoint"]
    learner, params = checkpoint.learner(), checkpoint.params
    fed, steps, start = cfg.federation, cfg.meta.eval_steps, time.perf_counter()
    members = tasks_of(cfg, range(fed.num_train), args.attack_tasks, 1)
    others = tasks_of(cfg, range(fed.num_train, fed.num_devices), args.attack_tasks, 2)
    meta = loss_threshold(task_losses(learner, params, members, steps),
                          task_losses(learner, params, others, steps))
    stats = adapted_model_stats(learner, params, tasks_of(
        cfg, range(fed.num_train, fed.num_devices), args.lira_tasks, 3), steps,
        args.shadows, np.random.default_rng(4))
    adapted_loss = loss_threshold(stats.loss[stats.is_member], stats.loss[~stats.is_member])
    adapted_lira = lira(stats.target, stats.inside, stats.outside, stats.is_member)
    row = {}
    for name, result in (("meta_loss", meta), ("adapted_loss", adapted_loss),
                         ("adapted_lira", adapted_lira)):
        row.update({f"{name}_auc": result.auc, f"{name}_auc_lo": result.auc_ci[0],
                    f"{name}_auc_hi": result.auc_ci[1], f"{name}_tpr1": result.tpr_at_1pct_fpr,
                    f"{name}_tpr1_lo": result.tpr_ci[0], f"{name}_tpr1_hi": result.tpr_ci[1],
                    f"{name}_fpr": result.fpr, f"{name}_members": result.members,
                    f"{name}_nonmembers": result.nonmembers})
    return {**row, "attack_s": round(time.perf_counter() - start, 1)}


ATTACKS = (("meta_loss", "meta-model, loss threshold"),
           ("adapted_loss", "adapted model, loss threshold"),
           ("adapted_lira", "adapted model, LiRA"))


def markdown(table: pd.DataFrame) -> str:
    """Utility and each attack's AUC and TPR at 1% FPR with their 95% intervals, as GitHub
    markdown (the full table is ``table.csv``)."""
    heads = ["noise z", "epsilon", "post-adaptation acc"]
    for _, label in ATTACKS:
        heads += [f"{label} AUC", f"{label} TPR@1%FPR"]
    lines = ["| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for _, row in table.iterrows():
        cells = [f"{row['noise_multiplier']:g}", f"{row['epsilon']:.3g}",
                 f"{row['post_acc']:.3f} ± {row['post_acc_ci95']:.3f}"]
        for name, _ in ATTACKS:
            cells += [f"{row[f'{name}_auc']:.3f} [{row[f'{name}_auc_lo']:.3f}, "
                      f"{row[f'{name}_auc_hi']:.3f}]",
                      f"{row[f'{name}_tpr1']:.3f} [{row[f'{name}_tpr1_lo']:.3f}, "
                      f"{row[f'{name}_tpr1_hi']:.3f}]"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(table: pd.DataFrame, path: Path) -> None:
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    x = table["noise_multiplier"]
    left.errorbar(x, table["post_acc"], yerr=table["post_acc_ci95"], marker="o")
    left.set(xlabel="noise multiplier z", ylabel="held-out post-adaptation accuracy",
             title="utility")
    for _, row in table.iterrows():
        eps = "inf" if not math.isfinite(row["epsilon"]) else f"{row['epsilon']:.1f}"
        left.annotate(f"eps={eps}", (row["noise_multiplier"], row["post_acc"]),
                      textcoords="offset points", xytext=(4, 6), fontsize=8)
    for name, label in ATTACKS:
        auc = table[f"{name}_auc"]
        right.errorbar(x, auc, yerr=[auc - table[f"{name}_auc_lo"],
                                     table[f"{name}_auc_hi"] - auc],
                       marker="o", capsize=3, label=label)
    right.axhline(0.5, color="grey", linestyle=":", label="chance")
    right.set(xlabel="noise multiplier z", ylabel="membership AUC (95% bootstrap CI)",
              title="leakage")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)
    rows, start = [], time.perf_counter()
    for noise in args.noise:
        cfg = run_config(args, noise)
        frame = simulate(cfg, args.out / f"z{noise:g}", progress=False)
        summary = frame.attrs["summary"]
        epsilon = summary.get("privacy", {}).get("epsilon")
        row = {"noise_multiplier": noise, "epsilon": math.inf if epsilon is None else epsilon,
               "post_acc": summary["final_post_acc"],
               "post_acc_ci95": summary["final_post_acc_ci95"], **attack(cfg, frame, args),
               "wall_s": summary["wall_s"]}
        rows.append(row)
        print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()},
              flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "table.md").write_text(markdown(table))
    plot(table, args.out / "privacy_utility.png")
    (args.out / "study.json").write_text(json.dumps(
        {"command": " ".join(["python", *sys.argv]),
         "args": {k: str(v) for k, v in vars(args).items()}, "rows": rows,
         "total_wall_s": round(time.perf_counter() - start, 1)}, indent=2) + "\n")
    print(table.to_string(index=False))


if __name__ == "__main__":
    main()
