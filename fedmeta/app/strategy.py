"""FedMeta: FedAvg's weighted mean of meta-updates, then a server meta-optimizer step.

Devices reply pseudo-gradients ``theta - theta_local`` with ``num-examples`` = episodes
used; FedAvg averages them weighted by episodes, and the server's optimizer (SGD or Adam,
its state kept across rounds) steps the meta-parameters along the mean, exactly as
``MetaTrainer.step`` does centrally. Reptile takes the same path: its direction is
``theta - phi`` and the server's SGD step is Reptile's outer step.

Devices are partitions: an initial ``query`` message asks every node which partition it
holds; partitions ``[0, num_train)`` train, the rest are held out and only evaluate, at
round 0, every ``eval_every`` rounds and after the last. Sampling, reply order and hence
every number are deterministic given the seed.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable

import numpy as np
from flwr.app import (ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord,
                      RecordDict)
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAvg, Result

from ..config import FederationConfig
from ..errors import ConfigError
from ..meta import MetaTrainer, MetaUpdate
from ..meta.evaluation import METRICS, summarize
from ..results import Row
from .client_app import PARTITION
from .records import (ARRAYS, CONFIG, METRICS as METRIC_RECORD, NUM_EXAMPLES, ROUND, SCORES,
                      array_bytes, to_params, to_record)

logger = logging.getLogger("flwr.fedmeta")

SAMPLING_STREAM = 0xFED5A3  # rng stream of device sampling, apart from devices' streams
NODE_WAIT_S = 60.0  # how long to wait for every device's SuperNode to connect


class FedMeta(FedAvg):
    """Federated meta-training over a fleet of training and held-out devices.

    ``trainer`` holds the meta-parameters and the server optimizer; ``report`` receives
    one ``Row`` per round and source (``train``, ``eval``).
    """

    def __init__(self, fed: FederationConfig, trainer: MetaTrainer, seed: int,
                 report: Callable[[Row], None] = lambda row: None) -> None:
        super().__init__(fraction_train=fed.train_per_round / fed.num_train,
                         min_train_nodes=fed.train_per_round,
                         min_evaluate_nodes=fed.num_held_out,
                         min_available_nodes=fed.num_devices, weighted_by_key=NUM_EXAMPLES,
                         arrayrecord_key=ARRAYS, configrecord_key=CONFIG)
        self.fed, self.trainer, self.seed, self.report = fed, trainer, seed, report
        self.partitions: dict[int, int] = {}  # node id -> partition id
        self._num_rounds = fed.rounds
        self._sent: dict[tuple[str, int], int] = {}  # (source, round) -> bytes sent

    # -- which node is which device -------------------------------------------------------
    def discover(self, grid: Grid, timeout: float) -> None:
        """Ask every node for its partition until all ``num_devices`` have answered."""
        n, deadline, asked = self.fed.num_devices, time.monotonic() + NODE_WAIT_S, set()
        while len(self.partitions) < n:
            new = [i for i in sorted(grid.get_node_ids()) if i not in asked]
            if new:
                asked.update(new)
                ask = [Message(RecordDict(), dst_node_id=i, message_type=MessageType.QUERY)
                       for i in new]
                for reply in grid.send_and_receive(ask, timeout=timeout):
                    self._register(reply)
            elif time.monotonic() > deadline:
                raise ConfigError("federation.num_devices", n,
                                  f"the number of SuperNodes; {len(self.partitions)} "
                                  f"answered within {NODE_WAIT_S:.0f} s")
            else:
                time.sleep(0.2)
        if sorted(self.partitions.values()) != list(range(n)):
            raise ConfigError("federation.num_devices", n, "SuperNodes holding partitions "
                              f"0..{n - 1}, once each; got {sorted(self.partitions.values())}")

    def _register(self, reply: Message) -> None:
        node = reply.metadata.src_node_id
        if reply.has_error() or PARTITION not in reply.content.config_records:
            logger.warning("node %d did not say which partition it holds; ignored", node)
            return
        info = reply.content[PARTITION]
        if int(info["num-partitions"]) != self.fed.num_devices:
            raise ConfigError(
                "federation.num_devices", self.fed.num_devices,
                f"the federation's size: it has {info['num-partitions']} SuperNodes (for a "
                f"local simulation: flwr run . --federation-config "
                f"\"num-supernodes={self.fed.num_devices}\", or set federation.num_devices)")
        self.partitions[node] = int(info["partition-id"])

    def _nodes(self, held_out: bool) -> list[int]:
        """Training (or held-out) nodes, ordered by partition."""
        pairs = sorted((p, node) for node, p in self.partitions.items()
                       if (p >= self.fed.num_train) == held_out)
        return [node for _, node in pairs]

    # -- training -------------------------------------------------------------------------
    def sample(self, server_round: int) -> list[int]:
        """The round's training nodes: a seeded draw over nodes sorted by partition."""
        nodes = self._nodes(held_out=False)
        rng = np.random.default_rng([self.seed, server_round, SAMPLING_STREAM])
        picked = np.sort(rng.choice(len(nodes), size=self.fed.train_per_round, replace=False))
        return [nodes[i] for i in picked]

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        nodes = self.sample(server_round)
        config[ROUND] = server_round
        logger.info("round %d: training devices %s", server_round,
                    [self.partitions[n] for n in nodes])
        self._sent["train", server_round] = arrays.count_bytes() * len(nodes)
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.TRAIN)

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        valid = self._usable(server_round, replies, self._train_problem)
        arrays, metrics = self.aggregate_updates(server_round, valid) if valid else (None, None)
        if arrays is not None:
            self.trainer.step(MetaUpdate(to_params(arrays), {}))
        means = {k: float(v) for k, v in (metrics or {}).items()}
        self.report(Row(server_round, "train", len(valid), len(replies) - len(valid),
                        sum(int(m.content[METRIC_RECORD][NUM_EXAMPLES]) for m in valid),
                        means, self._sent.pop(("train", server_round), 0),
                        sum(array_bytes(m.content) for m in replies if m.has_content())))
        return to_record(self.trainer.params), metrics

    def aggregate_updates(self, server_round: int, replies: list[Message]
                          ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The mean pseudo-gradient of usable replies (FedAvg's, weighted by episodes);
        ``privacy_wrap.PrivateFedMeta`` clips and noises here."""
        return super().aggregate_train(server_round, replies)

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
            value = array.numpy()
            if tuple(value.shape) != tuple(params[key].shape):
                return f"array {key!r} has shape {value.shape}, expected " \
                       f"{tuple(params[key].shape)}"
            if not np.isfinite(value).all():
                return f"array {key!r} is not finite"
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
        record = RecordDict({self.arrayrecord_key: arrays, self.configrecord_key: config})
        return self._construct_messages(record, nodes, MessageType.EVALUATE)

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        replies = list(replies)
        if not self.evaluates(server_round, self._num_rounds):
            return None
        valid = self._usable(server_round, replies, _eval_problem)
        scores = {m: np.concatenate([r.content[SCORES][m].numpy() for r in valid])
                  for m in METRICS} if valid else {}
        summary = summarize(scores) if valid else {}
        self.report(Row(server_round, "eval", len(valid), len(replies) - len(valid),
                        int(summary.get("episodes", 0)), summary,
                        self._sent.pop(("eval", server_round), 0),
                        sum(array_bytes(m.content) for m in replies if m.has_content())))
        return MetricRecord({k: float(v) for k, v in summary.items()}) if valid else None

    # -- shared ---------------------------------------------------------------------------
    def _usable(self, server_round: int, replies: list[Message],
                problem_of: Callable[[RecordDict], str | None]) -> list[Message]:
        """Replies without error or malformed content, ordered by partition; the others
        are dropped with a warning naming the device and the problem."""
        usable = []
        for reply in replies:
            node = reply.metadata.src_node_id
            if node not in self.partitions:
                problem = "it is not a known device"
            elif reply.has_error():
                problem = f"error {reply.error.code}: {reply.error.reason}"
            else:
                problem = problem_of(reply.content)
            if problem:
                logger.warning("round %d: dropped the reply of device %s (node %d): %s",
                               server_round, self.partitions.get(node, "?"), node, problem)
            else:
                usable.append(reply)
        return sorted(usable, key=lambda r: self.partitions[r.metadata.src_node_id])

    def start(self, grid: Grid, initial_arrays: ArrayRecord, num_rounds: int = 3,
              timeout: float = 3600, train_config: ConfigRecord | None = None,
              evaluate_config: ConfigRecord | None = None,
              evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None
              ) -> Result:
        """Learn which node is which device, score the initial meta-model on the held-out
        devices (round 0), then run FedAvg's loop of rounds."""
        self._num_rounds = num_rounds
        self.discover(grid, timeout)
        evaluate_config = ConfigRecord() if evaluate_config is None else evaluate_config
        self.aggregate_evaluate(0, grid.send_and_receive(
            self.configure_evaluate(0, initial_arrays, evaluate_config, grid), timeout=timeout))
        return super().start(grid, initial_arrays, num_rounds, timeout, train_config,
                             evaluate_config, evaluate_fn)


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
