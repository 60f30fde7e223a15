"""Scoring a federated meta-model on the held-out devices, as their ClientApps do.

A held-out device draws its evaluation tasks from ``[seed, 0, partition]``: the same tasks
at every evaluation of a run, and the same for every run of the same config and seed. So
``score_held_out`` with the run's ``federation.eval_episodes`` gives exactly the run's last
evaluation, and with more episodes a finer one (the first episodes' tasks need not be the
same) without training again.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from .checkpoint import Checkpoint
from .config import Config, from_dict, resolve_device
from .errors import DataError
from .federated import FEDERATED_ALGORITHMS, adapt_steps
from .local_update import evaluate_device
from .meta import MetaLearner, Params
from .meta.evaluation import METRICS, summarize
from .meta.base import check_positive
from .tasks.episode import TaskSource
from .tasks.factory import build_device_tasks


def evaluation_rng(seed: int, partition: int) -> np.random.Generator:
    """The random draws of held-out device ``partition``'s evaluations."""
    return np.random.default_rng([seed, 0, partition])


def score_device(cfg: Config, learner: MetaLearner, params: Params, source: TaskSource,
                 partition: int, episodes: int,
                 device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-episode scores of ``params`` adapted on ``episodes`` tasks of held-out device
    ``partition`` (whose tasks are ``source``), computed on ``device``."""
    algorithm = FEDERATED_ALGORITHMS[cfg.federation.algorithm]
    steps = adapt_steps(algorithm, cfg.meta.inner_steps, cfg.meta.eval_steps, True)
    return evaluate_device(learner, params, source, evaluation_rng(cfg.train.seed, partition),
                           episodes, steps, device)


def score_held_out(cfg: Config, checkpoint: Checkpoint, episodes: int) -> dict[str, float]:
    """``summarize``'d scores of ``checkpoint`` over ``episodes`` tasks of every held-out
    device of ``cfg``'s fleet."""
    check_positive("episodes", episodes, integer=True)
    fed, learner = cfg.federation, checkpoint.learner()
    device = resolve_device(cfg.train.device)
    scores = [score_device(cfg, learner, checkpoint.params,
                           build_device_tasks(cfg.task, p, fed.num_devices, fed.num_held_out,
                                              seed=cfg.train.seed), p, episodes, device)
              for p in range(fed.num_train, fed.num_devices)]
    return summarize({m: np.concatenate([s[m] for s in scores]) for m in METRICS})


def rescore_run(out: str | Path, episodes: int) -> dict[str, float]:
    """``score_held_out`` of the finished federated run in folder ``out`` (its
    ``config.json`` and ``checkpoint.pt``)."""
    out = Path(out)
    try:
        cfg = from_dict(json.loads((out / "config.json").read_text()))
    except (OSError, ValueError) as exc:
        raise DataError(f"{out / 'config.json'}: not a run's config ({exc})") from exc
    return score_held_out(cfg, Checkpoint.load(out / "checkpoint.pt"), episodes)
