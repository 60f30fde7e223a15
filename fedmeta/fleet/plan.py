"""The local plan: which learner, how many inner steps, local steps and episodes a device
runs in a round, given its profile, the model's costs and the round's deadline.

Memory first: a learner whose estimated peak does not fit the device's memory falls back
(second-order MAML to first-order MAML or to ANIL, ``fleet.fallback``); a device that can
run nothing is *infeasible*. Then time, under the ``partial`` policy only: the full work
(``local_steps x meta_batch`` episodes of ``inner_steps``) shrinks until download, compute
and upload fit the deadline: fewer local steps, then fewer episodes per step, then fewer
inner steps, then the fallback learner; a device for which not even one episode of one step
fits is infeasible (it declines the round). Under ``drop`` and ``wait`` devices do the full
work; the clock (``clock.py``) decides what happens to the late ones.
"""

from __future__ import annotations

from dataclasses import dataclass

from .cost import ModelCost, episode_flops, memory_bytes, scoring_flops
from .profiles import DeviceProfile

POLICIES = ("partial", "drop", "wait")
FALLBACKS = ("fomaml", "anil", "none")
BITS_PER_BYTE = 8


@dataclass(frozen=True)
class Work:
    """What a device is asked to do in a round, before any budget."""

    learner: str
    inner_steps: int
    local_steps: int
    meta_batch: int
    support: int  # examples in an episode's support set
    query: int  # and in its query set
    score_steps: int  # adaptation steps when scoring the trained-on episodes


@dataclass(frozen=True)
class LocalPlan:
    """A device's plan for a round and its simulated cost; ``feasible`` False: it sits out."""

    learner: str
    inner_steps: int
    local_steps: int
    meta_batch: int
    flops: float
    memory_bytes: float
    compute_s: float
    comm_s: float
    feasible: bool = True
    partial: bool = False  # less work than asked
    fallback: bool = False  # another learner than asked

    @property
    def episodes(self) -> int:
        return self.local_steps * self.meta_batch

    @property
    def seconds(self) -> float:
        """Simulated seconds from receiving the round to the server receiving the reply."""
        return self.compute_s + self.comm_s


def comm_seconds(profile: DeviceProfile, down_bytes: float, up_bytes: float) -> float:
    """Seconds to download ``down_bytes`` and upload ``up_bytes`` on the device's links."""
    return BITS_PER_BYTE * (down_bytes / (profile.downlink_mbps * 1e6)
                            + up_bytes / (profile.uplink_mbps * 1e6))


def _plan(cost: ModelCost, profile: DeviceProfile, work: Work, learner: str,
          inner_steps: int, local_steps: int, meta_batch: int, comm_s: float,
          asked: str) -> LocalPlan:
    per_episode = episode_flops(cost, learner, work.support, work.query, inner_steps) \
        + scoring_flops(cost, work.support, work.query, min(work.score_steps, inner_steps)
                        if work.score_steps else 0)
    flops = per_episode * local_steps * meta_batch
    return LocalPlan(learner, inner_steps, local_steps, meta_batch, flops,
                     memory_bytes(cost, learner, work.support, work.query, inner_steps),
                     flops / profile.flops, comm_s,
                     partial=(inner_steps, local_steps, meta_batch) != (
                         work.inner_steps, work.local_steps, work.meta_batch),
                     fallback=learner != asked)


def _learners(asked: str, fallback: str) -> list[str]:
    """The learner asked for, then its fallback if it is second-order MAML."""
    return [asked] + ([fallback] if asked == "maml" and fallback != "none" else [])


def _largest(fits, top: int) -> int:
    """The largest ``n`` in ``[1, top]`` with ``fits(n)`` (monotone), or 0."""
    low, high = 0, top
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def local_plan(cost: ModelCost, profile: DeviceProfile, work: Work, comm_s: float,
               deadline_s: float, policy: str, fallback: str) -> LocalPlan:
    """The device's plan (module docstring); ``deadline_s`` only matters for ``partial``."""
    memory = profile.memory_gb * 1e9
    fitting = [lr for lr in _learners(work.learner, fallback)
               if memory_bytes(cost, lr, work.support, work.query, work.inner_steps) <= memory]
    if not fitting:
        plan = _plan(cost, profile, work, work.learner, work.inner_steps, work.local_steps,
                     work.meta_batch, comm_s, work.learner)
        return _infeasible(plan)
    if policy != "partial":
        return _plan(cost, profile, work, fitting[0], work.inner_steps, work.local_steps,
                     work.meta_batch, comm_s, work.learner)
    for learner in fitting:
        def make(k: int, steps: int, batch: int) -> LocalPlan:
            return _plan(cost, profile, work, learner, k, steps, batch, comm_s, work.learner)

        def fits(plan: LocalPlan) -> bool:
            return plan.seconds <= deadline_s

        steps = _largest(lambda n: fits(make(work.inner_steps, n, work.meta_batch)),
                         work.local_steps)
        if steps:
            return make(work.inner_steps, steps, work.meta_batch)
        batch = _largest(lambda n: fits(make(work.inner_steps, 1, n)), work.meta_batch)
        if batch:
            return make(work.inner_steps, 1, batch)
        inner = _largest(lambda n: fits(make(n, 1, 1)), work.inner_steps)
        if inner:
            return make(inner, 1, 1)
    return _infeasible(_plan(cost, profile, work, work.learner, work.inner_steps,
                             work.local_steps, work.meta_batch, comm_s, work.learner))


def _infeasible(plan: LocalPlan) -> LocalPlan:
    return LocalPlan(**{**plan.__dict__, "feasible": False})
