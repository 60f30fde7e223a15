"""The FedMeta paper's comparison on LEAF FEMNIST (by writer) and Shakespeare (by role).

Chen et al. 2018 ("Federated Meta-Learning with Fast Convergence and Efficient
Communication", Table 2) compare FedAvg, FedAvg(Meta), FedMeta(MAML) and FedMeta(Meta-SGD)
with each device its own task (support 0.2 / query 0.8 of its data, FEMNIST 62-way with the
paper's CNN, Shakespeare next-character with the LEAF LSTM). The four map to fedmeta's
federated algorithms (``fedmeta.federated``):

- FedAvg -> ``fedavg`` (joint training, scored without adaptation);
- FedAvg(Meta) -> ``fedavg-ft`` (the same training, fine-tuned on the device's support set
  before scoring);
- FedMeta(MAML) -> ``fedmeta-maml``; FedMeta(Meta-SGD) -> ``fedmeta-metasgd``.

Settings and where they come from (``PAPER`` below):

- Flower's FedMeta baseline (``baselines/fedmeta/README.md`` of adap/flower, its
  hyperparameter table): 4 devices a round; 2000 rounds on FEMNIST, 400 on Shakespeare;
  FedMeta's (alpha, beta) = (0.001, 0.0001) on FEMNIST with 5 inner steps and (0.1, 0.01)
  on Shakespeare with 1 inner step. Here alpha is ``meta.inner_lr`` (Meta-SGD: its
  per-parameter rates' initial value), beta the server Adam's ``federation.server_lr``,
  and evaluation adapts with as many steps as training does.
- The paper / the baseline's data table: support 0.2 / query 0.8 of each device's data; of
  the devices, 0.8 train and 0.1 test (their 0.1 validation devices are not used here:
  ``--held-out`` is the test share); 1109 FEMNIST writers and 1126 Shakespeare roles
  (``--devices``; ``flwrlabs/*`` may hold a different number of eligible devices, then
  fedmeta names the limit).
- Not expressible here, so fedmeta's defaults: FedAvg's local loop (the baseline trains
  devices with Adam at 0.0001 / 0.001 and batch 10; fedmeta's ``fedavg`` takes 5 local SGD
  steps of 0.01 on a device's whole support+query set, the server averaging); FedAvg(Meta)'s
  fine-tuning uses alpha and the inner steps above with plain SGD; FedMeta's batch of 10
  (a device's whole support and query sets form one episode here).
- Not checked here: these machines have no network, so the script never ran on
  ``flwrlabs/femnist`` or ``flwrlabs/shakespeare``, nor were the paper's numbers
  reproduced; it ran only on fixtures in those datasets' schema (``tests/hf_fixtures.py``,
  ``tests/test_fedmeta_leaf.py``).

Writes, to ``--out`` (refused when it holds anything, unless ``--overwrite``): one
``fedmeta run`` folder per dataset and algorithm (``DATASET/ALGORITHM``: ``results.csv``,
``summary.json``...), ``table.md`` and ``table.csv`` (algorithm x dataset: held-out devices'
pre- and post-adaptation accuracy with 95% CIs, rounds, wall time), ``accuracy.png`` and
``study.json`` (command, arguments, settings, wall times).

    python simulations/fedmeta_leaf.py --dataset both --out runs/fedmeta_leaf
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import matplotlib
import pandas as pd

import fedmeta

matplotlib.use("Agg")
import matplotlib.pyplot as plt

ALGORITHMS = {"fedavg": "FedAvg", "fedavg-ft": "FedAvg(Meta)",
              "fedmeta-maml": "FedMeta(MAML)", "fedmeta-metasgd": "FedMeta(Meta-SGD)"}
HUB = {"femnist": "flwrlabs/femnist", "shakespeare": "flwrlabs/shakespeare"}
PAPER = {  # Flower's FedMeta baseline and Chen et al. 2018 (module docstring)
    "femnist": {"rounds": 2000, "inner_lr": 0.001, "inner_steps": 5, "server_lr": 0.0001,
                "devices": 1109},
    "shakespeare": {"rounds": 400, "inner_lr": 0.1, "inner_steps": 1, "server_lr": 0.01,
                    "devices": 1126},
}
TASKS = {
    "femnist": {"kind": "hf", "partition_by": "writer_id", "protocol": "fedmeta"},
    "shakespeare": {"kind": "hf-text", "text_column": "x", "label_column": "y",
                    "partition_by": "character_id", "protocol": "fedmeta"},
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", choices=["femnist", "shakespeare", "both"], default="both")
    p.add_argument("--data", default="",
                   help="hub name or local folder of the one --dataset (default: its hub name)")
    p.add_argument("--femnist-data", default=HUB["femnist"],
                   help="with --dataset both: FEMNIST's hub name or local folder")
    p.add_argument("--shakespeare-data", default=HUB["shakespeare"],
                   help="with --dataset both: Shakespeare's hub name or local folder")
    p.add_argument("--algorithms", nargs="+", default=list(ALGORITHMS),
                   choices=list(ALGORITHMS), metavar="NAME",
                   help=f"of {list(ALGORITHMS)} (default: all)")
    p.add_argument("--rounds", type=int, default=0,
                   help="rounds (default: the baseline's, 2000 FEMNIST / 400 Shakespeare)")
    p.add_argument("--devices", type=int, default=0,
                   help="devices per dataset, held-out included (default: the paper's, "
                        "1109 FEMNIST writers / 1126 Shakespeare roles)")
    p.add_argument("--held-out", type=float, default=0.1,
                   help="share of the devices held out and scored (the paper's test share)")
    p.add_argument("--per-round", type=int, default=4, help="training devices per round")
    p.add_argument("--eval-every", type=int, default=0, help="default: --rounds / 10")
    p.add_argument("--eval-episodes", type=int, default=1,
                   help="support/query splits scored per held-out device")
    p.add_argument("--ray-cpus", type=int, default=0, help="CPUs Ray may use (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("runs/fedmeta_leaf"))
    p.add_argument("--overwrite", action="store_true",
                   help="delete what --out holds first")
    args = p.parse_args(argv)
    if args.data and args.dataset == "both":
        p.error("--data names one dataset's files; with --dataset both use "
                "--femnist-data and --shakespeare-data")
    for name in ("rounds", "devices", "eval_every", "eval_episodes", "per_round"):
        if getattr(args, name) < 0:
            p.error(f"--{name.replace('_', '-')} must be >= 0")
    if not 0 < args.held_out < 1:
        p.error("--held-out must be in (0, 1)")
    return args


def datasets(args: argparse.Namespace) -> dict[str, str]:
    """Dataset name -> its hub name or local folder."""
    names = ["femnist", "shakespeare"] if args.dataset == "both" else [args.dataset]
    given = {"femnist": args.femnist_data, "shakespeare": args.shakespeare_data}
    if args.data:
        given[args.dataset] = args.data
    return {name: given[name] for name in names}


def run_config(args: argparse.Namespace, dataset: str, source: str, algorithm: str) -> dict:
    """One run's config: the baseline's settings for ``dataset``, the algorithm's own loop."""
    paper = PAPER[dataset]
    rounds = args.rounds or paper["rounds"]
    devices = args.devices or paper["devices"]
    meta = algorithm.startswith("fedmeta")
    return {
        "task": {**TASKS[dataset], "dataset": source, "support_fraction": 0.2},
        "meta": {"inner_lr": paper["inner_lr"], "inner_steps": paper["inner_steps"],
                 "eval_steps": paper["inner_steps"]},
        "federation": {"algorithm": algorithm, "num_devices": devices,
                       "num_held_out": max(1, round(args.held_out * devices)),
                       "rounds": rounds, "fraction_train": 0.0,
                       "min_train_devices": args.per_round, "meta_batch": 1,
                       "eval_every": args.eval_every or max(1, rounds // 10),
                       "eval_episodes": args.eval_episodes,
                       **({"server_lr": paper["server_lr"]} if meta else {})},
        "train": {"seed": args.seed},
        "simulation": {"num_cpus": 1, "ray_cpus": args.ray_cpus},
    }


def claim_out(args: argparse.Namespace) -> None:
    """Refuse an ``--out`` that holds anything unless ``--overwrite`` (then empty it)."""
    if args.out.exists() and any(args.out.iterdir()):
        if not args.overwrite:
            sys.exit(f"error: --out {args.out} is not empty; pass --overwrite to replace "
                     "what it holds, or choose another --out")
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True, exist_ok=True)


