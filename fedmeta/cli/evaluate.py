"""``fedmeta evaluate``: adapt a saved meta-model on image episodes and score it, as JSON."""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from ..checkpoint import Checkpoint
from ..config import resolve_device
from ..errors import DataError
from ..evaluate_episodes import score_episodes
from ..meta import ProtoNet
from ..meta.evaluation import summarize
from ..tasks.episode import Episode
from ..tasks.image_episodes import LAYOUTS, read_image_episodes
from ..tasks.images import IMAGE_SIZE

# JSON key -> the ``summarize`` key it reports.
SUMMARY = {"accuracy": "post_acc", "ci95": "post_acc_ci95", "pre_accuracy": "pre_acc",
           "pre_ci95": "pre_acc_ci95", "loss": "post_loss", "pre_loss": "pre_loss"}


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``evaluate``."""
    layouts = "; ".join(f"{name}: {shape}" for name, shape in LAYOUTS.items())
    parser = subparsers.add_parser(
        "evaluate", help="score a checkpoint on few-shot image episodes",
        description="Adapt a checkpoint on each episode's support images, score its query "
                    "images and print one JSON object: accuracy (mean post-adaptation query "
                    "accuracy), ci95 (half-width of its 95% confidence interval over "
                    f"episodes) and more. Episode layouts, as a folder or a .zip: {layouts}. "
                    f"Images become what the checkpoint's Conv4 takes: grey 28x28, or RGB at "
                    f"its image_size (a few-shot benchmark's: 84x84 or 32x32).")
    parser.add_argument("--checkpoint", required=True, type=Path, metavar="FILE",
                        help="a checkpoint saved by fedmeta train")
    parser.add_argument("--episodes", required=True, type=Path, metavar="PATH",
                        help="a folder or .zip of episodes in either layout")
    parser.add_argument("--steps", type=int, metavar="K",
                        help="adaptation steps (default: the checkpoint's eval_steps)")
    parser.add_argument("--per-episode", type=Path, metavar="FILE.csv",
                        help="also write one CSV row of scores per episode")
    parser.add_argument("--device", default="auto", metavar="DEVICE",
                        help="where to compute: auto (a GPU if visible, else the CPU), cpu, "
                             "cuda or cuda:N (default: auto)")
    parser.set_defaults(func=run)


def _finite(value: float) -> float | None:
    """JSON has no NaN: a score that does not exist (the CI of one episode, ProtoNet's
    pre-adaptation scores) is ``null``."""
    return None if math.isnan(value) else value


def run(args: argparse.Namespace) -> int:
    """Print the summary of the checkpoint's scores on the episodes as one JSON line."""
    device = resolve_device(args.device, "--device")
    checkpoint = Checkpoint.load(args.checkpoint)
    channels = checkpoint.model_kwargs.get("in_channels", 1)
    size = checkpoint.model_kwargs.get("image_size", IMAGE_SIZE)
    if checkpoint.model != "conv4" or channels not in (1, 3):
        raise DataError(f"checkpoint {args.checkpoint}: its {checkpoint.model!r} model does not "
                        f"take images; image episodes need a conv4 model of 1 channel (grey) "
                        f"or 3 (RGB)")
    learner = checkpoint.learner()
    data = read_image_episodes(args.episodes, channels, size)  # as the model takes them
    steps = learner.eval_steps if args.steps is None else args.steps
    scores = score_episodes(learner, checkpoint.params, data.episodes, steps, device)
    summary = summarize(scores)
    result = {key: _finite(summary.get(metric, math.nan)) for key, metric in SUMMARY.items()}
    result |= {"episodes": len(data),
               "queries": sum(len(e.query_y) for e in data.episodes.values()),
               "algorithm": learner.name, "layout": data.layout,
               "steps": None if isinstance(learner, ProtoNet) else steps}  # ProtoNet: no steps
    if args.per_episode is not None:
        _write_rows(args.per_episode, data.episodes, scores)
    print(json.dumps(result))
    return 0


def _write_rows(path: Path, episodes: Mapping[str, Episode],
                scores: dict[str, np.ndarray]) -> None:
    """One CSV row per episode: its name, shape and scores."""
    table = pd.DataFrame({
        "episode": list(episodes),
        "n_way": [e.n_way for e in episodes.values()],
        "support": [len(e.support_y) for e in episodes.values()],
        "queries": [len(e.query_y) for e in episodes.values()],
        **scores,
    })
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(path, index=False)
    except OSError as exc:
        raise DataError(f"{path}: cannot write the per-episode CSV ({exc.strerror or exc})") \
            from exc
