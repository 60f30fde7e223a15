"""FedMeta: FedAvg's weighted mean of meta-updates, then a server meta-optimizer step.

Devices reply pseudo-gradients ``theta - theta_local`` with ``num-examples`` = episodes
used; FedAvg averages them weighted by episodes, and the server's optimizer (SGD or Adam,
its state kept across rounds) steps the meta-parameters along the mean, exactly as
``MetaTrainer.step`` does centrally. Reptile takes the same path: its direction is
``theta - phi`` and the server's SGD step is Reptile's outer step.

Devices are partitions: an initial ``query`` message asks every node which partition it
holds; partitions ``[0, num_train)`` train, the rest are held out and only evaluate, at
round 0, every ``eval_every`` rounds and after the last. Sampling, reply order and hence
every number are deterministic given the seed (but for a private run's secret noise).

Reliability (``docs/reliability.md``): bad replies are rejected and counted by kind; a round
with fewer than ``min_good_replies`` good ones is retried on a fresh sample or skipped;
``aggregation`` picks the (robust) rule; ``start`` can resume at a later round and calls
``end_of_round`` after each, where the server state is saved.

Memory (``fedmeta.app.fold``): training replies are checked and folded into the aggregate as
they arrive, in partition order, so the mean holds O(model); the robust rules keep the
round's replies.
"""

from __future__ import annotations

import logging
import math
from collections import Counter
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import (ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord,
                      RecordDict)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from ..config import FaultsConfig, FederationConfig
from ..errors import ConfigError
from ..fleet import FleetRun
from ..meta import MetaTrainer, MetaUpdate
from ..meta.evaluation import METRICS, summarize
from ..privacy import sampling
from ..results import Row
from .discovery import DiscoveryError, Found, ask_partitions, missing_message
from .faults import fault_of
from .fold import HELD_IN_MEMORY, Fold, KeepAll, Turns, WeightedMean, let_go
from .outcome import DeviceReports
from .records import (ARRAYS, ATTEMPT, CONFIG, METRICS as METRIC_RECORD, NUM_EXAMPLES, ROUND,
                      SCORES, array_bytes, as_numpy, to_params, to_record)
from .robust import aggregate_updates as robust_aggregate
from .rounds import run_rounds

logger = logging.getLogger("flwr.fedmeta")

SAMPLING_STREAM = 0xFED5A3  # rng stream of device sampling, apart from devices' streams
NOT_FINITE = "is not finite"  # the end of a non-finite reply's problem


