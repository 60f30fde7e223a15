"""``fedmeta rescore``: score a finished federated run's meta-model again on its held-out
devices, with as many episodes as asked, as JSON."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ..held_out import rescore_run


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``rescore``."""
    parser = subparsers.add_parser(
        "rescore", help="score a federated run's final meta-model on more held-out episodes",
        description="Adapt the final meta-model of a `fedmeta run` output folder on tasks of "
                    "the run's held-out devices, as their ClientApps do, and print one JSON "
                    "object of mean pre/post-adaptation scores and their 95%% CI half-widths. "
                    "With the run's federation.eval_episodes it reproduces the run's last "
                    "evaluation; more episodes narrow the interval, without training again.")
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR",
                        help="a fedmeta run output folder (config.json, checkpoint.pt)")
    parser.add_argument("--episodes", type=int, default=500, metavar="N",
                        help="episodes per held-out device (default: 500)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the rescored summary as one JSON line."""
    print(json.dumps(rescore_run(args.run_dir, args.episodes)))
    return 0
