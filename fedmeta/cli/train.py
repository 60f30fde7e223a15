"""``fedmeta train``: central meta-training and held-out evaluation of one config."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from .. import config as config_module
from ..central import train_and_evaluate


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta train``."""
    p = sub.add_parser(
        "train", help="meta-train centrally (no federation) and evaluate on held-out tasks",
        description="Meta-train one algorithm on one task distribution on this machine, "
                    "then adapt on held-out tasks and report pre/post-adaptation quality "
                    "with 95%% confidence intervals. Writes checkpoint.pt (read by "
                    "`fedmeta evaluate`), summary.json and config.json to --out.")
    p.add_argument("--config", type=Path, help="TOML file with [task], [meta], [train]")
    p.add_argument("--set", dest="overrides", action="append", default=[],
                   metavar="SECTION.FIELD=VALUE",
                   help="override one field, e.g. --set meta.algorithm=anil (repeatable)")
    p.add_argument("--out", type=Path, default=Path("runs/train"),
                   help="output folder (default: runs/train)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Validate the config, train, evaluate, write the outputs and print the summary."""
    cfg = config_module.load(args.config, args.overrides)
    torch.manual_seed(cfg.train.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
    summary = train_and_evaluate(cfg, args.out / "checkpoint.pt",
                                 progress=not args.no_progress)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    return 0
