"""``fedmeta export``: the meta-model as a TorchScript program a device runs without fedmeta."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``fedmeta export``."""
    p = sub.add_parser(
        "export", help="export a checkpoint for devices (TorchScript, adapts with torch alone)",
        description="Write to --out: meta_model.pt, a TorchScript program holding the "
                    "meta-parameters that adapts them on a support set (the learner's inner "
                    "SGD steps, by torch.autograd.grad) and predicts the query set, so a "
                    "device needs torch but not fedmeta; meta_model.json (shapes, labels, "
                    "steps, how to call it); adapt_on_device.py (a torch-only script that "
                    "runs it on a saved episode). See docs/deployment.md.")
    p.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                   help="a checkpoint written by fedmeta train or fedmeta run")
    p.add_argument("--out", required=True, type=Path, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Export and print the program's description."""
    from ..export import export

    print(json.dumps(export(args.checkpoint, args.out), indent=2))
    return 0
