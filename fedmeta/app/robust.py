"""Robust aggregation of the devices' meta-updates (``federation.aggregation``).

Every federated algorithm replies a pseudo-gradient ``theta - theta_local`` that the server
optimizer then steps along, so one aggregation rule serves them all:

- ``mean``: FedAvg's episode-weighted mean (Flower's ``FedAvg``);
- ``median``: coordinate-wise median (Flower's ``FedMedian``, Yin et al. 2018);
- ``trimmed-mean``: coordinate-wise mean without the ``trim_fraction`` largest and smallest
  values (Flower's ``FedTrimmedAvg``, ``beta = trim_fraction``);
- ``multi-krum``: the ``krum_select`` updates closest to their neighbours, assuming at most
  ``krum_malicious`` attackers, then their weighted mean (Flower's ``select_multikrum``, as
  its ``MultiKrum`` does, Blanchard et al. 2017; ``krum_select="auto"``: the replies minus
  ``krum_malicious``);
- ``norm-bound``: every update scaled down to L2 norm at most ``norm_bound`` (``"auto"``: the
  median norm of the round's updates), then the weighted mean (Sun et al. 2019, "Can you
  really backdoor federated learning?");
- ``norm-filter``: the replies whose update norm exceeds ``filter_factor`` times the round's
  median norm are left out, the rest averaged (weighted). Like TensorFlow Federated's
  zeroing aggregator (Andrew et al. 2021), but a dropped reply does not dilute the mean.
  It stops attackers whose updates stand out in size, at full honest quality; one that stays
  under the threshold goes through unbounded in direction.
- ``norm-filter-bound``: ``norm-filter``, then every update it keeps scaled down to L2 norm at
  most ``norm_bound`` (``"auto"``: the round's median norm), then the weighted mean. The
  composition of TensorFlow Federated's ``robust_aggregator`` (zeroing, then clipping): the
  filter drops the updates that stand out, the bound caps what a kept attacker can do.
- ``norm-direction-filter``: ``norm-filter``, and also the replies whose update points against
  the coordinate-wise median of the round's updates (a negative inner product with it) are
  left out. The median stays among the honest values per coordinate while honest devices are
  the majority, so an attacker small enough to pass the norm filter must still pull along
  the honest direction to be averaged. FLTrust's test (Cao et al. 2021: a reply of negative
  cosine similarity gets no weight), with the median in place of FLTrust's update on server
  data.

Norm bounding and filtering are ours: Flower's clipping wrappers
(``DifferentialPrivacyServerSide*``) clip the difference between a reply and the global
*model* and add Gaussian noise for differential privacy, while our replies already are
updates and we want no noise and a bound that adapts to the algorithm's update scale (the
median norm, an honest one while honest devices are the majority).

The rules that leave replies out (``norm-filter``, ``norm-filter-bound``,
``norm-direction-filter``, ``multi-krum``) say which ones, so the server can count them, and
the Byzantine replies among them, in ``results.csv``.

Flower's strategies aggregate in place (``FedMedian`` pops the arrays out of the replies):
count bytes before aggregating.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp.strategy import FedAvg, FedMedian, FedTrimmedAvg
from flwr.serverapp.strategy.multikrum import select_multikrum

from ..config import FederationConfig
from .records import as_numpy


def aggregator(fed: FederationConfig, num_replies: int, **keys: str) -> FedAvg:
    """The Flower strategy whose ``aggregate_train`` implements ``fed.aggregation`` for a
    round of ``num_replies`` good replies; ``keys``: FedAvg's record and weighting keys."""
    if fed.aggregation == "median":
        return FedMedian(**keys)
    if fed.aggregation == "trimmed-mean":
        return FedTrimmedAvg(beta=fed.trim_fraction, **keys)
    if fed.aggregation == "multi-krum":
        select = fed.krum_select or num_replies - fed.krum_malicious
        return MultiKrumMean(fed.krum_malicious, max(1, min(select, num_replies)), **keys)
    if fed.aggregation == "norm-bound":
        return NormBoundedMean(fed.norm_bound, **keys)
    if fed.aggregation == "norm-filter":
        return NormFilteredMean(fed.filter_factor, **keys)
    if fed.aggregation == "norm-filter-bound":
        return NormFilteredMean(fed.filter_factor, bounded=True, bound=fed.norm_bound, **keys)
    if fed.aggregation == "norm-direction-filter":
        return NormFilteredMean(fed.filter_factor, directed=True, **keys)
    return FedAvg(**keys)


