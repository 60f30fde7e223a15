"""What update compression costs in accuracy and saves in bytes, on one heterogeneous fleet.

The budget study's five-tier fleet (``budget_study.py``: same tiers, devices, sampling,
deadline), run with every ``fleet.compression`` (``none``, ``float16``, ``int8``, ``topk`` at
``--topk`` fractions) under the budget-aware ``partial`` policy, for each seed in
``--seeds``. Per setting: the held-out devices' final post-adaptation quality (mean over
seeds, with the spread across seeds), the uplink megabytes the simulated links carried
and the simulated time. A markdown table, a JSON record and a plot go to ``--out``.

    python simulations/compression_study.py --task sinusoid --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import NullFormatter, ScalarFormatter

import budget_study
from fedmeta import simulate


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--task", choices=["omniglot", "sinusoid"], default="sinusoid")
    p.add_argument("--data-dir", default=os.environ.get("FEDMETA_OMNIGLOT_DIR", ""))
    p.add_argument("--algorithm", default="fedmeta-maml")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--deadline", type=float, default=None,
                   help="round deadline in simulated s (budget_study's default per task)")
    p.add_argument("--topk", type=float, nargs="+", default=[0.1, 0.01],
                   help="top-k fractions to run (fleet.topk_fraction)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--out", type=Path, default=Path("runs/compression_study"))
    return p.parse_args()


def settings(args: argparse.Namespace) -> dict[str, dict]:
    """Label -> the ``[fleet]`` fields that select its compression."""
    out = {c: {"compression": c} for c in ("none", "float16", "int8")}
    out.update({f"topk {f:g}": {"compression": "topk", "topk_fraction": f} for f in args.topk})
    return out


def run(args: argparse.Namespace, fleet: dict, seed: int, folder: Path) -> dict:
    """One run; its final held-out quality, uplink bytes and simulated time."""
    base = argparse.Namespace(**{**vars(args), "seed": seed, "eval_every": args.rounds})
    cfg = budget_study.config(base, "partial")
    cfg["fleet"].update(fleet)
    frame = simulate(cfg, folder, progress=False)
    metric = "acc" if args.task == "omniglot" else "loss"
    train, last = frame[frame["source"] == "train"], frame[frame["source"] == "eval"].iloc[-1]
    return {"seed": seed, "post": float(last[f"post_{metric}"]),
            "post_ci95": float(last[f"post_{metric}_ci95"]),
            "mb_up": float(train["sim_bytes_up"].sum() / 1e6),
            "kb_per_update": float(train["sim_bytes_up"].sum() / train["devices"].sum() / 1e3),
            "sim_time_s": float(train["sim_time_s"].iloc[-1])}


def summarize(label: str, runs: list[dict], baseline: list[dict]) -> dict:
    """Mean and spread over seeds, and the change against no compression, seed by seed."""
    posts = [r["post"] for r in runs]
    change = [r["post"] - b["post"] for r, b in zip(runs, baseline)]
    return {"compression": label, "runs": runs, "post_mean": statistics.fmean(posts),
            "post_sd": statistics.stdev(posts) if len(posts) > 1 else 0.0,
            "change_mean": statistics.fmean(change),
            "change_sd": statistics.stdev(change) if len(change) > 1 else 0.0,
            "kb_per_update": statistics.fmean(r["kb_per_update"] for r in runs),
            "mb_up": statistics.fmean(r["mb_up"] for r in runs),
            "sim_time_s": statistics.fmean(r["sim_time_s"] for r in runs)}


def table(rows: list[dict], task: str, seeds: list[int]) -> str:
    name = "accuracy" if task == "omniglot" else "MSE"
    lines = [f"| compression | KB per update | MB up (run) | simulated s | final post-{name} "
             f"(mean ± sd over seeds {seeds}) | change vs none (paired, mean ± sd) |",
             "|---|---:|---:|---:|---|---|"]
    for r in rows:
        lines.append(f"| {r['compression']} | {r['kb_per_update']:.2f} | {r['mb_up']:.3f} | "
                     f"{r['sim_time_s']:.3f} | {r['post_mean']:.3f} ± {r['post_sd']:.3f} | "
                     f"{r['change_mean']:+.3f} ± {r['change_sd']:.3f} |")
    return "\n".join(lines)


def plot(rows: list[dict], task: str, path: Path) -> None:
    """Change in held-out quality against no compression (each seed, and their mean),
    against uplink KB per update."""
    fig = Figure(figsize=(6, 4))
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    baseline = {r["seed"]: r["post"] for r in rows[0]["runs"]}
    for r in rows:
        kb = r["kb_per_update"]
        changes = [run["post"] - baseline[run["seed"]] for run in r["runs"]]
        ax.scatter([kb] * len(changes), changes, s=14, alpha=0.5)
        ax.plot([kb], [r["change_mean"]], "D", color=ax.collections[-1].get_facecolor()[0],
                label=r["compression"])
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(ScalarFormatter())
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel("uplink KB per update (log scale)")
    ax.set_ylabel("held-out post-adaptation " + ("accuracy" if task == "omniglot" else "MSE")
                  + "\nchange vs none (dots: seeds, diamond: mean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, list[dict]] = {}
    for label, fleet in settings(args).items():
        results[label] = []
        for seed in args.seeds:
            start = time.perf_counter()
            folder = args.out / f"{label.replace(' ', '-')}-seed{seed}"
            results[label].append(run(args, fleet, seed, folder))
            print(f"{label}, seed {seed}: {time.perf_counter() - start:.0f} s host time",
                  flush=True)
    rows = [summarize(label, runs, results["none"]) for label, runs in results.items()]
    text = table(rows, args.task, args.seeds)
    (args.out / "compression_study.md").write_text(text + "\n")
    (args.out / "compression_study.json").write_text(json.dumps(
        {"args": {k: str(v) for k, v in vars(args).items()}, "rows": rows}, indent=2) + "\n")
    plot(rows, args.task, args.out / "compression_study.png")
    print(text)


if __name__ == "__main__":
    main()
