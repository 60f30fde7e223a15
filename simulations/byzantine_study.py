"""Byzantine devices vs robust aggregation on the heterogeneous sinusoid fleet.

Runs the same federation (Flower's simulation engine, Ray) under every
``federation.aggregation``, fault-free and with ``--byzantine`` of the training replies
Byzantine (``faults.byzantine_mode``, ``faults.byzantine_factor``), and writes a markdown
table of the held-out devices' final pre- and post-adaptation MSE (95% CIs over their
episodes) to ``--table`` (and its JSON beside it); every run's outputs go to ``--out``.

    python simulations/byzantine_study.py --rounds 30
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from fedmeta import config, simulate
from fedmeta.config import AGGREGATIONS


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--byzantine", type=float, default=0.2, help="Byzantine share of replies")
    p.add_argument("--mode", default="sign-flip", help="faults.byzantine_mode")
    p.add_argument("--factor", type=float, default=10.0, help="faults.byzantine_factor")
    p.add_argument("--algorithm", default="fedmeta-maml", help="federation.algorithm")
    p.add_argument("--rounds", type=int, default=30)
    p.add_argument("--devices", type=int, default=20, help="fleet size (4 held out)")
    p.add_argument("--per-round", type=int, default=8, help="training devices per round")
    p.add_argument("--meta-batch", type=int, default=5, help="tasks per device and round")
    p.add_argument("--eval-episodes", type=int, default=25, help="per held-out device")
    p.add_argument("--trim-fraction", type=float, default=0.25,
                   help="trimmed mean: cut per side (at least the Byzantine share)")
    p.add_argument("--krum-malicious", type=int, default=2, help="Multi-Krum's f")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="any other config field (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/byzantine_study"),
                   help="folder of the runs' outputs")
    p.add_argument("--table", type=Path,
                   default=Path("simulations/results/byzantine_study.md"))
    return p.parse_args()


def run(args: argparse.Namespace, name: str, aggregation: str, byzantine: float) -> dict:
    held_out = 4
    cfg = config.load(overrides=[
        f"train.seed={args.seed}", f"federation.algorithm={args.algorithm}",
        f"federation.num_devices={args.devices}", f"federation.num_held_out={held_out}",
        f"federation.rounds={args.rounds}", f"federation.eval_every={args.rounds}",
        f"federation.fraction_train={args.per_round / (args.devices - held_out)}",
        f"federation.min_train_devices={args.per_round}",
        f"federation.meta_batch={args.meta_batch}",
        f"federation.eval_episodes={args.eval_episodes}",
        f"federation.aggregation={aggregation}",
        f"federation.trim_fraction={args.trim_fraction}",
        f"federation.krum_malicious={args.krum_malicious}",
        f"faults.byzantine={byzantine}", f"faults.byzantine_mode={args.mode}",
        f"faults.byzantine_factor={args.factor}", *args.overrides])
    frame = simulate(cfg, args.out / name, progress=False)
    s = frame.attrs["summary"]
    injected = int(frame.loc[frame["source"] == "train", "byzantine"].sum())
    replies = int(frame.loc[frame["source"] == "train", "devices"].sum())
    print(f"{name}: post-adaptation MSE {s['final_post_mse']:.3f} ({s['wall_s']:.0f} s)")
    return {"run": name, "aggregation": aggregation, "byzantine": byzantine,
            "byzantine_replies": f"{injected}/{replies}", **s}


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """One line per aggregation: final held-out MSEs fault-free and with Byzantine devices."""
    by = {(r["aggregation"], r["byzantine"] > 0): r for r in rows}
    baseline = by["mean", False]["final_post_mse"]
    cell = lambda r, key: f"{r[f'final_{key}']:.3f} ± {r[f'final_{key}_ci95']:.3f}"
    lines = [f"{args.algorithm}, {args.rounds} rounds, {args.per_round} of "
             f"{args.devices - 4} training devices per round, 4 held-out devices x "
             f"{args.eval_episodes} episodes; Byzantine: {args.byzantine:.0%} of replies, "
             f"{args.mode} x {args.factor:g}; seed {args.seed}. MSE: held-out devices after "
             f"the last round, ± 95% CI over their episodes.", "",
             "| aggregation | post-adaptation MSE, fault-free | Byzantine replies | "
             "pre-adaptation MSE, Byzantine | post-adaptation MSE, Byzantine | "
             "Byzantine post vs fault-free mean |", "|---|---|---|---|---|---|"]
    for aggregation in AGGREGATIONS:
        clean, attacked = by[aggregation, False], by[aggregation, True]
        lines.append(f"| {aggregation} | {cell(clean, 'post_mse')} | "
                     f"{attacked['byzantine_replies']} | {cell(attacked, 'pre_mse')} | "
                     f"{cell(attacked, 'post_mse')} | "
                     f"{attacked['final_post_mse'] / baseline:.2f}x |")
    return "\n".join(lines) + "\n"


def main() -> None:
    args = parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [run(args, f"{'byzantine' if share else 'fault-free'}-{a}", a, share)
            for a in AGGREGATIONS for share in (0.0, args.byzantine)]
    table = markdown(rows, args)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table)
    args.table.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{table}\ntotal {time.perf_counter() - start:.0f} s; table in {args.table}")


if __name__ == "__main__":
    main()
