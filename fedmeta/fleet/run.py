"""A fleet in a federated run: who is on, who is sampled, their plans, and the clock.

``FleetRun`` is built the same way on the server and on every device from the run's
config, the learner and one example episode, so both sides agree on every device's plan
without sending it. The server asks ``select`` for each round's participants and
``columns`` for the round's record; a device asks ``plan`` for its own work and
``encode`` for the update it sends.

The clock: a participant's time is its download, compute and upload (``plan.py``); a
round lasts as long as its slowest kept participant, or the whole deadline under ``drop``
when someone was late (the server waited for it). Devices that cannot run the round's
work in memory, or (``partial``) in time, sit the round out; ``stragglers`` counts them
and the late ones dropped. Nothing here reads the host's clock.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import numpy as np

from ..federated import FEDERATED_ALGORITHMS, adapt_steps
from ..meta import MetaLearner, Params, build_learner
from ..privacy import sampling
from ..tasks.episode import Episode
from .compression import encoded_bytes, roundtrip
from .cost import ModelCost
from .fleet import Fleet, parse_tiers
from .flgo import load_network, load_pings
from .plan import LocalPlan, Work, comm_seconds, local_plan
from .profiles import PROFILES, load_profiles
from .traces import load_behaviour, load_capacity

SAMPLING_STREAM = 0x5A3F1E  # rng stream of sampling among available devices

FLOAT_BYTES = 4


def enabled(cfg: Any) -> bool:
    """Whether the config describes a fleet (``fleet.tiers`` set)."""
    return bool(cfg.fleet.tiers.strip())


def check(cfg: Any) -> None:
    """Raise the ``ConfigError`` of a bad ``[fleet]`` section (tiers, profiles, traces)."""
    if enabled(cfg):
        profiles = load_profiles(cfg.fleet.profiles_file) if cfg.fleet.profiles_file \
            else PROFILES
        parse_tiers(cfg.fleet.tiers, profiles, cfg.federation.rounds)
        measured(cfg)


def measured(cfg: Any) -> tuple[Any, Any, Any]:
    """The capacity, behaviour and network traces ``cfg.fleet`` names (``None`` where it
    names none), read once per process: a behaviour file ending in ``.csv`` is FLGo's
    ``pings.csv``, any other FedScale's pickle."""
    f = cfg.fleet
    behaviour = f.trace_behaviour
    flgo = behaviour.lower().endswith(".csv")
    return (load_capacity(f.trace_capacity) if f.trace_capacity else None,
            (load_pings if flgo else load_behaviour)(behaviour) if behaviour else None,
            load_network(f.trace_network) if f.trace_network else None)