class FedMeta(FedAvg):
    """Federated meta-training over a fleet of training and held-out devices.

    ``trainer`` holds the meta-parameters and the server optimizer; ``report`` receives
    one ``Row`` per round and source (``train``, ``eval``); ``faults`` (the injected ones)
    lets it count the Byzantine replies, which no check can tell from honest ones. With a
    ``fleet`` (``fedmeta.fleet.FleetRun``), rounds sample only available devices and skip
    those its policy drops.
    """

    fleet: FleetRun | None = None
    held_in_memory: int = HELD_IN_MEMORY  # replies waiting for their turn (fedmeta.app.fold)
    scheme: str = "fixed"  # how training devices are sampled (fedmeta.privacy.sampling)

    def __init__(self, fed: FederationConfig, trainer: MetaTrainer, seed: int,
                 report: Callable[[Row], None] = lambda row: None,
                 faults: FaultsConfig | None = None) -> None:
        super().__init__(fraction_train=fed.train_per_round / fed.num_train,
                         min_train_nodes=fed.train_per_round,
                         min_evaluate_nodes=fed.num_held_out,
                         min_available_nodes=fed.num_devices, weighted_by_key=NUM_EXAMPLES,
                         arrayrecord_key=ARRAYS, configrecord_key=CONFIG)
        self.fed, self.trainer, self.seed, self.report = fed, trainer, seed, report
        self.partitions: dict[int, int] = {}  # node id -> partition id
        self._num_rounds = fed.rounds
        self._sent: dict[tuple[str, int], int] = {}  # (source, round) -> bytes sent
        self.faults = faults or FaultsConfig()
        self._asked: dict[tuple[str, int], list[int]] = {}  # (source, round) -> nodes asked
        self.attempt: dict[int, int] = {}  # round -> its latest training attempt
        self.status: dict[int, str] = {}  # round -> status of its latest training attempt
        self.eligible: dict[int, list[int]] = {}  # round -> partitions its latest draw was among
        self.device_reports = DeviceReports()  # rejected and missing replies, for the end

    # -- which node is which device -------------------------------------------------------
    def discover(self, grid: Grid, timeout: float = math.inf) -> None:
        """Learn which node holds which partition (``fedmeta.app.discovery``): nodes that
        have not answered are asked again, each ask waiting longer (at most ``timeout``),
        until all ``num_devices`` have answered or ``federation.discovery_timeout`` passes;
        then ``DiscoveryError`` names what did not answer. Nodes already in ``partitions``
        are not asked again."""
        n, limit = self.fed.num_devices, self.fed.discovery_timeout

        def want(found: Found) -> int:  # a federation of another size fails at once
            for node, (partition, num_partitions) in found.partitions.items():
                self._register(node, partition, num_partitions)
            return n

        known = Found({node: (p, n) for node, p in self.partitions.items()})
        found = ask_partitions(grid, want, limit, timeout, found=known)
        want(found)
        if len(self.partitions) < n:
            raise DiscoveryError(missing_message(grid, found, n, limit))
        if sorted(self.partitions.values()) != list(range(n)):
            raise ConfigError("federation.num_devices", n, "SuperNodes holding partitions "
                              f"0..{n - 1}, once each; got {sorted(self.partitions.values())}")

    def _register(self, node: int, partition: int, num_partitions: int) -> None:
        """Record that ``node`` holds ``partition`` of a federation of ``num_partitions``."""
        if num_partitions != self.fed.num_devices:
            raise ConfigError(
                "federation.num_devices", self.fed.num_devices,
                f"the federation's size: it has {num_partitions} SuperNodes (under flwr "
                f"run, leave federation.num_devices at \"auto\" to size the fleet to them; "
                f"for a local simulation of {self.fed.num_devices}: flwr run . "
                f"--federation-config \"num-supernodes={self.fed.num_devices}\")")
        self.partitions[node] = partition

    def _nodes(self, held_out: bool) -> list[int]:
        """Training (or held-out) nodes, ordered by partition."""
        pairs = sorted((p, node) for node, p in self.partitions.items()
                       if (p >= self.fed.num_train) == held_out)
        return [node for _, node in pairs]

    # -- training -------------------------------------------------------------------------
    def sample(self, server_round: int, attempt: int = 0) -> list[int]:
        """The round's training nodes: a seeded draw over nodes sorted by partition (a fresh
        one for each retry of the round), by ``self.scheme`` (``fedmeta.privacy.sampling``:
        ``fixed``, or ``poisson`` for private runs). ``eligible[round]`` keeps the
        partitions the draw was among (the available ones, with a fleet)."""
        nodes = self._nodes(held_out=False)
        rate = self.fed.train_per_round / self.fed.num_train
        if self.fleet is not None:
            kept = set(self.fleet.select(server_round, [self.partitions[n] for n in nodes],
                                         self.fed.train_per_round, attempt, self.scheme, rate))
            self.eligible[server_round] = self.fleet.available_devices[server_round]
            return [n for n in nodes if self.partitions[n] in kept]
        self.eligible[server_round] = [self.partitions[n] for n in nodes]
        rng = np.random.default_rng([self.seed, server_round, SAMPLING_STREAM]
                                    + ([attempt] if attempt else []))
        picked = sampling.draw(rng, len(nodes), self.scheme, rate, self.fed.train_per_round)
        return [n for n, keep in zip(nodes, picked) if keep]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        attempt = int(config.get(ATTEMPT, 0))
        nodes = self.sample(server_round, attempt)
        config[ROUND] = server_round
        logger.info("round %d: training devices %s", server_round,
                    [self.partitions[n] for n in nodes])
        self._sent["train", server_round] = arrays.count_bytes() * len(nodes)
        self._asked["train", server_round] = nodes
        self.attempt[server_round] = attempt
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Check each reply as it comes (``replies`` may be ``fold.replies_as_they_come``),
        fold the good ones in partition order into ``self.fold(server_round)`` and let them
        go; then step the server optimizer, or retry or skip a round of too few."""
        attempt = self.attempt.get(server_round, 0)
        byzantine = lambda node: fault_of(  # noqa: E731
            self.faults, self.seed, server_round, self.partitions[node], attempt,
            self.fed.num_train) == "byzantine"
        fold = self.fold(server_round)
        turns = Turns((self.partitions[n] for n in self._asked.get(("train", server_round), [])
                       if n in self.partitions), self.arrayrecord_key,
                      math.inf if isinstance(fold, KeepAll) else self.held_in_memory)
        heard, faults, bytes_up, episodes, good, received = set(), Counter(), 0, 0, 0, 0
        for reply in replies:
            node = reply.metadata.src_node_id
            heard.add(node)
            received += 1
            bytes_up += array_bytes(reply.content) if reply.has_content() else 0
            kind = self._rejected(server_round, reply, self._train_problem)
            if kind is None:
                good += 1
                episodes += int(reply.content[METRIC_RECORD][NUM_EXAMPLES])
                faults["byzantine"] += byzantine(node)
            else:
                faults[kind] += 1
            if node in self.partitions:
                for ready in turns.arrived_from(self.partitions[node],
                                                reply if kind is None else None):
                    self._fold_in(fold, ready)
            del reply
        for ready in turns.rest():
            self._fold_in(fold, ready)
        faults["timed_out"] = self._missing("train", server_round, heard)
        arrays, metrics = None, None
        if self.enough(good):
            arrays, metrics, left_out = fold.result()
            faults["left_out"] = len(left_out)
            faults["byzantine_left_out"] = sum(byzantine(m.metadata.src_node_id)
                                               for m in left_out)
        if arrays is not None:
            self.trainer.step(MetaUpdate(to_params(arrays), {}))
            status = "ok"
        else:
            retry = self.fed.short_round == "retry" and attempt < self.fed.max_retries
            status = "retried" if retry else "skipped"
            logger.warning("round %d: %d good replies of %d needed (federation."
                           "min_good_replies): %s", server_round, good,
                           self.fed.min_good_replies, status)
        self.status[server_round] = status
        means = {k: float(v) for k, v in (metrics or {}).items()}
        self.report(Row(server_round, "train", good, received - good, episodes, means,
                        self._sent.pop(("train", server_round), 0), bytes_up, dict(faults),
                        attempt, status))
        return to_record(self.trainer.params), metrics

    def _fold_in(self, fold: Fold, reply: Message) -> None:
        fold.add(reply)
        if not fold.keeps:
            let_go(reply, self.arrayrecord_key)

    def enough(self, good: int) -> bool:
        """Whether a training attempt with ``good`` good replies is aggregated (or else
        retried or skipped): ``federation.min_good_replies`` of them."""
        return good >= self.fed.min_good_replies

    def _missing(self, source: str, server_round: int, heard: set[int]) -> int:
        """How many of the devices asked did not reply before the round's timeout
        (``heard``: the nodes that replied)."""
        asked = self._asked.pop((source, server_round), [])
        missing = set(asked) - heard
        devices = sorted(self.partitions.get(n, -1) for n in missing)
        self.device_reports.add("timed_out", f"round {server_round} ({source})",
                                f"devices {devices} did not reply within "
                                f"federation.round_timeout={self.fed.round_timeout:g} s",
                                len(missing))
        return len(missing)

    def fold(self, server_round: int) -> Fold:
        """How the round's good replies are aggregated, one at a time in partition order
        (``fedmeta.app.fold``): the episode-weighted mean in O(model) for
        ``federation.aggregation = "mean"``; the robust rules keep every reply;
        ``privacy_wrap.PrivateFedMeta`` clips and noises here."""
        if self.fed.aggregation == "mean":
            return WeightedMean(self.arrayrecord_key, self.weighted_by_key)
        return KeepAll(lambda replies: robust_aggregate(
            self.fed, server_round, replies, weighted_by_key=self.weighted_by_key,
            arrayrecord_key=self.arrayrecord_key, configrecord_key=self.configrecord_key))

    def aggregate_updates(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        """The aggregate of good ``replies`` (in their order) by ``self.fold``: the mean
        pseudo-gradient (weighted by episodes where the rule weighs), its metrics and the
        replies the rule left out."""
        fold = self.fold(server_round)
        for reply in replies:
            fold.add(reply)
        return fold.result()

    def _train_problem(self, content: RecordDict) -> str | None:
        if len(content.array_records) != 1 or ARRAYS not in content.array_records:
            return f"expected one ArrayRecord {ARRAYS!r}"
        problem = _metrics_problem(content)
        if problem:
            return problem
        arrays, params = content[ARRAYS], self.trainer.params
        if set(arrays.keys()) != set(params):
            return f"arrays {sorted(arrays.keys())} are not the meta-parameters {sorted(params)}"
        for key, array in arrays.items():
            expected = str(params[key].dtype).removeprefix("torch.")
            if tuple(array.shape) != tuple(params[key].shape):
                return f"array {key!r} has shape {tuple(array.shape)}, expected " \
                       f"{tuple(params[key].shape)}"
            if array.dtype != expected:
                return f"array {key!r} has dtype {array.dtype}, expected {expected}"
        for key, array in arrays.items():
            if not np.isfinite(as_numpy(array)).all():
                return f"array {key!r} {NOT_FINITE}"
        return None

    # -- evaluation on held-out devices ----------------------------------------------------
    def evaluates(self, server_round: int, num_rounds: int) -> bool:
        """Held-out devices score round 0, every ``eval_every`` rounds and the last."""
        return server_round % self.fed.eval_every == 0 or server_round == num_rounds

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        if not self.evaluates(server_round, self._num_rounds):
            return []
        nodes = self._nodes(held_out=True)
        config[ROUND] = server_round
        self._sent["eval", server_round] = arrays.count_bytes() * len(nodes)
        self._asked["eval", server_round] = nodes
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if not self.evaluates(server_round, self._num_rounds):
            return None
        valid, faults = self._usable(server_round, replies, _eval_problem)
        faults["timed_out"] = self._missing("eval", server_round,
                                            {m.metadata.src_node_id for m in replies})
        scores = {m: np.concatenate([as_numpy(r.content[SCORES][m]) for r in valid])
                  for m in METRICS} if valid else {}
        summary = summarize(scores) if valid else {}
        self.report(Row(server_round, "eval", len(valid), len(replies) - len(valid),
                        int(summary.get("episodes", 0)), summary,
                        self._sent.pop(("eval", server_round), 0),
                        sum(array_bytes(m.content) for m in replies if m.has_content()),
                        dict(faults)))
        return MetricRecord({k: float(v) for k, v in summary.items()}) if valid else None

    # -- shared ---------------------------------------------------------------------------
    def _usable(self, server_round: int, replies: list[Message],
                problem_of: Callable[[RecordDict], str | None]
                ) -> tuple[list[Message], Counter]:
        """Replies without error or malformed content (``_rejected``), ordered by partition,
        and the count of the others by kind."""
        usable, faults = [], Counter()
        for reply in replies:
            kind = self._rejected(server_round, reply, problem_of)
            if kind is None:
                usable.append(reply)
            else:
                faults[kind] += 1
        return sorted(usable, key=lambda r: self.partitions[r.metadata.src_node_id]), faults

    def _rejected(self, server_round: int, reply: Message,
                  problem_of: Callable[[RecordDict], str | None]) -> str | None:
        """``None`` for a usable reply, else its kind (``crashed``, ``non_finite``,
        ``malformed``), dropped with a warning naming the device and the problem."""
        node = reply.metadata.src_node_id
        kind = "malformed"
        if node not in self.partitions:
            problem = "it is not a known device"
        elif reply.has_error():
            problem, kind = f"error {reply.error.code}: {reply.error.reason}", "crashed"
        else:
            problem = problem_of(reply.content)
            if problem and problem.endswith(NOT_FINITE):
                kind = "non_finite"
        if not problem:
            return None
        self.device_reports.add(kind, f"round {server_round}, device "
                                      f"{self.partitions.get(node, '?')}", problem)
        logger.warning("round %d: dropped the reply of device %s (node %d): %s",
                       server_round, self.partitions.get(node, "?"), node, problem)
        return kind

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
              first_round: int = 1, end_of_round: Callable[[int], None] = lambda r: None
              ) -> Result:
        """Learn which node is which device, score the initial meta-model on the held-out
        devices (round 0, unless resuming at a later ``first_round``), then run the rounds
        (``fedmeta.app.rounds``); ``evaluate_fn`` (central evaluation) is not supported."""
        if evaluate_fn is not None:
            raise NotImplementedError("FedMeta evaluates on held-out devices only")
        self._num_rounds = num_rounds
        if first_round > num_rounds:
            return Result(arrays=initial_arrays)
        self.discover(grid)
        train_config = ConfigRecord() if train_config is None else train_config
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        if first_round == 1:
            self.aggregate_evaluate(0, grid.send_and_receive(
                self.configure_evaluate(0, initial_arrays, evaluate_config, grid),
                timeout=timeout))
            end_of_round(0)
        return run_rounds(self, grid, initial_arrays, first_round, num_rounds, timeout,
                          train_config, evaluate_config, end_of_round)


def _metrics_problem(content: RecordDict) -> str | None:
    """What is wrong with a reply's MetricRecord, or ``None``."""
    if len(content.metric_records) != 1 or METRIC_RECORD not in content.metric_records:
        return f"expected one MetricRecord {METRIC_RECORD!r}"
    metrics = content[METRIC_RECORD]
    expected = {NUM_EXAMPLES, *METRICS}
    if set(metrics.keys()) != expected:
        return f"metrics {sorted(metrics.keys())} are not {sorted(expected)}"
    episodes = metrics[NUM_EXAMPLES]
    if isinstance(episodes, (list, bool)) or not (math.isfinite(episodes) and episodes > 0):
        return f"{NUM_EXAMPLES}={episodes!r} is not a positive number"
    return None


def _eval_problem(content: RecordDict) -> str | None:
    problem = _metrics_problem(content)
    if problem:
        return problem
    if SCORES not in content.array_records or set(content[SCORES].keys()) != set(METRICS):
        return f"expected an ArrayRecord {SCORES!r} with {list(METRICS)}"
    count = int(content[METRIC_RECORD][NUM_EXAMPLES])
    for key in METRICS:
        shape = tuple(content[SCORES][key].shape)
        if shape != (count,):
            return f"scores {key!r} have shape {shape}, expected ({count},)"
    return None
