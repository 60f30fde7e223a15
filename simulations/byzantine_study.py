"""Byzantine devices vs robust aggregation on the heterogeneous sinusoid fleet.

Runs the same federation (Flower's simulation engine, Ray) under every
``federation.aggregation``, fault-free and with ``--byzantine-devices`` of the training
devices Byzantine (a fixed set drawn from the seed, ``faults.byzantine_devices``; or, with
``--byzantine``, that share of the replies, ``faults.byzantine``), for every ``--seeds``.
Writes a markdown table of the held-out devices' final post-adaptation MSE per rule and the
ratio of the attacked run to the same rule's fault-free run and to fault-free averaging (mean
and range over the seeds) to ``--table``. The final meta-model of every run is scored again
on ``--rescore-episodes`` tasks per held-out device (``fedmeta.held_out``, the tasks of the
run's own evaluations and more), so that the ratios are not lost in the noise of a 25-episode
evaluation. The table goes to ``--table``, every run's summary to the JSON beside it, and every
run's outputs to ``--out``: ``fault-free-RULE-seedS`` (shared by every attack) and
``byzantine-MODE-xFACTOR-RULE-seedS``. A run whose folder already holds its very config and
summary is read back, not run again.

``--trim-fraction`` and ``--krum-malicious`` default to ``fleet``: sized for the fleet's known
Byzantine count B, the most attackers a round can sample (trim ``min(B, n) / n`` per side of
the round's n replies, below 0.5; Multi-Krum ``f = min(B, n - 1)``).

    python simulations/byzantine_study.py --rounds 60 --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time
from pathlib import Path

import pandas as pd

from fedmeta import config, simulate
from fedmeta.config import AGGREGATIONS
from fedmeta.held_out import rescore_run

HELD_OUT = 4
LEAVES_OUT = ("norm-filter", "norm-filter-bound", "norm-direction-filter", "multi-krum")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--byzantine-devices", type=float, default=0.2,
                   help="Byzantine share of the training devices (faults.byzantine_devices)")
    p.add_argument("--byzantine", type=float, default=0.0,
                   help="Byzantine share of the replies instead (faults.byzantine)")
    p.add_argument("--mode", default="sign-flip", help="faults.byzantine_mode")
    p.add_argument("--factor", type=float, default=10.0, help="faults.byzantine_factor")
    p.add_argument("--algorithm", default="fedmeta-maml", help="federation.algorithm")
    p.add_argument("--rounds", type=int, default=60)
    p.add_argument("--devices", type=int, default=20, help=f"fleet size ({HELD_OUT} held out)")
    p.add_argument("--per-round", type=int, default=8, help="training devices per round")
    p.add_argument("--meta-batch", type=int, default=5, help="tasks per device and round")
    p.add_argument("--eval-episodes", type=int, default=25,
                   help="per held-out device, at the runs' own evaluations")
    p.add_argument("--rescore-episodes", type=int, default=500,
                   help="per held-out device, to score every run's final meta-model again "
                        "(0: use the run's own last evaluation)")
    p.add_argument("--trim-fraction", default="fleet",
                   help='trimmed mean: cut per side, or "fleet" (see above)')
    p.add_argument("--krum-malicious", default="fleet",
                   help='Multi-Krum\'s f, or "fleet" (see above)')
    p.add_argument("--aggregations", nargs="+", default=list(AGGREGATIONS),
                   choices=AGGREGATIONS)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--baseline", type=Path,
                   help="without mean among --aggregations: a study's JSON whose fault-free "
                        "mean runs (same seeds and rounds) are the baseline")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE", help="any other config field (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/byzantine_study"),
                   help="folder of the runs' outputs")
    p.add_argument("--table", type=Path,
                   default=Path("simulations/results/byzantine_study.md"))
    return p.parse_args()


def rule_params(args: argparse.Namespace) -> tuple[float, int]:
    """``trim_fraction`` and ``krum_malicious``: as given, or sized for the fleet's
    Byzantine devices (every one of them sampled in the same round)."""
    n, train = args.per_round, args.devices - HELD_OUT
    attackers = min(math.floor(args.byzantine_devices * train + 0.5), n)
    if args.byzantine and not args.byzantine_devices:  # per-reply: the expected count
        attackers = min(math.ceil(args.byzantine * n), n)
    trim = float(args.trim_fraction) if args.trim_fraction != "fleet" else min(
        attackers / n, (math.ceil(n / 2) - 1) / n)
    krum = int(args.krum_malicious) if args.krum_malicious != "fleet" else min(attackers,
                                                                                n - 1)
    return trim, krum


def run(args: argparse.Namespace, aggregation: str, seed: int, attacked: bool) -> dict:
    trim, krum = rule_params(args)
    attack = f"byzantine-{args.mode}-x{args.factor:g}"  # one folder per attack and rule
    name = f"{attack if attacked else 'fault-free'}-{aggregation}-seed{seed}"
    cfg = config.load(overrides=[
        f"train.seed={seed}", f"federation.algorithm={args.algorithm}",
        f"federation.num_devices={args.devices}", f"federation.num_held_out={HELD_OUT}",
        f"federation.rounds={args.rounds}", f"federation.eval_every={args.rounds}",
        f"federation.fraction_train={args.per_round / (args.devices - HELD_OUT)}",
        f"federation.min_train_devices={args.per_round}",
        f"federation.meta_batch={args.meta_batch}",
        f"federation.eval_episodes={args.eval_episodes}",
        f"federation.aggregation={aggregation}",
        f"federation.trim_fraction={trim}", f"federation.krum_malicious={krum}",
        *([f"faults.byzantine={args.byzantine}",
           f"faults.byzantine_devices={args.byzantine_devices}",
           f"faults.byzantine_mode={args.mode}", f"faults.byzantine_factor={args.factor}"]
          if attacked else []),  # fault-free runs: one config for every attack, reused
        *args.overrides])
    out = args.out / name
    if done(out, cfg):
        frame, s = pd.read_csv(out / "results.csv"), json.loads((out / "summary.json").read_text())
    else:
        frame = simulate(cfg, out, progress=False)
        s = frame.attrs["summary"]
    train, evaluated = (frame[frame["source"] == source] for source in ("train", "eval"))
    hits = train["crashed" if args.mode == "omit" else "byzantine"]  # omitted: error replies
    diverged = s["final_post_mse"] is None  # the model overflowed to inf/NaN
    final = (rescored(out, args.rescore_episodes) if args.rescore_episodes and not diverged
             else {"post_loss": s["final_post_mse"], "post_loss_ci95": s["final_post_mse_ci95"]})
    diverged = diverged or "post_loss" not in final  # no finite MSE on the rescoring tasks
    print(f"{name}: post-adaptation MSE "
          f"{'diverged' if diverged else format(final['post_loss'], '.4g')} "
          f"({s['wall_s']:.0f} s)", flush=True)
    return {"run": name, "aggregation": aggregation, "seed": seed, "attacked": attacked,
            "trim_fraction": trim, "krum_malicious": krum, "diverged": diverged,
            "final_mse": final.get("post_loss"), "final_mse_ci95": final.get("post_loss_ci95"),
            "byzantine_replies": int(hits.sum()),
            "byzantine_left_out": int(train["byzantine_left_out"].sum())
            if "byzantine_left_out" in train else None,  # runs before the column: unknown
            "replies": int((train["devices"] + train["dropped"]).sum()),
            "max_byzantine_per_round": int(hits.max()),
            "rounds_by_byzantine_count": {int(k): int(v) for k, v in
                                          hits.value_counts().sort_index().items()},
            "post_mse_by_round": {int(r): None if math.isnan(v) else float(v) for r, v in
                                  evaluated[["round", "post_loss"]].itertuples(index=False)},
            **s}


def rescored(out: Path, episodes: int) -> dict[str, float]:
    """The run's final meta-model scored on ``episodes`` tasks per held-out device, kept in
    ``out`` after the first time."""
    path = out / f"held_out_{episodes}_episodes.json"
    if path.exists():
        return json.loads(path.read_text())
    scores = rescore_run(out, episodes)
    path.write_text(json.dumps(scores, indent=2) + "\n")
    return scores


def done(out: Path, cfg: config.Config) -> bool:
    """Whether ``out`` holds the finished run of ``cfg``."""
    try:
        stored = config.from_dict(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError, config.ConfigError):
        return False
    return (out / "summary.json").exists() and stored.to_dict() == cfg.to_dict()


def spread(values: list[float], digits: int = 2) -> str:
    """``mean (min–max)`` of ``values``; runs that diverged (inf) are counted apart."""
    finite = [v for v in values if math.isfinite(v)]
    if len(finite) < len(values):
        rest = f"; the others {spread(finite, digits)}" if finite else ""
        return f"diverged in {len(values) - len(finite)} of {len(values)}{rest}"
    mean = statistics.fmean(values)
    show = lambda v: f"{v:.{digits}f}" if abs(v) < 1e4 else f"{v:.1e}"
    if len(values) == 1:
        return show(mean)
    return f"{show(mean)} ({show(min(values))}–{show(max(values))})"


def markdown(rows: list[dict], args: argparse.Namespace) -> str:
    """One line per aggregation: final held-out post-adaptation MSEs fault-free and under
    attack, and the attacked run's ratio to fault-free, over the seeds."""
    baseline_rows = json.loads(args.baseline.read_text()) if args.baseline else rows
    by = {(r["aggregation"], r["seed"], r["attacked"]): r for r in rows}
    by.update({("mean", r["seed"], False): r for r in baseline_rows
               if r["aggregation"] == "mean" and not r["attacked"]
               and r["rounds"] == args.rounds and "mean" not in args.aggregations})
    seeds, trim, krum = args.seeds, *rule_params(args)
    attack = (f"{args.byzantine_devices:.0%} of the training devices (a fixed set per seed)"
              if args.byzantine_devices else f"{args.byzantine:.0%} of the replies")
    mse = lambda a, attacked: [math.inf if by[a, s, attacked]["diverged"] else
                               by[a, s, attacked].get("final_mse", by[a, s, attacked][
                                   "final_post_mse"]) for s in seeds]  # older JSON: no rescore
    scored = (f"rescored on {args.rescore_episodes} episodes per held-out device"
              if args.rescore_episodes else f"{args.eval_episodes} episodes per held-out device")
    lines = [f"{args.algorithm}, {args.rounds} rounds, {args.per_round} of "
             f"{args.devices - HELD_OUT} training devices per round, {HELD_OUT} held-out "
             f"devices x {args.eval_episodes} episodes; Byzantine: {attack}, "
             f"{'omit (no update)' if args.mode == 'omit' else f'{args.mode} x {args.factor:g}'}"
             f"; trim_fraction {trim:g}, krum_malicious {krum}; seeds "
             f"{', '.join(map(str, seeds))}. Post-adaptation MSE of the held-out devices "
             f"after the last round, {scored}; every cell: mean over the seeds (min–max). "
             f"Left out: the Byzantine replies the rule did not average (–: it averages "
             f"every reply).", "",
             "| aggregation | MSE fault-free | MSE Byzantine | Byzantine replies (max per "
             "round) | left out | Byzantine vs same rule fault-free | Byzantine vs mean "
             "fault-free |",
             "|---|---|---|---|---|---|---|"]
    baseline = mse("mean", False)  # KeyError: no fault-free mean runs (see --baseline)
    for a in args.aggregations:
        clean, attacked = mse(a, False), mse(a, True)
        hits = [by[a, s, True] for s in seeds]
        lines.append(
            f"| {a} | {spread(clean, 3)} | {spread(attacked, 3)} | "
            f"{sum(h['byzantine_replies'] for h in hits)}/{sum(h['replies'] for h in hits)} "
            f"({max(h['max_byzantine_per_round'] for h in hits)}) | "
            f"{left_out(hits, a, args.mode)} | "
            f"{ratio([x / c for x, c in zip(attacked, clean)])} | "
            f"{ratio([x / c for x, c in zip(attacked, baseline)])} |")
    return "\n".join(lines + ["", *by_round(rows, args)]) + "\n"