@dataclass
class FleetRun:
    """The fleet of a run and its simulated clock (module docstring)."""

    cfg: Any
    fleet: Fleet
    cost: ModelCost
    work: Work
    param_sizes: list[int]
    elapsed_s: float = 0.0
    records: dict[int, dict[str, float]] = field(default_factory=dict)
    available_devices: dict[int, list[int]] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: Any, learner: MetaLearner, episode: Episode) -> FleetRun:
        """The run's fleet for ``cfg``, ``learner`` (the federated algorithm's) and an
        episode of the run's shapes."""
        f, fed = cfg.fleet, cfg.federation
        profiles = load_profiles(f.profiles_file) if f.profiles_file else PROFILES
        fleet = Fleet.sample(parse_tiers(f.tiers, profiles, fed.rounds), fed.num_devices,
                             cfg.train.seed)
        algorithm = FEDERATED_ALGORITHMS[fed.algorithm]
        work = Work(algorithm.learner, cfg.meta.inner_steps, fed.local_steps, fed.meta_batch,
                    int(episode.support_x.shape[0]), int(episode.query_x.shape[0]),
                    adapt_steps(algorithm, cfg.meta.inner_steps, cfg.meta.eval_steps, False))
        cost = ModelCost.of_episode(learner, episode) if learner.few_shot_only \
            else ModelCost.of(learner.model, tuple(episode.support_x.shape[1:]))
        images = int(episode.support_x.shape[0]) + int(episode.query_x.shape[0])
        per_example = cost.forward / images if cost.per_episode else cost.forward
        capacity, behaviour, network = measured(cfg)
        fleet = fleet.with_traces(capacity, behaviour, per_example, network)  # ms per sample
        return cls(cfg, fleet, cost, work, [v.numel() for v in learner.init_params().values()])

    # -- bytes and plans --------------------------------------------------------------------
    @cached_property
    def down_bytes(self) -> int:
        """The meta-parameters as float32, sent to each participant."""
        return FLOAT_BYTES * sum(self.param_sizes)

    @cached_property
    def up_bytes(self) -> int:
        """An update encoded by ``fleet.compression``."""
        return encoded_bytes(self.param_sizes, self.cfg.fleet.compression,
                             self.cfg.fleet.topk_fraction)

    def plan(self, device: int) -> LocalPlan:
        """Device ``device``'s plan for a round (the same every round)."""
        profile = self.fleet.profile(device)
        f = self.cfg.fleet
        return local_plan(self.cost, profile, self.work,
                          comm_seconds(profile, self.down_bytes, self.up_bytes),
                          f.deadline_s, f.policy, f.fallback)

    def learner(self, plan: LocalPlan, base: MetaLearner) -> MetaLearner:
        """The learner that runs ``plan``: ``base`` unless the plan changed it."""
        if plan.learner == base.name and plan.inner_steps == base.inner_steps:
            return base
        return build_learner(plan.learner, base.model, inner_lr=base.inner_lr,
                             inner_steps=plan.inner_steps, eval_steps=base.eval_steps,
                             batched=base.batched, precision=base.precision)

    def encode(self, update: Params) -> Params:
        """``update`` as the server decodes it after ``fleet.compression``."""
        return roundtrip(update, self.cfg.fleet.compression, self.cfg.fleet.topk_fraction)

    # -- rounds -----------------------------------------------------------------------------
    def select(self, server_round: int, candidates: list[int], count: int,
               attempt: int = 0, scheme: str = "fixed", rate: float = 0.0) -> list[int]:
        """The devices among ``candidates`` that train in ``server_round``: up to ``count``
        drawn (``fixed``; ``poisson``: each with probability ``rate``; seeded, a fresh draw
        for each retry ``attempt``) from the available ones (kept in
        ``available_devices``), minus those the policy drops. Records the round
        (``columns``) and adds its time to the clock; call once per round and attempt, in
        order. Under a behaviour trace, who is on is read at the clock's current time."""
        on = self.fleet.available(server_round, self.elapsed_s)
        available = [d for d in sorted(candidates) if on[d]]
        self.available_devices[server_round] = available
        rng = np.random.default_rng([self.cfg.train.seed, server_round, SAMPLING_STREAM]
                                    + ([attempt] if attempt else []))
        mask = sampling.draw(rng, len(available), scheme, rate, count)
        picked = [d for d, keep in zip(available, mask) if keep]
        plans = {d: self.plan(d) for d in picked}
        policy, deadline = self.cfg.fleet.policy, self.cfg.fleet.deadline_s
        late = {d for d, p in plans.items() if policy == "drop" and p.seconds > deadline}
        kept = [d for d in picked if plans[d].feasible and d not in late]
        dropped = len(picked) - len(kept)
        times = [plans[d].seconds for d in kept]
        if policy == "drop" and dropped:
            round_s = deadline
        else:
            round_s = max(times, default=deadline if policy != "wait" else 0.0)
        self.elapsed_s += round_s
        downloaded = len(picked) if policy != "partial" else len(kept)
        tiers = {t.name: 0 for t in self.fleet.tiers}
        for d in kept:
            tiers[self.fleet.tiers[self.fleet.tier[d]].name] += 1
        self.records[server_round] = {
            "sim_round_s": round_s, "sim_time_s": self.elapsed_s,
            "available": len(available), "sampled": len(picked), "stragglers": dropped,
            "partial": sum(plans[d].partial for d in kept),
            "fallback": sum(plans[d].fallback for d in kept),
            "sim_bytes_down": downloaded * self.down_bytes,
            "sim_bytes_up": len(kept) * self.up_bytes,
            **{f"participants_{name}": n for name, n in tiers.items()}}
        return kept

    def columns(self, server_round: int) -> dict[str, float]:
        """The round's record for ``results.csv`` (empty before ``select``)."""
        return dict(self.records.get(server_round, {}))
