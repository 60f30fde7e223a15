"""Federated meta-learning on Omniglot by drawer: every federated algorithm, one budget.

The FedMeta paper's comparison (Chen et al. 2018) on a natural split: each of the 20 people
who drew the meta-train alphabets is one training device holding only their own drawings;
two held-out devices hold the drawings of the held-out alphabets and are never trained on.
Every algorithm gets the same rounds, devices per round and episodes per local step; its
local loop and server optimizer take the algorithm's defaults (``fedmeta.federated``).
Writes, to ``--out``: one run folder per algorithm (``fedmeta run``'s outputs),
``results.md`` (post-adaptation N-way K-shot accuracy on held-out alphabets with 95% CIs,
and bytes communicated until the held-out accuracy first reached ``--target``),
``results.json`` and ``accuracy.png``. Running again into the same ``--out`` with other
``--algorithms`` and otherwise the same arguments adds them to the earlier ones' table.

    python simulations/fedmeta_omniglot.py --data-dir ../shared/data/omniglot
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import fedmeta  # noqa: E402
from fedmeta.federated import FEDERATED_ALGORITHMS  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", default="",
                   help="folder of Omniglot zips (default: $FEDMETA_OMNIGLOT_DIR, else the "
                        "download cache of `fedmeta data download`)")
    p.add_argument("--algorithms", nargs="+", default=list(FEDERATED_ALGORITHMS),
                   choices=list(FEDERATED_ALGORITHMS), metavar="NAME",
                   help="federated algorithms to compare (default: all)")
    p.add_argument("--ways", type=int, default=5, help="N-way (default 5)")
    p.add_argument("--shots", type=int, default=1, help="K-shot (default 1)")
    p.add_argument("--queries", type=int, default=5, help="queries per class in training")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--devices-per-round", type=int, default=5, help="of the 20 drawers")
    p.add_argument("--meta-batch", type=int, default=4, help="episodes per local step")
    p.add_argument("--eval-every", type=int, default=20)
    p.add_argument("--eval-episodes", type=int, default=100,
                   help="episodes per held-out device (2 devices)")
    p.add_argument("--target", type=float, default=0.6,
                   help="held-out post-adaptation accuracy for the bytes-to-target column")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/fedmeta_omniglot"))
    return p.parse_args()


def run_config(args: argparse.Namespace, algorithm: str) -> dict:
    """The shared budget; everything algorithm-specific stays at the algorithm's default."""
    return {
        "task": {"kind": "omniglot", "data_dir": args.data_dir, "n_way": args.ways,
                 "k_shot": args.shots, "q_query": args.queries, "rotations": True,
                 "augment": True, "partition": "drawer", "test_alphabets": 2},
        "meta": {"inner_lr": 0.4, "inner_steps": 1, "eval_steps": 5},
        "federation": {"algorithm": algorithm, "num_devices": 22, "num_held_out": 2,
                       "rounds": args.rounds, "fraction_train": 0.0,
                       "min_train_devices": args.devices_per_round,
                       "meta_batch": args.meta_batch, "eval_every": args.eval_every,
                       "eval_episodes": args.eval_episodes},
        "train": {"seed": args.seed},
    }


def bytes_to_target(frame: pd.DataFrame, target: float) -> float:
    """Bytes sent and received until the first evaluation at or above ``target`` (NaN if
    never)."""
    hits = frame[(frame["source"] == "eval") & (frame["post_acc"] >= target)]
    return math.nan if hits.empty else float(hits["bytes_total"].iloc[0])


def markdown(rows: list[dict], frames: dict[str, pd.DataFrame],
             args: argparse.Namespace) -> str:
    lines = [f"| algorithm | held-out pre-adaptation acc | held-out post-adaptation acc "
             f"(95% CI) | bytes to {args.target:.0%} post-adaptation | bytes in all | "
             f"wall time |", "|---" * 6 + "|"]
    for r in sorted(rows, key=lambda r: -r["final_post_acc"]):
        needed = bytes_to_target(frames[r["algorithm"]], args.target)
        reach = "not reached" if math.isnan(needed) else f"{needed / 1e6:.1f} MB"
        # metric and model-based learners have no unadapted score (the support set is
        # their adaptation)
        pre = "-" if r["final_pre_acc"] is None else f"{r['final_pre_acc']:.3f}"
        lines.append(f"| {r['algorithm']} | {pre} | "
                     f"{r['final_post_acc']:.3f} ± {r['final_post_acc_ci95']:.3f} | {reach} | "
                     f"{(r['bytes_down'] + r['bytes_up']) / 1e6:.1f} MB | {r['wall_s']:.0f} s |")
    return "\n".join(lines) + "\n"


def plot(frames: dict[str, pd.DataFrame], path: Path, args: argparse.Namespace) -> None:
    fig, (by_round, by_bytes) = plt.subplots(1, 2, figsize=(11, 4.2), sharey=True)
    for name, frame in frames.items():
        ev = frame[frame["source"] == "eval"]
        style = "-" if name.startswith(("fedmeta", "fedreptile")) else "--"
        by_round.plot(ev["round"], ev["post_acc"], style, marker="o", ms=3, label=name)
        by_bytes.plot(ev["bytes_total"] / 1e6, ev["post_acc"], style, marker="o", ms=3)
    for ax in (by_round, by_bytes):
        ax.axhline(1 / args.ways, color="grey", lw=0.8, ls=":")
        ax.grid(alpha=0.3)
    by_round.set(xlabel="round", ylabel=f"held-out {args.ways}-way {args.shots}-shot "
                 "accuracy after adaptation")
    by_bytes.set(xlabel="MB communicated (down + up)")
    by_round.legend(fontsize=8)
    fig.suptitle(f"Omniglot by drawer: {args.devices_per_round} of 20 devices per round, "
                 f"meta-batch {args.meta_batch}")
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def settings(args: argparse.Namespace) -> dict[str, str]:
    """The arguments that make runs comparable: all but which algorithms ran and the
    table's target."""
    return {k: str(v) for k, v in vars(args).items() if k not in ("algorithms", "target")}


def earlier_runs(args: argparse.Namespace) -> tuple[list[dict], dict[str, pd.DataFrame]]:
    """Runs of other algorithms recorded in ``--out`` with the same settings."""
    path = args.out / "results.json"
    if not path.is_file():
        return [], {}
    record = json.loads(path.read_text())
    if record.get("settings") != settings(args):
        raise SystemExit(f"{path} holds runs with other settings; use another --out")
    rows = [r for r in record["runs"] if r["algorithm"] not in args.algorithms]
    return rows, {r["algorithm"]: pd.read_csv(args.out / r["algorithm"] / "results.csv")
                  for r in rows}


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    rows, frames = earlier_runs(args)
    start = time.perf_counter()
    for algorithm in args.algorithms:
        frame = fedmeta.simulate(run_config(args, algorithm), out=args.out / algorithm)
        summary = frame.attrs["summary"]
        rows.append(summary)
        frames[algorithm] = frame
        print(f"{algorithm}: held-out post-adaptation accuracy "
              f"{summary['final_post_acc']:.3f} ± {summary['final_post_acc_ci95']:.3f}",
              flush=True)
    (args.out / "results.json").write_text(json.dumps(
        {"settings": settings(args), "runs": rows,
         "wall_s_this_invocation": round(time.perf_counter() - start, 1)}, indent=2))
    table = markdown(rows, frames, args)
    (args.out / "results.md").write_text(table)
    plot(frames, args.out / "accuracy.png", args)
    print(table)


if __name__ == "__main__":
    main()
