"""Budget-aware against budget-agnostic FedMeta on one heterogeneous edge fleet.

The same fleet (five tiers, from a Jetson Orin Nano to a Coral Dev Board's CPU), the same
seed and the same round deadline, three policies (``fleet.policy``):

- ``partial`` (budget-aware): every device shrinks its work to fit the deadline;
- ``wait`` (budget-agnostic): full work, the round waits for the slowest participant;
- ``drop`` (budget-agnostic): full work, replies later than the deadline are dropped.

Held-out quality (post-adaptation accuracy on held-out alphabets, or MSE for sinusoid)
against simulated time, participation by tier, a markdown table, a JSON record and a plot
in ``--out``. Each run goes through ``fedmeta.simulate`` (Flower's simulation engine).

    python simulations/budget_study.py --task omniglot --data-dir ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fedmeta import simulate

TIERS = ("jetson-orin-nano:0.2:0.2, jetson-nano:0.2:0.2, phone:0.2:0.3, "
         "raspberry-pi-4:0.2:0.2, coral-dev-board:0.2:0.2")
POLICIES = {"partial": "budget-aware (partial work)", "wait": "agnostic, waits",
            "drop": "agnostic, drops late"}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["omniglot", "sinusoid"], default="omniglot")
    p.add_argument("--data-dir", default=os.environ.get("FEDMETA_OMNIGLOT_DIR", ""))
    p.add_argument("--algorithm", default="fedmeta-maml")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--deadline", type=float, default=None,
                   help="round deadline in simulated s (default: 2.5 for omniglot, 0.05 for "
                        "sinusoid)")
    p.add_argument("--eval-every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/budget_study"))
    return p.parse_args()


def config(args: argparse.Namespace, policy: str) -> dict:
    deadline = args.deadline if args.deadline is not None else (
        2.5 if args.task == "omniglot" else 0.05)
    cfg = {"train": {"seed": args.seed},
           "federation": {"algorithm": args.algorithm, "num_devices": 22, "num_held_out": 2,
                          "rounds": args.rounds, "fraction_train": 0.25, "meta_batch": 10,
                          "eval_every": args.eval_every, "eval_episodes": 50},
           "fleet": {"tiers": TIERS, "policy": policy,
                     "deadline_s": 0.0 if policy == "wait" else deadline},
           "simulation": {"num_cpus": 1}}
    if args.task == "omniglot":
        cfg["task"] = {"kind": "omniglot", "data_dir": args.data_dir, "n_way": 5, "k_shot": 1,
                       "q_query": 5, "partition": "drawer", "augment": True,
                       "test_alphabets": 2}
        cfg["meta"] = {"inner_lr": 0.4, "inner_steps": 1, "eval_steps": 3}
    return cfg


def summarize(frame: pd.DataFrame, label: str, budget_s: float, metric: str) -> dict:
    train = frame[frame["source"] == "train"].set_index("round")
    evals = frame[frame["source"] == "eval"].copy()
    evals["sim_time_s"] = [0.0 if r == 0 else train.loc[r, "sim_time_s"]
                           for r in evals["round"]]
    within = evals[evals["sim_time_s"] <= budget_s + 1e-9].iloc[-1]
    last = evals.iloc[-1]
    tiers = {c.removeprefix("participants_"): int(train[c].sum())
             for c in train.columns if c.startswith("participants_")}
    return {"policy": label, "rounds": int(last["round"]),
            "sim_time_s": float(train["sim_time_s"].iloc[-1]),
            "mean_round_s": float(train["sim_round_s"].mean()),
            f"final_post_{metric}": float(last[f"post_{metric}"]),
            f"final_post_{metric}_ci95": float(last[f"post_{metric}_ci95"]),
            f"post_{metric}_at_budget": float(within[f"post_{metric}"]),
            f"post_{metric}_at_budget_ci95": float(within[f"post_{metric}_ci95"]),
            "round_at_budget": int(within["round"]),
            "updates": int(train["devices"].sum()), "episodes": int(train["episodes"].sum()),
            "stragglers": int(train["stragglers"].sum()), "partial": int(train["partial"].sum()),
            "fallback": int(train["fallback"].sum()),
            "mb_up": float(train["sim_bytes_up"].sum() / 1e6),
            "participants": tiers, "curve": evals[["sim_time_s", f"post_{metric}",
                                                   f"post_{metric}_ci95"]].values.tolist()}


def table(rows: list[dict], metric: str, budget_s: float) -> str:
    name = "accuracy" if metric == "acc" else "MSE"
    tiers = list(rows[0]["participants"])
    head = (f"| policy | rounds | simulated s | mean round s | final post-{name} | "
            f"post-{name} at {budget_s:.0f} s (round) | updates | episodes | stragglers | "
            f"partial | MB up | " + " | ".join(tiers) + " |")
    lines = [head, "|" + "---|" * (11 + len(tiers))]
    for r in rows:
        lines.append(
            f"| {r['policy']} | {r['rounds']} | {r['sim_time_s']:.0f} | {r['mean_round_s']:.1f} | "
            f"{r[f'final_post_{metric}']:.3f} ± {r[f'final_post_{metric}_ci95']:.3f} | "
            f"{r[f'post_{metric}_at_budget']:.3f} ± {r[f'post_{metric}_at_budget_ci95']:.3f} "
            f"({r['round_at_budget']}) | {r['updates']} | {r['episodes']} | "
            f"{r['stragglers']} | {r['partial']} | {r['mb_up']:.1f} | "
            + " | ".join(str(r["participants"][t]) for t in tiers) + " |")
    return "\n".join(lines)


def plot(rows: list[dict], metric: str, path: Path) -> None:
    fig = Figure(figsize=(11, 4))
    FigureCanvasAgg(fig)
    quality, tiers = fig.subplots(1, 2)
    for r in rows:
        t, y, ci = zip(*r["curve"])
        quality.errorbar(t, y, yerr=ci, fmt="o-", capsize=3, label=r["policy"])
    quality.set_xlabel("simulated time (s)")
    quality.set_ylabel("held-out post-adaptation " + ("accuracy" if metric == "acc" else "MSE"))
    quality.grid(alpha=0.3)
    quality.legend()
    names = list(rows[0]["participants"])
    width = 0.8 / len(rows)
    for i, r in enumerate(rows):
        tiers.bar([j + i * width for j in range(len(names))],
                  [r["participants"][n] for n in names], width, label=r["policy"])
    tiers.set_xticks([j + width for j in range(len(names))], names, rotation=20, fontsize=8)
    tiers.set_ylabel("updates aggregated (all rounds)")
    tiers.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    metric = "acc" if args.task == "omniglot" else "loss"
    frames, times = {}, {}
    for policy in POLICIES:
        start = time.perf_counter()
        frames[policy] = simulate(config(args, policy), args.out / policy, progress=False)
        times[policy] = time.perf_counter() - start
        print(f"{policy}: {times[policy]:.0f} s host time", flush=True)
    budget = min(float(f[f["source"] == "train"]["sim_time_s"].iloc[-1])
                 for f in frames.values())
    rows = [summarize(frames[p], POLICIES[p], budget, metric) for p in POLICIES]
    for row, policy in zip(rows, POLICIES):
        row["host_s"] = round(times[policy], 1)
    text = table(rows, metric, budget)
    (args.out / "budget_study.md").write_text(text + "\n")
    (args.out / "budget_study.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "tiers": TIERS, "rows": rows},
        indent=2) + "\n")
    plot(rows, metric, args.out / "budget_study.png")
    print(text)


if __name__ == "__main__":
    main()
