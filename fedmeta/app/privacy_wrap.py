"""FedMeta with client-level differential privacy: clipped, noised meta-updates, accounted.

Why not Flower's ``DifferentialPrivacyServerSide{Fixed,Adaptive}Clipping`` wrappers and
``fixedclipping_mod``/``adaptiveclipping_mod``: they fit a FedAvg whose devices reply their
*local parameters*, and fedmeta's do not.

- They clip ``reply - current global arrays``; a fedmeta reply already *is* the update
  (``theta - theta_local``), so they would clip ``delta - theta``.
- They add noise to what the wrapped strategy's ``aggregate_train`` returns; FedMeta returns
  the meta-parameters *after* its server optimizer stepped on the clean mean, so the noise
  would miss Adam's state and the meta-parameters the server keeps.
- Their noise and the adaptive clipped count come from NumPy's global RNG: not reproducible
  from the seed. The adaptive wrappers also calibrate a round's noise to the clip norm they
  already updated, not the one they clipped with.
- Their accountant supports only no-amplification accounting with uniform weights.

So clipping and noise (``fedmeta.privacy``) act here on the pseudo-gradients, between
FedAvg's weighted mean and the server step, with Flower's flat-clipping and
``compute_stdv`` semantics; epsilon comes from Opacus (``fedmeta.privacy.accounting``).
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result

from ..config import Config, PrivacyConfig
from ..meta import MetaTrainer, MetaUpdate
from ..privacy import accounting
from ..privacy.clipping import AdaptiveClip, clip, l2_norm, split_noise
from ..privacy.mechanism import NOISE_STREAM, add_noise, generator, mean_sensitivity
from ..results import Row
from .secagg import secure_mean
from .records import ARRAYS, METRICS, NUM_EXAMPLES, to_params, to_record
from .strategy import FedMeta

logger = logging.getLogger("flwr.fedmeta")


class PrivateFedMeta(FedMeta):
    """FedMeta whose mean meta-update is differentially private at the device level.

    Every row reported carries ``epsilon`` (spent so far at ``privacy.delta``); train rows
    carry ``clip_norm``, the norm that round clipped to. ``norms`` keeps each round's per-device
    L2 norms of the contributions that entered the mean, for verification.
    """

    def __init__(self, cfg: Config, trainer: MetaTrainer,
                 report: Callable[[Row], None] = lambda row: None) -> None:
        super().__init__(cfg.federation, trainer, cfg.train.seed, self._annotated, cfg.faults)
        self.privacy: PrivacyConfig = cfg.privacy
        self._report = report
        p, fed = cfg.privacy, cfg.federation
        self.sample_rate = fed.train_per_round / fed.num_train
        self.adaptive = AdaptiveClip(p.clip_norm, p.target_quantile, p.clip_lr,
                                     fed.train_per_round / 20 if p.noise == "central" else 0.0
                                     ) if p.clipping == "adaptive" else None
        self.noise_multiplier = (split_noise(p.noise_multiplier, self.adaptive.count_std)
                                 if self.adaptive and p.noise == "central"
                                 else p.noise_multiplier)
        self.releases = 0  # rounds whose mean was released (central accounting)
        self.participation: Counter[int] = Counter()  # partition -> rounds (local)
        self.norms: dict[int, list[float]] = {}  # round -> contributions' L2 norms
        self.used_clip_norm: dict[int, float] = {}  # round -> the norm it clipped to

    # -- what the server spends and reports ------------------------------------------------
    @property
    def clip_norm(self) -> float:
        """The norm this round clips to."""
        return self.adaptive.clip_norm if self.adaptive else self.privacy.clip_norm

    def epsilon(self) -> float:
        """Epsilon spent so far (``inf`` without noise)."""
        p = self.privacy
        if p.noise == "local":
            return accounting.epsilon(p.accountant, p.noise_multiplier, 1.0,
                                      max(self.participation.values(), default=0), p.delta)
        noise = p.noise_multiplier if p.noise == "central" else 0.0
        return accounting.epsilon(p.accountant, noise, self.sample_rate, self.releases,
                                  p.delta)

    def _annotated(self, row: Row) -> None:
        clip_norm = self.used_clip_norm.get(row.round, math.nan) if row.source == "train" \
            and self.privacy.clipping != "none" else math.nan
        self._report(dataclasses.replace(row, extra={**row.extra, "epsilon": self.epsilon(),
                                                     "clip_norm": clip_norm}))

    # -- the private mean ------------------------------------------------------------------
    def aggregate_updates(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        p, clip_norm = self.privacy, self.clip_norm
        server_clips = p.clipping != "none" and p.noise != "local"
        clipped_count, norms = 0, []
        for reply in replies:
            update = to_params(reply.content[ARRAYS])
            if server_clips:
                update, was_clipped = clip(update, clip_norm)
                clipped_count += was_clipped
                reply.content[ARRAYS] = to_record(update)
            norms.append(l2_norm(update))
        self.norms[server_round], self.used_clip_norm[server_round] = norms, clip_norm
        arrays, metrics, left_out = super().aggregate_updates(server_round, replies)
        if arrays is None:
            return arrays, metrics, left_out
        if p.noise == "central":
            weights = [float(r.content[METRICS][NUM_EXAMPLES]) for r in replies]
            std = self.noise_multiplier * mean_sensitivity(clip_norm, weights)
            arrays = to_record(add_noise(to_params(arrays), std,
                                         generator(self.seed, server_round, NOISE_STREAM)))
        self.releases += 1
        self.participation.update(self.partitions[r.metadata.src_node_id] for r in replies)
        if self.adaptive:
            self.adaptive.update(clipped_count, len(replies), np.random.default_rng(
                [self.seed, server_round, NOISE_STREAM, 1]))
        return arrays, metrics, left_out

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

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        if not self.privacy.secure_aggregation:
            return super().aggregate_train(server_round, replies)
        grid, messages = self._secagg_round
        self._sent.pop(("train", server_round), None)  # the protocol's own bytes count
        result = secure_mean(grid, messages, self.privacy, self.seed)
        metrics = None
        if result.mean is not None:
            weights = [m[NUM_EXAMPLES] for m in result.metrics]
            mean = result.mean
            if self.privacy.noise == "central":
                std = self.noise_multiplier * mean_sensitivity(self.clip_norm, weights)
                mean = add_noise(mean, std, generator(self.seed, server_round, NOISE_STREAM))
            self.trainer.step(MetaUpdate(mean, {}))
            self.releases += 1
            self.participation.update(self.partitions[n] for n in result.devices)
            self.used_clip_norm[server_round] = self.clip_norm
            metrics = MetricRecord({k: float(np.average([m[k] for m in result.metrics],
                                                        weights=weights))
                                    for k in result.metrics[0] if k != NUM_EXAMPLES})
        status = "ok" if result.mean is not None else "skipped"
        self.status[server_round] = status
        self.device_reports.add("left_out_of_secagg", f"round {server_round}",
                                "replies missing from the SecAgg+ sum (a stage failed or "
                                "timed out)", len(messages) - len(result.devices))
        self.report(Row(server_round, "train", len(result.devices),
                        len(messages) - len(result.devices),
                        int(sum(m[NUM_EXAMPLES] for m in result.metrics)),
                        dict(metrics or {}), result.bytes_down, result.bytes_up,
                        status=status))
        return to_record(self.trainer.params), metrics

    # -- stopping at the target ------------------------------------------------------------
    def rounds_within_target(self, num_rounds: int) -> int:
        """Rounds that keep epsilon within ``target_epsilon`` (all of them without one).

        Under local noise the bound is for a device that trains every round."""
        p = self.privacy
        if p.target_epsilon == 0:
            return num_rounds
        rate = 1.0 if p.noise == "local" else self.sample_rate
        return accounting.rounds_within(p.target_epsilon, p.accountant, p.noise_multiplier,
                                        rate, num_rounds, p.delta)

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              **resume: Any) -> Result:
        """FedMeta's run, ended before the first round that would exceed the target."""
        allowed = self.rounds_within_target(num_rounds)
        if allowed < num_rounds:
            logger.warning("privacy.target_epsilon=%g allows %d of %d rounds; stopping there",
                           self.privacy.target_epsilon, allowed, num_rounds)
        return super().start(grid, initial_arrays, allowed, timeout, train_config,
                             evaluate_config, evaluate_fn, **resume)


