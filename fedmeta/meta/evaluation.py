"""Scoring a meta-model by how well it adapts: means with 95% confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import torch

from ..tasks.episode import TaskSource, sample_batch
from .base import MetaLearner, Params, check_positive
from .shapes import evaluate_episodes

METRICS = ("pre_loss", "pre_acc", "post_loss", "post_acc")


def mean_ci95(values: np.ndarray) -> tuple[float, float]:
    """Mean and half-width of its normal 95% confidence interval (1.96 standard errors)."""
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0 or np.isnan(values).all():
        return math.nan, math.nan
    if values.size == 1:
        return float(values[0]), math.nan
    return float(values.mean()), float(1.96 * values.std(ddof=1) / math.sqrt(values.size))


def evaluate_source(learner: MetaLearner, params: Params, source: TaskSource,
                    episodes: int = 600, batch_size: int = 50, seed: int = 0,
                    steps: int | None = None,
                    device: torch.device | str = "cpu") -> dict[str, np.ndarray]:
    """Per-episode pre/post-adaptation loss and accuracy on ``episodes`` fresh episodes,
    computed on ``device`` (episodes drawn on the CPU, moved once per batch; episodes of
    several shapes are scored one shape at a time, ``shapes.evaluate_episodes``)."""
    check_positive("episodes", episodes, integer=True)
    check_positive("batch_size", batch_size, integer=True)
    rng = np.random.default_rng(seed)
    chunks: dict[str, list[torch.Tensor]] = {m: [] for m in METRICS}
    params = {k: v.to(device) for k, v in params.items()}
    for start in range(0, episodes, batch_size):
        n = min(batch_size, episodes - start)
        scores = evaluate_episodes(learner, params, sample_batch(source, rng, n), steps, device)
        for m in METRICS:
            chunks[m].append(scores[m].cpu())
    return {m: torch.cat(chunks[m]).double().numpy() for m in METRICS}


def summarize(scores: dict[str, np.ndarray]) -> dict[str, float]:
    """``{metric: mean, metric_ci95: half-width}`` for every metric with a value."""
    out: dict[str, float] = {"episodes": len(next(iter(scores.values())))}
    for name, values in scores.items():
        mean, ci = mean_ci95(values)
        if not math.isnan(mean):
            out[name], out[f"{name}_ci95"] = mean, ci
    return out
