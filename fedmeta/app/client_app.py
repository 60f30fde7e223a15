"""The device: a ClientApp that meta-trains on its private tasks or scores held-out ones.

A device learns which partition it is from its node config (``partition-id``,
``num-partitions``) and everything else from each message's ConfigRecord, so the same app
runs under the simulation engine and on real SuperNodes. Its random draws come from
``(seed, round, partition-id)`` alone: training episodes from ``[seed, round, pid]``,
evaluation episodes from ``[seed, 0, pid]`` (``fedmeta.held_out``: the same at every
evaluation, so rounds are compared on the same tasks), whatever the scheduling; injected
faults (``[faults]``, ``fedmeta.app.faults``) from ``[seed, round, pid, attempt]``.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from ..config import Config, from_flat, resolve_device
from ..federated import FEDERATED_ALGORITHMS, FederatedAlgorithm, adapt_steps
from ..fleet import FleetRun, enabled as fleet_enabled
from ..held_out import score_device
from ..local_update import local_meta_train
from ..meta import MetaLearner, build_learner
from ..models import build_model
from ..privacy.mechanism import device_release
from ..tasks.episode import TaskSource
from ..tasks.factory import build_device_tasks
from . import faults
from .secagg import secagg_mod
from .records import (ARRAYS, ATTEMPT, CONFIG, METRICS, NUM_EXAMPLES, ROUND, SCORES, to_params,
                      to_record, scores_record)

PARTITION = "partition"  # the ConfigRecord of a query reply
MODEL, MODEL_KWARGS = "model", "model-kwargs"  # round-config entries: the model template

app = ClientApp(mods=[secagg_mod])  # SecAgg+ rounds only; other messages pass through


def load_app() -> ClientApp:
    """This module's ``app``, for the simulation engine's workers to load: a module-level
    function, so that Ray pickles it by reference (``fedmeta.app.worker_queue``)."""
    return app


@dataclass(frozen=True)
class Device:
    """What a device works with: its config, learner and private tasks."""

    partition: int
    cfg: Config
    algorithm: FederatedAlgorithm
    learner: MetaLearner
    source: TaskSource
    device: torch.device  # where it computes: under Ray, the GPU Ray gave this worker
    fleet: FleetRun | None = None  # the run's fleet: this device's local plan, compression


@lru_cache(maxsize=2)
def _config(flat: tuple) -> Config:
    """The run's validated config, once per process (not per device)."""
    return from_flat(dict(flat))


_LEARNERS = threading.local()  # this thread's learner for the run's config and model


def _learner(cfg: Config, flat: tuple, model: str, model_kwargs: str) -> MetaLearner:
    """The run's learner, built once per thread: it depends on the config and the model
    only, not on the device, but devices may run at once in threads of one process (a
    threaded grid, a SuperNode), and a learner's model is not safe to share between threads
    (a Ray worker runs one message at a time: one learner for all its devices)."""
    key = (flat, model, model_kwargs)
    cached = getattr(_LEARNERS, "cached", None)
    if cached is None or cached[0] != key:
        algorithm = FEDERATED_ALGORITHMS[cfg.federation.algorithm]
        learner = build_learner(algorithm.learner,
                                build_model(model, **json.loads(model_kwargs)),
                                inner_lr=cfg.meta.inner_lr, inner_steps=cfg.meta.inner_steps,
                                eval_steps=cfg.meta.eval_steps, precision=cfg.train.precision,
                                batched=cfg.train.batched)
        cached = _LEARNERS.cached = (key, learner)
    return cached[1]


@lru_cache(maxsize=4)
def _source(partition: int, num_partitions: int, flat: tuple) -> TaskSource:
    """A device's private tasks (the last few devices' kept per process)."""
    cfg = _config(flat)
    return build_device_tasks(cfg.task, partition, num_partitions, cfg.federation.num_held_out,
                              seed=cfg.train.seed)


@lru_cache(maxsize=4)
def _compute_device(name: str) -> torch.device:
    return resolve_device(name)


_FLEET: dict[tuple, FleetRun] = {}  # the run's fleet, built once per process