def aggregate_updates(fed: FederationConfig, server_round: int, replies: list[Message],
                      **keys: str
                      ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
    """The aggregated update, the mean metrics of the replies it averages and the replies
    it left out (``norm-filter``, ``norm-filter-bound``, ``norm-direction-filter``,
    ``multi-krum``), by ``fed.aggregation``."""
    rule = aggregator(fed, len(replies), **keys)
    arrays, metrics = rule.aggregate_train(server_round, replies)
    return arrays, metrics, rule.left_out if isinstance(rule, SelectingMean) else []


def update_norm(record: ArrayRecord) -> float:
    """The L2 norm of every array of ``record`` taken together."""
    return float(np.sqrt(sum(np.square(as_numpy(a), dtype=np.float64).sum()
                             for a in record.values())))


def flat_update(record: ArrayRecord) -> np.ndarray:
    """Every array of ``record`` raveled into one float64 vector, in the record's order."""
    return np.concatenate([as_numpy(a).ravel().astype(np.float64) for a in record.values()])


def bound_norm(record: ArrayRecord, norm: float, bound: float) -> None:
    """Scale the update ``record`` (of L2 norm ``norm``) in place down to norm ``bound``,
    if it is above."""
    if norm > bound:
        scale = bound / norm
        for key in list(record.keys()):
            value = as_numpy(record[key])
            record[key] = Array(np.asarray(value * value.dtype.type(scale)))


class NormBoundedMean(FedAvg):
    """FedAvg over updates first scaled to L2 norm at most ``bound`` (``None``: the median
    norm of the round's updates)."""

    def __init__(self, bound: float | None, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.bound = bound

    def aggregate_train(self, server_round: int, replies: list[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        records = [m.content[self.arrayrecord_key] for m in replies]
        norms = [update_norm(r) for r in records]
        bound = self.bound if self.bound is not None else float(np.median(norms)) if norms \
            else 0.0
        for record, norm in zip(records, norms):
            bound_norm(record, norm, bound)
        return super().aggregate_train(server_round, replies)


class SelectingMean(FedAvg):
    """FedAvg over the replies ``select`` keeps; ``left_out`` holds the others of the last
    call."""

    left_out: list[Message] = []

    def select(self, replies: list[Message]) -> list[Message]:
        """The replies to average, in the order they are summed."""
        raise NotImplementedError

    def aggregate_train(self, server_round: int, replies: list[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        kept = self.select(replies)
        self.left_out = [m for m in replies if all(m is not k for k in kept)]
        return super().aggregate_train(server_round, kept)


class NormFilteredMean(SelectingMean):
    """FedAvg over the updates of L2 norm at most ``factor`` times the round's median; with
    ``directed``, only those of them with a non-negative inner product with the
    coordinate-wise median of all the round's updates; with ``bounded``, the kept updates
    are first scaled down to norm at most ``bound`` (``None``: the round's median norm)."""

    def __init__(self, factor: float, bounded: bool = False, bound: float | None = None,
                 directed: bool = False, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.factor, self.bounded, self.bound, self.directed = factor, bounded, bound, directed

    def select(self, replies: list[Message]) -> list[Message]:
        records = [m.content[self.arrayrecord_key] for m in replies]
        norms = [update_norm(r) for r in records]
        median = float(np.median(norms)) if norms else 0.0
        keep = [norm <= self.factor * median for norm in norms]
        if self.directed and records:
            updates = np.stack([flat_update(r) for r in records])
            agreement = updates @ np.median(updates, axis=0)
            keep = [k and a >= 0 for k, a in zip(keep, agreement)]
        kept = [(m, norm) for m, norm, k in zip(replies, norms, keep) if k]
        if self.bounded:
            bound = self.bound if self.bound is not None else median
            for m, norm in kept:
                bound_norm(m.content[self.arrayrecord_key], norm, bound)
        return [m for m, _ in kept]


class MultiKrumMean(SelectingMean):
    """FedAvg over the ``select`` replies Multi-Krum picks, assuming ``malicious``
    attackers (Flower's ``select_multikrum``)."""

    def __init__(self, malicious: int, select: int, **kwargs: str) -> None:
        super().__init__(**kwargs)
        self.malicious, self.count = malicious, select

    def select(self, replies: list[Message]) -> list[Message]:
        if not replies:
            return []
        by_content = {id(m.content): m for m in replies}
        return [by_content[id(c)] for c in select_multikrum([m.content for m in replies],
                                                             self.malicious, self.count)]
