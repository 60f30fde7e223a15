"""``fedmeta compress``: structured pruning, meta-fine-tuning, distillation into a smaller
student and int8 of a Conv4 meta-model, each stage scored after adaptation on the same
held-out episodes.

Stages (in order):

- ``meta-model``: the checkpoint as trained;
- ``pruned``: ``fedmeta.export.prune`` to ``keep`` channels per block, no retraining;
- ``pruned + meta-fine-tuned``: that, meta-trained ``finetune`` more meta-updates with the
  checkpoint's learner and the run's outer optimizer (``train.meta_lr``,
  ``train.meta_optimizer``, ``train.meta_batch``) on the training tasks;
- ``int8`` of the meta-model and of the fine-tuned pruned model: adapted in float32, then
  batch-norm frozen to the support set and quantised (``fedmeta.export.quantize``);
- with ``distil > 0``, a student of ``student_channels`` channels per block (default
  ``keep``), initialised by pruning the meta-model to that width (same criterion) and
  meta-distilled ``distil`` meta-updates from the meta-model (``fedmeta.export.distil``:
  temperature ``T``, weight ``alpha`` of the KL term; the run's outer optimizer,
  meta-batch and training tasks), and its ``int8``.

Each stage adapts on every episode's support set (``meta.eval_steps`` steps) and is scored
on its query set; the same episodes serve every stage, so the change against the
meta-model is paired (mean and 95% CI of the per-episode differences). Sizes and FLOPs are
analytic (``fedmeta.export.fit``, ``fedmeta.fleet.cost``): an adaptation's FLOPs are
head-only for ANIL (the body once, then the head's steps) and ``steps`` full-network
steps for the other learners; adaptation latency is the median wall time of
``learner.adapt`` on this host's CPU (one thread).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from ..checkpoint import Checkpoint
from ..config import Config
from ..errors import ConfigError
from ..fleet.cost import ModelCost
from ..meta import MetaTrainer, build_learner
from ..meta.base import task_accuracy
from ..meta.evaluation import mean_ci95
from ..models import build_model
from ..tasks.factory import build_tasks
from .distil import ALPHA, TEMPERATURE, check_settings, distil as meta_distil
from .fit import needs, weight_bytes
from .prune import prune_conv4
from .quantize import inference_model, quantize

LOSS_FLAG = 0.02  # an accuracy loss above 2 points is reported as such


@dataclass
class Stage:
    """One compression stage: its checkpoint, whether it runs in int8, its scores."""

    name: str
    checkpoint: Checkpoint
    int8: bool = False
    scores: list[float] = field(default_factory=list)
    adapt_ms: float = float("nan")


def _finetune(ck: Checkpoint, cfg: Config, tasks: Any, iterations: int) -> Checkpoint:
    model = build_model(ck.model, **ck.model_kwargs)
    model.load_state_dict(ck.params)
    learner = build_learner(ck.algorithm, model, **ck.learner_kwargs)
    trainer = MetaTrainer(learner, cfg.train.meta_lr, cfg.train.meta_optimizer)
    params = trainer.train(tasks.train, iterations, cfg.train.meta_batch,
                           seed=cfg.train.seed + 7, progress=False)
    return Checkpoint(ck.algorithm, ck.model, ck.model_kwargs, ck.learner_kwargs,
                      {k: v.detach().clone() for k, v in params.items()}, ck.task)


def _score(stage: Stage, episode: Any, steps: int) -> float:
    ck = stage.checkpoint
    learner = ck.learner()
    fast = {k: v.detach() for k, v in learner.adapt(dict(ck.params), episode.support_x,
                                                     episode.support_y, steps).items()}
    with torch.no_grad():
        if stage.int8:
            model = quantize(inference_model(ck, fast, episode.support_x), episode.support_x)
            out = model(episode.query_x)
        else:
            out = learner.predict(fast, episode.query_x)
    return float(task_accuracy(out, episode.query_y))


def _adapt_ms(ck: Checkpoint, episode: Any, steps: int, repeats: int = 10) -> float:
    learner = ck.learner()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        learner.adapt(dict(ck.params), episode.support_x, episode.support_y, steps)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times[1:])


def _pruned(ck: Checkpoint, keep: int, criterion: str) -> Checkpoint:
    return Checkpoint(ck.algorithm, ck.model, {**ck.model_kwargs, "channels": keep},
                      ck.learner_kwargs, prune_conv4(dict(ck.params), keep, criterion), ck.task)


def _is_count(value: Any, least: int) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value >= least


def compress(ck: Checkpoint, cfg: Config, keep: int, criterion: str, finetune: int,
             episodes: int, seed: int, distil: int = 0, student_channels: int | None = None,
             temperature: float = TEMPERATURE, alpha: float = ALPHA,
             ) -> tuple[list[dict[str, Any]], Checkpoint, Checkpoint | None]:
    """Run the chain; return one row per stage (see the module docstring), the pruned,
    meta-fine-tuned checkpoint and the distilled student (``None`` without ``distil``)."""
    if ck.model != "conv4":
        raise ConfigError("checkpoint model", ck.model, "conv4 (channel pruning)")
    if not _is_count(finetune, 1):
        raise ConfigError("--finetune", finetune, "an integer >= 1 (meta-updates)")
    if not _is_count(episodes, 2):
        raise ConfigError("--episodes", episodes, "an integer >= 2")
    if not _is_count(distil, 0):
        raise ConfigError("--distil", distil, "an integer >= 0 (meta-updates; 0: none)")
    channels = int(ck.model_kwargs.get("channels", 64))
    if student_channels is not None and not distil:
        raise ConfigError("--student-channels", student_channels, "only with --distil N > 0")
    student_channels = keep if student_channels is None else student_channels
    if distil and not (_is_count(student_channels, 1) and student_channels <= channels):
        raise ConfigError("--student-channels", student_channels,
                          f"an integer in [1, {channels}] (the meta-model's channels)")
    if distil:
        check_settings(ck.algorithm, temperature, alpha, ("--temperature", "--alpha"))
    pruned = _pruned(ck, keep, criterion)
    tasks = build_tasks(cfg.task, seed=cfg.train.seed,
                        fleet=(cfg.federation.num_devices, cfg.federation.num_held_out))
    tuned = _finetune(pruned, cfg, tasks, finetune)
    label = f"pruned {keep}/{channels} ch ({criterion})"
    stages = [Stage("meta-model", ck), Stage(label, pruned),
              Stage(f"{label} + {finetune} meta-updates", tuned),
              Stage("int8 of meta-model", ck, int8=True),
              Stage(f"int8 of {label} + {finetune} meta-updates", tuned, int8=True)]
    student = None
    if distil:
        start = pruned if student_channels == keep else _pruned(ck, student_channels,
                                                                 criterion)
        student = meta_distil(ck, start, tasks.train, distil, cfg.train.meta_batch,
                              cfg.train.meta_lr, cfg.train.meta_optimizer,
                              cfg.train.seed + 11, temperature, alpha)
        name = (f"student {student_channels}/{channels} ch ({criterion}-pruned init) "
                f"+ {distil} distillation updates (T={temperature:g}, alpha={alpha:g})")
        stages += [Stage(name, student), Stage(f"int8 of {name}", student, int8=True)]
    steps = int(ck.learner_kwargs.get("eval_steps") or ck.learner_kwargs.get("inner_steps", 1))
    rng = np.random.default_rng(seed)
    for _ in range(episodes):
        episode = tasks.test.sample(rng)
        for stage in stages:
            stage.scores.append(_score(stage, episode, steps))
    shape = tuple(episode.support_x.shape[1:])
    support, query = len(episode.support_x), len(episode.query_x)
    base = np.array(stages[0].scores)
    rows = []
    for stage in stages:
        model = build_model(stage.checkpoint.model, **stage.checkpoint.model_kwargs)
        cost = ModelCost.of(model, shape)
        way = "head-only" if stage.checkpoint.algorithm == "anil" else "full network"
        adapt_flops = next(n.adapt_flops for n in needs(model, shape, support, query, steps)
                           if n.adaptation == way)
        scores = np.array(stage.scores)
        mean, ci = mean_ci95(scores)
        change, change_ci = mean_ci95(scores - base)
        rows.append({"stage": stage.name, "params": cost.params,
                     "bytes": weight_bytes(model, "int8" if stage.int8 else "float32"),
                     "adaptation": way, "flops_adapt": adapt_flops,
                     "flops_query": cost.fwd(query),
                     "adapt_ms": _adapt_ms(stage.checkpoint, episode, steps),
                     "accuracy": mean, "accuracy_ci95": ci, "change": change,
                     "change_ci95": change_ci,
                     "loses_over_2_points": bool(change < -LOSS_FLAG),
                     "episodes": episodes, "support": support, "query": query,
                     "steps": steps})
    return rows, tuned, student


def markdown(rows: list[dict[str, Any]]) -> str:
    """The stages as a markdown table."""
    lines = [("| stage | parameters | bytes | FLOPs / adaptation | FLOPs / query batch "
              "| adaptation (host, 1 thread) | accuracy after adaptation | change vs "
              "meta-model (paired) | loses > 2 points |"), "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['stage']} | {r['params']:,} | {r['bytes'] / 1024:.1f} KiB | "
                     f"{r['flops_adapt'] / 1e6:.1f} M ({r['adaptation']}, {r['steps']} steps) | "
                     f"{r['flops_query'] / 1e6:.1f} M | "
                     f"{r['adapt_ms']:.1f} ms | {100 * r['accuracy']:.1f} ± "
                     f"{100 * r['accuracy_ci95']:.1f} % | {100 * r['change']:+.1f} ± "
                     f"{100 * r['change_ci95']:.1f} points | "
                     f"{'**yes**' if r['loses_over_2_points'] else 'no'} |")
    return "\n".join(lines) + "\n"