def table_row(dataset: str, summary: dict) -> dict:
    return {"dataset": dataset, "algorithm": summary["algorithm"],
            "paper_name": ALGORITHMS[summary["algorithm"]],
            **{k: summary[f"final_{k}"] for k in ("pre_acc", "pre_acc_ci95", "post_acc",
                                                  "post_acc_ci95")},
            "held_out_episodes": summary["held_out_episodes"], "rounds": summary["rounds"],
            "wall_s": summary["wall_s"]}


def markdown(table: pd.DataFrame) -> str:
    header = ("| dataset | algorithm | paper's name | held-out acc, pre-adaptation (95% CI) | "
              "held-out acc, post-adaptation (95% CI) | rounds | wall time |")
    lines = [header, "|---" * 7 + "|"]
    for r in table.itertuples():
        lines.append(f"| {r.dataset} | {r.algorithm} | {r.paper_name} | "
                     f"{r.pre_acc:.3f} ± {r.pre_acc_ci95:.3f} | "
                     f"{r.post_acc:.3f} ± {r.post_acc_ci95:.3f} | {r.rounds} | "
                     f"{r.wall_s:.0f} s |")
    return "\n".join(lines) + "\n"


def plot(frames: dict[tuple[str, str], pd.DataFrame], path: Path) -> None:
    names = sorted({d for d, _ in frames})
    fig, axes = plt.subplots(1, len(names), figsize=(5.5 * len(names), 4.2), squeeze=False)
    for ax, dataset in zip(axes[0], names):
        for (d, algorithm), frame in frames.items():
            if d == dataset:
                ev = frame[frame["source"] == "eval"]
                ax.plot(ev["round"], ev["post_acc"], marker="o", ms=3,
                        label=ALGORITHMS[algorithm])
        ax.set(title=dataset, xlabel="round", ylabel="held-out accuracy (after adaptation)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    claim_out(args)
    rows, frames, walls = [], {}, {}
    start = time.perf_counter()
    for dataset, source in datasets(args).items():
        for algorithm in args.algorithms:
            began = time.perf_counter()
            frame = fedmeta.simulate(run_config(args, dataset, source, algorithm),
                                     out=args.out / dataset / algorithm, progress=False)
            walls[f"{dataset}/{algorithm}"] = round(time.perf_counter() - began, 1)
            rows.append(table_row(dataset, frame.attrs["summary"]))
            frames[dataset, algorithm] = frame
            r = rows[-1]
            print(f"{dataset} {algorithm}: held-out accuracy {r['pre_acc']:.3f} before, "
                  f"{r['post_acc']:.3f} ± {r['post_acc_ci95']:.3f} after adaptation",
                  flush=True)
    table = pd.DataFrame(rows)
    table.to_csv(args.out / "table.csv", index=False)
    (args.out / "table.md").write_text(markdown(table))
    plot(frames, args.out / "accuracy.png")
    (args.out / "study.json").write_text(json.dumps({
        "command": " ".join([sys.executable, *sys.argv]),
        "args": {k: str(v) for k, v in vars(args).items()},
        "configs": {f"{d}/{a}": run_config(args, d, s, a)
                    for d, s in datasets(args).items() for a in args.algorithms},
        "wall_s": walls, "wall_s_total": round(time.perf_counter() - start, 1)}, indent=2))
    print(markdown(table))


if __name__ == "__main__":
    main()