def _fleet(flat: tuple, model: str, model_kwargs: str, learner: MetaLearner,
           source: TaskSource) -> FleetRun:
    """The run's ``FleetRun`` (the same for every device, keyed by config and model)."""
    key = (flat, model, model_kwargs)
    if key not in _FLEET:
        _FLEET.clear()
        _FLEET[key] = FleetRun.from_config(from_flat(dict(flat)), learner,
                                           source.sample(np.random.default_rng(0)))
    return _FLEET[key]


def device_of(message: Message, context: Context) -> Device:
    """This node's device for the message's config: its tasks kept for the last few devices
    of the process, the learner built once per thread."""
    record = message.content[CONFIG]
    flat = tuple(sorted((k, tuple(v) if isinstance(v, list) else v)
                        for k, v in record.items() if "." in k))
    model, model_kwargs = str(record[MODEL]), str(record[MODEL_KWARGS])
    cfg = _config(flat)
    partition = int(context.node_config["partition-id"])
    learner = _learner(cfg, flat, model, model_kwargs)
    source = _source(partition, int(context.node_config["num-partitions"]), flat)
    fleet = _fleet(flat, model, model_kwargs, learner, source) if fleet_enabled(cfg) else None
    return Device(partition, cfg, FEDERATED_ALGORITHMS[cfg.federation.algorithm], learner,
                  source, _compute_device(cfg.train.device), fleet)


def _means(scores: dict[str, np.ndarray], episodes: int) -> MetricRecord:
    """Episode count and mean scores (accuracies are NaN for regression)."""
    return MetricRecord({NUM_EXAMPLES: episodes, **{k: float(v.mean()) for k, v in scores.items()}})


@app.query()
def query(message: Message, context: Context) -> Message:
    """Tell the server which partition this node holds."""
    record = ConfigRecord({k: int(context.node_config[k])
                           for k in ("partition-id", "num-partitions")})
    return Message(RecordDict({PARTITION: record}), reply_to=message)


@app.train()
def train(message: Message, context: Context) -> Message:
    """Local meta-steps from the received meta-parameters; reply the pseudo-gradient."""
    device = device_of(message, context)
    cfg, fed = device.cfg, device.cfg.federation
    server_round = int(message.content[CONFIG][ROUND])
    draw = (cfg.train.seed, server_round, device.partition,
            int(message.content[CONFIG].get(ATTEMPT, 0)))
    fault = faults.fault_of(cfg.faults, *draw, num_train=fed.num_train)
    faults.before_training(fault, cfg)
    rng = np.random.default_rng([cfg.train.seed, server_round, device.partition])
    learner, steps, meta_batch = device.learner, fed.local_steps, fed.meta_batch
    if device.fleet is not None:  # the device's local plan under its budget
        plan = device.fleet.plan(device.partition)
        learner = device.fleet.learner(plan, learner)
        steps, meta_batch = plan.local_steps, plan.meta_batch
    update = local_meta_train(
        learner, to_params(message.content[ARRAYS]), device.source, rng, steps,
        fed.local_lr, meta_batch,
        adapt_steps(device.algorithm, learner.inner_steps, cfg.meta.eval_steps, False),
        device.device)
    delta = device_release(update.delta, cfg.privacy, *draw)  # noise: secret unless insecure
    if device.fleet is not None:  # what the server decodes after fleet.compression
        delta = device.fleet.encode(delta)
    delta = faults.corrupt(fault, delta, cfg.faults, *draw)
    content = RecordDict({ARRAYS: to_record(delta),
                          METRICS: _means(update.scores, update.episodes)})
    return Message(content, reply_to=message)


@app.evaluate()
def evaluate(message: Message, context: Context) -> Message:
    """Adapt the received meta-model on fresh tasks' supports; reply per-episode scores."""
    device = device_of(message, context)
    cfg = device.cfg
    scores = score_device(cfg, device.learner, to_params(message.content[ARRAYS]),
                          device.source, device.partition, cfg.federation.eval_episodes,
                          device.device)
    content = RecordDict({SCORES: scores_record(scores),
                          METRICS: _means(scores, cfg.federation.eval_episodes)})
    return Message(content, reply_to=message)
