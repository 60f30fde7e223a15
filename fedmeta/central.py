"""Central meta-training of one config: train, evaluate on held-out tasks, save."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .checkpoint import Checkpoint
from .config import Config, resolve_device
from .meta import MetaTrainer, build_learner
from .meta.evaluation import evaluate_source, summarize
from .models import build_model
from .errors import ConfigError
from .tasks.factory import build_tasks


def train_and_evaluate(cfg: Config, checkpoint: Path | None = None,
                       progress: bool = True) -> dict[str, Any]:
    """Meta-train ``cfg`` centrally, score it on held-out tasks, optionally save it.

    Computes on ``cfg.train.device``; the checkpoint holds CPU tensors. Returns a flat
    summary: algorithm, iterations, wall time, and the held-out
    pre/post-adaptation loss (and accuracy) with 95% confidence intervals.
    """
    if cfg.task.kind in ("hf", "hf-text") and cfg.task.protocol == "fedmeta":
        raise ConfigError("task.protocol", cfg.task.protocol,
                          "\"few-shot\" for central training; the FedMeta protocol (each "
                          "device its own task) is federated: fedmeta run")
    device = resolve_device(cfg.train.device)
    tasks = build_tasks(cfg.task, seed=cfg.train.seed,
                        fleet=(cfg.federation.num_devices, cfg.federation.num_held_out))
    model = build_model(tasks.model, **tasks.model_kwargs)
    learner_kwargs = {"inner_lr": cfg.meta.inner_lr, "inner_steps": cfg.meta.inner_steps,
                      "eval_steps": cfg.meta.eval_steps}
    learner = build_learner(cfg.meta.algorithm, model, precision=cfg.train.precision,
                            batched=cfg.train.batched, **learner_kwargs)
    trainer = MetaTrainer(learner, cfg.train.meta_lr, cfg.train.meta_optimizer, device)
    start = time.perf_counter()
    params = trainer.train(tasks.train, cfg.train.iterations, cfg.train.meta_batch,
                           seed=cfg.train.seed, progress=progress)
    train_s = time.perf_counter() - start
    scores = evaluate_source(learner, params, tasks.test, episodes=cfg.train.eval_episodes,
                             seed=cfg.train.seed + 1, device=device)
    if checkpoint is not None:
        Checkpoint(cfg.meta.algorithm, tasks.model, tasks.model_kwargs, learner_kwargs,
                   params, tasks.info).save(checkpoint)
    return {"algorithm": cfg.meta.algorithm, "task": tasks.info,
            "iterations": cfg.train.iterations, "meta_batch": cfg.train.meta_batch,
            "train_wall_s": round(train_s, 2),
            "eval_steps": cfg.meta.eval_steps, **summarize(scores)}