def ratio(values: list[float]) -> str:
    """``spread`` of ratios, with an ``x`` after the finite ones."""
    text = spread(values)
    return text if text.startswith("diverged") and ";" not in text else f"{text}x"


def left_out(hits: list[dict], aggregation: str, mode: str) -> str:
    """How many of the attacked runs' Byzantine replies the rule left out."""
    if mode == "omit":
        return "none sent"
    if aggregation not in LEAVES_OUT:
        return "–"
    counts = [h.get("byzantine_left_out") for h in hits]
    if None in counts:
        return "not recorded"
    return f"{sum(counts)}/{sum(h['byzantine_replies'] for h in hits)}"


def by_round(rows: list[dict], args: argparse.Namespace) -> list[str]:
    """Post-adaptation MSE at every evaluation, mean over the seeds."""
    rounds = sorted({int(r) for row in rows for r in row["post_mse_by_round"]})
    lines = [f"Post-adaptation MSE at every evaluation of the runs ({args.eval_episodes} "
             "episodes per held-out device; mean over the seeds; diverged: in at least one "
             "seed):", "",
             "| aggregation | run | " + " | ".join(f"round {r}" for r in rounds) + " |",
             "|---|---|" + "---|" * len(rounds)]
    for a in args.aggregations:
        for attacked in (False, True):
            runs = [r for r in rows if r["aggregation"] == a and r["attacked"] == attacked]
            cells = [statistics.fmean(math.inf if (v := run["post_mse_by_round"].get(
                r, run["post_mse_by_round"].get(str(r)))) is None else v for run in runs)
                for r in rounds]
            lines.append(f"| {a} | {'Byzantine' if attacked else 'fault-free'} | "
                         + " | ".join("diverged" if math.isinf(c) else f"{c:.3f}" for c in cells)
                         + " |")
    return lines


def main() -> None:
    args = parse_args()
    if "mean" not in args.aggregations and args.baseline is None:
        raise SystemExit("without mean among --aggregations, --baseline names the fault-free "
                         "mean runs to compare with")
    args.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    rows = [run(args, a, seed, attacked) for seed in args.seeds for a in args.aggregations
            for attacked in (False, True)]
    table = markdown(rows, args)
    args.table.parent.mkdir(parents=True, exist_ok=True)
    args.table.write_text(table)
    args.table.with_suffix(".json").write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\n{table}\ntotal {time.perf_counter() - start:.0f} s; table in {args.table}")


if __name__ == "__main__":
    main()