def make_strategy(cfg: Config, trainer: MetaTrainer,
                  report: Callable[[Row], None]) -> FedMeta:
    """FedMeta, or PrivateFedMeta when ``cfg.privacy`` asks for clipping, noise or SecAgg+
    (``fedmeta.app.secagg``)."""
    if cfg.privacy.enabled:
        return PrivateFedMeta(cfg, trainer, report)
    return FedMeta(cfg.federation, trainer, cfg.train.seed, report, cfg.faults)


def privacy_summary(cfg: Config, frame) -> dict[str, object]:  # frame: pandas.DataFrame
    """What ``summary.json`` says of privacy: accountant, delta, final epsilon, settings."""
    p = cfg.privacy
    if not p.enabled:
        return {}
    final_epsilon = float(frame["epsilon"].iloc[-1])
    trained = frame.loc[frame["source"] == "train", "round"]
    return {"privacy": {
        "accountant": accounting.NAMES[p.accountant], "delta": p.delta,
        "epsilon": final_epsilon if math.isfinite(final_epsilon) else None,
        "noise": p.noise, "noise_multiplier": p.noise_multiplier,
        "sample_rate": (cfg.federation.train_per_round / cfg.federation.num_train
                        if p.noise != "local" else 1.0),
        "clipping": p.clipping, "clip_on": p.clip_on, "clip_norm": p.clip_norm,
        "target_epsilon": p.target_epsilon or None,
        "rounds_trained": int(trained.max()) if len(trained) else 0,
        "secure_aggregation": p.secure_aggregation}}
