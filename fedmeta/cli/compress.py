"""``fedmeta compress``: prune a Conv4 meta-model's channels, meta-fine-tune it, distil it
into a smaller student, quantise to int8, and score every stage after adaptation on
held-out episodes."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

TABLE, ROWS, CHECKPOINT, STUDENT = "compress.md", "compress.json", "checkpoint.pt", "student.pt"


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta compress``."""
    p = sub.add_parser(
        "compress",
        help="prune, meta-fine-tune, distil and int8 a Conv4 meta-model; a table per stage",
        description="Structured channel pruning (by batch-norm scale or filter norm) of the "
                    "run's Conv4 checkpoint, meta-fine-tuning of the pruned model, optionally "
                    "meta-distillation into a smaller student (--distil), and int8 of each; "
                    "every stage adapted and scored on the same held-out episodes. "
                    f"Writes to --out: {TABLE} (parameters, bytes, FLOPs, adaptation latency, "
                    f"accuracy with 95% CIs, paired change), {ROWS}, {CHECKPOINT} (the "
                    f"pruned, fine-tuned meta-model, for fedmeta export) and, with --distil, "
                    f"{STUDENT} (the distilled student). See docs/deployment.md.")
    p.add_argument("--run", required=True, type=Path, metavar="DIR",
                   help="a fedmeta train output folder (checkpoint.pt, config.json)")
    p.add_argument("--out", required=True, type=Path, metavar="DIR",
                   help="output folder (must not hold earlier results)")
    p.add_argument("--keep", required=True, type=int, metavar="N",
                   help="channels kept per block")
    p.add_argument("--criterion", choices=("bn", "norm"), default="bn",
                   help="channel score: |batch-norm scale| (default) or filter L2 norm")
    p.add_argument("--finetune", type=int, default=100, metavar="N",
                   help="meta-updates of fine-tuning after pruning (default 100)")
    p.add_argument("--distil", type=int, default=0, metavar="N",
                   help="meta-updates of distillation into a student (default 0: none)")
    p.add_argument("--student-channels", type=int, default=None, metavar="C",
                   help="the student's channels per block (default --keep; with --distil)")
    p.add_argument("--temperature", type=float, metavar="T",
                   help="distillation softmax temperature (default 4)")
    p.add_argument("--alpha", type=float, metavar="A",
                   help="weight of the KL term against the query cross-entropy (default 0.5)")
    p.add_argument("--episodes", type=int, default=200, metavar="N",
                   help="held-out episodes to score (default 200)")
    p.add_argument("--seed", type=int, default=123, help="episode draw (default 123)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Run the chain, write the table, rows and checkpoint, print the table."""
    import torch

    from .. import config
    from ..checkpoint import Checkpoint
    from ..errors import ConfigError, DataError
    from ..export.compress import compress, markdown

    for name in (TABLE, ROWS, CHECKPOINT) + ((STUDENT,) if args.distil else ()):
        if (args.out / name).exists():
            raise ConfigError("--out", str(args.out),
                              f"a folder without {name} (not overwritten)")
    settings = args.run / "config.json"
    if not settings.is_file():
        raise DataError(f"{settings}: no such file (a fedmeta train output folder has one)")
    cfg = config.from_dict(json.loads(settings.read_text()))
    torch.set_num_threads(1)
    given = {k: v for k, v in (("temperature", args.temperature), ("alpha", args.alpha))
             if v is not None}  # else compress's defaults
    rows, tuned, student = compress(Checkpoint.load(args.run / "checkpoint.pt"), cfg,
                                    args.keep, args.criterion, args.finetune, args.episodes,
                                    args.seed, args.distil, args.student_channels, **given)
    args.out.mkdir(parents=True, exist_ok=True)
    tuned.save(args.out / CHECKPOINT)
    if student is not None:
        student.save(args.out / STUDENT)
    (args.out / ROWS).write_text(json.dumps(rows, indent=2) + "\n")
    (args.out / TABLE).write_text(markdown(rows))
    print(markdown(rows), end="")
    return 0
