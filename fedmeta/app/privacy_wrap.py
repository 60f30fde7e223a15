"""FedMeta with client-level differential privacy: clipped, noised meta-updates, accounted.

Why not Flower's ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` wrappers and
``fixedclipping_mod``/``adaptiveclipping_mod``: they fit a FedAvg whose devices reply their
*local parameters*, and fedmeta's do not.

- They clip ``reply - current global arrays``; a fedmeta reply already *is* the update
  (``theta - theta_local``), so they would clip ``delta - theta``.
- They add noise to what the wrapped strategy's ``aggregate_train`` returns; FedMeta returns
  the meta-parameters *after* its server optimizer stepped on the clean mean, so the noise
  would miss Adam's state and the meta-parameters the server keeps.
- Their noise and the adaptive clipped count come from NumPy's global RNG. The adaptive
  wrappers also calibrate a round's noise to the clip norm they already updated, not the
  one they clipped with.
- Their accountant supports only no-amplification accounting with uniform weights.

So clipping and noise (``fedmeta.privacy``) act here on the pseudo-gradients, between
the mean and the server step. Private runs sample devices by ``privacy.sampling``
(``fedmeta.privacy.sampling``); noise is secret (``fedmeta.privacy.mechanism``); every
device's releases go to a ``fedmeta.privacy.accounting.Ledger`` and the run reports the
worst device's epsilon, with the sampling scheme, adjacency and accountant it assumes.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from ..config import COUNT_STD_SHARE, Config, PrivacyConfig
from ..meta import MetaTrainer, MetaUpdate
from ..privacy import accounting, sampling
from ..privacy.clipping import AdaptiveClip, clip, l2_norm, split_noise
from ..privacy.mechanism import PoissonSum, add_noise, mean_sensitivity, noise_source
from ..privacy.sampling import ADJACENCY, NOISE_SCALE
from ..results import Row
from .faults import fault_of
from .fold import Fold, MetricMean
from .secagg import secure_mean
from .records import ARRAYS, METRICS, NUM_EXAMPLES, to_params, to_record
from .strategy import FedMeta

logger = logging.getLogger("flwr.fedmeta")


class PrivateFedMeta(FedMeta):
    """FedMeta whose mean meta-update is differentially private at the device level.

    Every row reported carries ``epsilon`` (the worst device's so far at ``privacy.delta``)
    and what it assumes (``dp_*`` columns, ``epsilon_guarantee``); train rows carry
    ``clip_norm``, the norm that round clipped to. ``norms`` keeps each round's per-device
    L2 norms of the contributions that entered the mean, for verification; ``ledger`` every
    device's releases.
    """

    def __init__(self, cfg: Config, trainer: MetaTrainer,
                 report: Callable[[Row], None] = lambda row: None) -> None:
        super().__init__(cfg.federation, trainer, cfg.train.seed, self._annotated, cfg.faults)
        self.privacy: PrivacyConfig = cfg.privacy
        self._report = report
        p, fed = cfg.privacy, cfg.federation
        self.scheme = p.scheme
        self.sample_rate = fed.train_per_round / fed.num_train
        self.adaptive = AdaptiveClip(p.clip_norm, p.target_quantile, p.clip_lr,
                                     fed.train_per_round / COUNT_STD_SHARE
                                     if p.noise == "central" else 0.0
                                     ) if p.clipping == "adaptive" else None
        self.noise_multiplier = (split_noise(p.noise_multiplier, self.adaptive.count_std)
                                 if self.adaptive and p.noise == "central"
                                 else p.noise_multiplier)
        self.releases = 0  # rounds whose mean was released
        self.ledger = accounting.Ledger(p.accountant, p.delta)
        self.norms: dict[int, list[float]] = {}  # round -> contributions' L2 norms
        self.used_clip_norm: dict[int, float] = {}  # round -> the norm it clipped to

    # -- what the server spends and reports ------------------------------------------------
    @property
    def clip_norm(self) -> float:
        """The norm this round clips to."""
        return self.adaptive.clip_norm if self.adaptive else self.privacy.clip_norm

    @property
    def accounted_noise(self) -> float:
        """The noise multiplier each release is accounted at: ``z`` under add/remove
        (central noise, Poisson sampling), ``z / 2`` under replace-one (fixed sampling,
        local noise)."""
        p = self.privacy
        return p.noise_multiplier * (0.5 if p.noise == "local" else NOISE_SCALE[self.scheme])

    def epsilon(self) -> float:
        """Epsilon spent so far by the worst device (``inf`` without noise)."""
        if not self.privacy.noisy:
            return math.inf if self.releases else 0.0
        return self.ledger.worst()

    def _annotated(self, row: Row) -> None:
        clip_norm = self.used_clip_norm.get(row.round, math.nan) if row.source == "train" \
            and self.privacy.clipping != "none" else math.nan
        spread = list(self.ledger.epsilons().values()) or [0.0]
        noisy, worst = self.privacy.noisy, self.epsilon()
        self._report(dataclasses.replace(row, extra={
            **row.extra, "epsilon": worst,
            "epsilon_device_median": float(np.median(spread)) if noisy else worst,
            "epsilon_device_min": float(min(spread)) if noisy else worst,
            "clip_norm": clip_norm, **assumptions(self.privacy)}))

    def _record_central(self, server_round: int) -> None:
        """A released noised mean: every device eligible this round may be in it."""
        eligible = self.eligible.get(server_round, [])
        rate = sampling.inclusion_rate(self.scheme, self.sample_rate,
                                       self.fed.train_per_round, len(eligible))
        for device in eligible:
            self.ledger.record(device, self.accounted_noise, rate)

    # -- the private mean ------------------------------------------------------------------
    def enough(self, good: int) -> bool:
        """Under Poisson sampling with central noise every round releases its noised sum,
        however few devices replied (a retry would reveal their number)."""
        if self.privacy.noise == "central" and self.scheme == "poisson":
            return True
        return super().enough(good)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not self.privacy.secure_aggregation:
            return super().aggregate_train(server_round, self._accounted(replies))
        return self._secure_train(server_round)

    def _accounted(self, replies: Iterable[Message]) -> Iterator[Message]:
        """``replies``, each device's locally noised release recorded as it passes."""
        local = self.privacy.noise == "local" and self.privacy.noisy  # every one counts
        for reply in replies:
            node = reply.metadata.src_node_id
            if local and reply.has_content() and node in self.partitions:
                self.ledger.record(self.partitions[node], self.accounted_noise, 1.0)
            yield reply

    def fold(self, server_round: int) -> Fold:
        """The private mean, one reply at a time (``PrivateMean``): under central noise and
        Poisson sampling the clipped sum over the expected count, else FedMeta's rule over
        the clipped updates."""
        poisson = self.privacy.noise == "central" and self.scheme == "poisson"
        return PrivateMean(self, server_round, None if poisson else super().fold(server_round))

    # -- secure aggregation ----------------------------------------------------------------
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """FedMeta's messages; under SecAgg+ they are kept for ``aggregate_train`` to send
        through the protocol, and none go out in the clear."""
        messages = list(super().configure_train(server_round, arrays, config, grid))
        if not self.privacy.secure_aggregation:
            return messages
        self._secagg_round = (grid, messages)
        return []

    def _secure_train(self, server_round: int
                      ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Under SecAgg+: the protocol's unmasked mean, noised by the server under central
        noise and stepped on, with the devices it lost counted by kind; a round it could not
        finish (too few devices for its threshold or ``federation.min_good_replies``, an
        error inside Flower, a sum out of range) is retried or skipped as plaintext rounds
        are."""
        grid, messages = self._secagg_round
        self._sent.pop(("train", server_round), None)  # the protocol's own bytes count
        self._asked.pop(("train", server_round), None)  # the protocol counts the missing
        attempt = self.attempt.get(server_round, 0)
        result = secure_mean(grid, messages, self.privacy, self.seed,
                             timeout=self.fed.round_timeout)
        if self.privacy.noise == "local" and self.privacy.noisy:  # each may have released
            for message in messages:
                self.ledger.record(self.partitions[message.metadata.dst_node_id],
                                   self.accounted_noise, 1.0)
        faults = Counter(result.lost.values())
        faults["byzantine"] = sum(fault_of(
            self.faults, self.seed, server_round, self.partitions[n], attempt,
            self.fed.num_train) == "byzantine" for n in result.devices)
        mean, metrics = result.mean, None
        if mean is not None and len(result.devices) < self.fed.min_good_replies:
            mean = None
            logger.warning("round %d: %d devices in the SecAgg+ sum, %d needed (federation."
                           "min_good_replies)", server_round, len(result.devices),
                           self.fed.min_good_replies)
        if mean is not None:
            weights = [m[NUM_EXAMPLES] for m in result.metrics]
            if self.privacy.noise == "central":
                std = self.noise_multiplier * mean_sensitivity(self.clip_norm, weights)
                mean = add_noise(mean, std, noise_source(self.privacy, self.seed,
                                                         server_round))
                self._record_central(server_round)
            self.trainer.step(MetaUpdate(mean, {}))
            self.releases += 1
            self.used_clip_norm[server_round] = self.clip_norm
            metrics = MetricRecord({k: float(np.average([m[k] for m in result.metrics],
                                                        weights=weights))
                                    for k in result.metrics[0] if k != NUM_EXAMPLES})
            status = "ok"
        else:
            retry = self.fed.short_round == "retry" and attempt < self.fed.max_retries
            status = "retried" if retry else "skipped"
            logger.warning("round %d: no SecAgg+ mean (%s): %s", server_round,
                           result.failure or "too few devices", status)
        self.status[server_round] = status
        summed = len(result.devices) if mean is not None else 0
        for node, kind in result.lost.items():
            self.device_reports.add(kind, f"round {server_round}, device "
                                    f"{self.partitions.get(node, '?')} (SecAgg+)",
                                    "lost during the SecAgg+ protocol")
        if mean is None:
            self.device_reports.add("secagg_round_failed", f"round {server_round}",
                                    result.failure or "too few devices in the SecAgg+ sum")
        self.report(Row(server_round, "train", summed, len(messages) - summed,
                        int(sum(m[NUM_EXAMPLES] for m in result.metrics)) if summed else 0,
                        dict(metrics or {}), result.bytes_down, result.bytes_up,
                        dict(faults), attempt, status))
        return to_record(self.trainer.params), metrics

    # -- stopping at the target ------------------------------------------------------------
    def planned_epsilon(self, rounds: int) -> float:
        """The worst device's epsilon after ``rounds`` released rounds, planned ahead: under
        central noise from who is eligible each round (the fleet's availability; under a
        behaviour trace, whose rounds' times are not known ahead, a bound: every device
        eligible every round, at rate ``q`` (Poisson) or 1 (fixed)), under local noise for a
        device that replies every round and every retry."""
        p, fed = self.privacy, self.fed
        ledger = accounting.Ledger(p.accountant, p.delta)
        if p.noise == "local":
            attempts = 1 + (fed.max_retries if fed.short_round == "retry" else 0)
            ledger.record(0, self.accounted_noise, 1.0, rounds * attempts)
            return ledger.worst()
        for server_round in range(1, rounds + 1):
            eligible = list(range(fed.num_train))
            if self.fleet is not None and self.fleet.fleet.behaviour is None:
                on = self.fleet.fleet.available(server_round)
                eligible = [d for d in eligible if on[d]]
            rate = sampling.inclusion_rate(self.scheme, self.sample_rate,
                                           fed.train_per_round, len(eligible))
            if self.fleet is not None and self.fleet.fleet.behaviour is not None:
                rate = self.sample_rate if self.scheme == "poisson" else 1.0  # at most
            for device in eligible:
                ledger.record(device, self.accounted_noise, rate)
        return ledger.worst()

    def rounds_within_target(self, num_rounds: int) -> int:
        """Rounds that keep epsilon within ``target_epsilon`` (all of them without one)."""
        if self.privacy.target_epsilon == 0:
            return num_rounds
        return accounting.rounds_within(self.privacy.target_epsilon, self.planned_epsilon,
                                        num_rounds)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              **resume: Any) -> Result:
        """FedMeta's run, ended before the first round that would exceed the target."""
        if self.privacy.insecure_reproducible_noise:
            logger.warning(INSECURE_WARNING)
        allowed = self.rounds_within_target(num_rounds)
        if allowed < num_rounds:
            logger.warning("privacy.target_epsilon=%g allows %d of %d rounds; stopping there",
                           self.privacy.target_epsilon, allowed, num_rounds)
        return super().start(grid, initial_arrays, allowed, timeout, train_config,
                             evaluate_config, evaluate_fn, **resume)


class PrivateMean:
    """A private round's aggregate, folded one reply at a time in O(model) (but for the
    robust rules, which keep every reply): each update is clipped to the round's clip norm
    on the server (unless devices clip, or noise locally) and passed to ``inner`` (FedMeta's
    rule), or with ``inner=None`` (central noise, Poisson sampling) summed for the sum over
    the expected count. ``result`` adds the central noise, accounts the release and moves the
    adaptive clip norm; it is called only for a round that is aggregated."""

    def __init__(self, strategy: PrivateFedMeta, server_round: int, inner: Fold | None
                 ) -> None:
        self.s, self.round, self.inner = strategy, server_round, inner
        self.clip_norm = strategy.clip_norm
        self.sum = PoissonSum(strategy.trainer.params) if inner is None else None
        self.metrics = MetricMean(NUM_EXAMPLES)
        self.norms: list[float] = []
        self.weights: list[float] = []
        self.clipped = 0

    @property
    def keeps(self) -> bool:
        return self.inner is not None and self.inner.keeps

    def add(self, reply: Message) -> None:
        p = self.s.privacy
        update = to_params(reply.content[ARRAYS])
        if p.clipping != "none" and p.noise != "local":  # the server clips
            update, was_clipped = clip(update, self.clip_norm)
            self.clipped += was_clipped
            record = reply.content[ARRAYS]  # replaced in place: see ``fold.let_go``
            record.clear()
            for key, array in to_record(update).items():
                record[key] = array
        self.norms.append(l2_norm(update))
        self.weights.append(float(reply.content[METRICS][NUM_EXAMPLES]))
        if self.sum is not None:
            self.sum.add(update)
            self.metrics.add(reply.content[METRICS])
        else:
            self.inner.add(reply)

    def result(self) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        s, p, server_round, clip_norm = self.s, self.s.privacy, self.round, self.clip_norm
        s.norms[server_round], s.used_clip_norm[server_round] = self.norms, clip_norm
        central = p.noise == "central"
        left_out: list[Message] = []
        if self.sum is not None:
            expected = s.sample_rate * len(s.eligible.get(server_round, []))
            if expected == 0:  # nobody could take part (a fleet with no device on)
                return None, None, []
            arrays = to_record(add_noise(self.sum.mean(expected),
                                         s.noise_multiplier * clip_norm / expected,
                                         noise_source(p, s.seed, server_round)))
            metrics = self.metrics.result() if len(self.metrics) else None
        else:
            expected = float(len(self.weights))
            arrays, metrics, left_out = self.inner.result()
            if arrays is None:
                return arrays, metrics, left_out
            if central:
                std = s.noise_multiplier * mean_sensitivity(clip_norm, self.weights)
                arrays = to_record(add_noise(to_params(arrays), std,
                                             noise_source(p, s.seed, server_round)))
        s.releases += 1
        if central:
            s._record_central(server_round)
        if s.adaptive:
            s.adaptive.update(self.clipped, len(self.weights), float(noise_source(
                p, s.seed, server_round, 1).normal((), torch.float64)), expected)
        return arrays, metrics, left_out


def make_strategy(cfg: Config, trainer: MetaTrainer,
                  report: Callable[[Row], None]) -> FedMeta:
    """FedMeta, or PrivateFedMeta when ``cfg.privacy`` asks for clipping, noise or SecAgg+
    (``fedmeta.app.secagg``)."""
    if cfg.privacy.enabled:
        return PrivateFedMeta(cfg, trainer, report)
    return FedMeta(cfg.federation, trainer, cfg.train.seed, report, cfg.faults)


INSECURE_WARNING = ("privacy.insecure_reproducible_noise=true: the DP noise is seeded from "
                    "train.seed and can be regenerated and subtracted; the epsilon reported "
                    "is NOT a privacy guarantee")


def assumptions(p: PrivacyConfig) -> dict[str, str]:
    """What the reported epsilon assumes: sampling, adjacency, accountant, and whether it
    is a guarantee at all (``results.csv`` columns, ``summary.json``)."""
    if not p.noisy:
        adjacency, guarantee = "none", "no: no noise is added, epsilon is infinite"
    else:
        adjacency = ADJACENCY["fixed" if p.noise == "local" else p.scheme]
        guarantee = ("NO: privacy.insecure_reproducible_noise=true, the noise can be "
                     "regenerated from train.seed" if p.insecure_reproducible_noise else "yes")
    return {"dp_sampling": p.scheme, "dp_adjacency": adjacency,
            "dp_accountant": accounting.NAMES[p.accountant], "epsilon_guarantee": guarantee}


def privacy_summary(cfg: Config, frame) -> dict[str, object]:  # frame: pandas.DataFrame
    """What ``summary.json`` says of privacy: accountant, sampling, adjacency, delta, the
    worst device's final epsilon and the median device's, whether it is a guarantee, and
    the settings."""
    p = cfg.privacy
    if not p.enabled:
        return {}
    last = frame.iloc[-1]
    final_epsilon = float(last["epsilon"])
    spread = {name: float(last[f"epsilon_device_{name}"]) for name in ("min", "median")}
    trained = frame.loc[frame["source"] == "train", "round"]
    accounted = p.noise_multiplier * (0.5 if p.noise == "local" else NOISE_SCALE[p.scheme])
    return {"privacy": {
        **{k.removeprefix("dp_"): v for k, v in assumptions(p).items()},
        "delta": p.delta,
        "epsilon": final_epsilon if math.isfinite(final_epsilon) else None,
        "epsilon_of": "the worst device (most releases, highest inclusion probability)",
        **{f"epsilon_device_{k}": v if math.isfinite(v) else None for k, v in spread.items()},
        "noise": p.noise, "noise_multiplier": p.noise_multiplier,
        "noise_multiplier_accounted": accounted,
        "sample_rate": (cfg.federation.train_per_round / cfg.federation.num_train
                        if p.noise != "local" else 1.0),
        "clipping": p.clipping, "clip_on": p.clip_on, "clip_norm": p.clip_norm,
        "target_epsilon": p.target_epsilon or None,
        "rounds_trained": int(trained.max()) if len(trained) else 0,
        "secure_aggregation": p.secure_aggregation}}
