"""A round's replies folded into the aggregate as they arrive: the server holds O(model).

Flower's ``Grid.send_and_receive`` returns a round's replies all at once, so a server that
uses it holds every reply of the round (O(devices per round x model)) before it averages.
``replies_as_they_come`` does what ``send_and_receive`` does (push the messages, pull every
``pull_interval`` until all replied or the timeout passed) but yields each reply as soon as it
is pulled; the strategy folds it into a running aggregate and lets it go. Under fedmeta's
message pump (``fedmeta.app.dispatch``) it also pulls as soon as every reply it waits for is
stored, so a round ends when its last reply arrives, not up to ``pull_interval`` later.

Floating-point sums depend on their order, and replies arrive in whatever order the devices
finish, so folds take replies in partition order: ``Turns`` releases a reply once every
device of a lower partition that was asked has replied (or was dropped). Replies that come
before their turn wait, at most ``held_in_memory`` of them in memory and the rest in a
temporary folder (their arrays spilled to ``.npz`` files and read back at their turn), so the
memory bound holds even when the first device is the slowest. Same config and seed, same
arrival or not: same numbers.

The folds (``Fold``): ``WeightedMean`` (FedAvg's episode-weighted mean, the default
``federation.aggregation = "mean"``, and the DP means built on it) keeps one float64 sum per
array, the total weight and each reply's few metrics as plain numbers (``MetricMean``);
``KeepAll`` is for the rules that need every update at once (median, trimmed mean,
Multi-Krum, the norm bound and filters: a coordinate-wise order statistic, pairwise distances
or the round's median norm): it keeps the round's replies, O(devices per round x model), as
those rules must.
"""

from __future__ import annotations

import heapq
import itertools
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Protocol

import numpy as np
from flwr.app import Array, ArrayRecord, Message, MetricRecord
from flwr.serverapp import Grid

from .dispatch import arrivals_of
from .records import as_numpy

PULL_INTERVAL_S = 0.1  # Flower's InMemoryGrid default, for grids that do not say theirs
# (Flower's gRPC grid under ``flwr run`` sleeps 3 s between pulls; pulling every 0.1 s ends a
# round at most 0.1 s after its last reply)
HELD_IN_MEMORY = 16  # replies waiting for their turn kept in memory; the rest go to disk


def replies_as_they_come(grid: Grid, messages: Iterable[Message],
                         timeout: float | None) -> Iterator[Message]:
    """``grid.send_and_receive(messages, timeout=timeout)``, one reply at a time as pulled."""
    ids = set(grid.push_messages(list(messages)))
    end = time.time() + (timeout if timeout is not None else 0.0)
    interval = getattr(grid, "pull_interval", PULL_INTERVAL_S)
    arrivals = arrivals_of(grid)  # under fedmeta's pump: pull once the last reply is stored
    while ids and (timeout is None or time.time() < end):
        stored = arrivals.replies if arrivals is not None else 0
        for reply in list(grid.pull_messages(ids)):
            ids.discard(reply.metadata.reply_to_message_id)
            yield reply
        if ids and arrivals is None:
            time.sleep(interval)
        elif ids:
            arrivals.wait_replies(stored + len(ids), interval)


class Fold(Protocol):
    """An aggregate built one reply at a time."""

    keeps: bool  # whether it keeps the replies added (if not, the caller lets them go)

    def add(self, reply: Message) -> None:
        """Fold in a (valid) reply; it is not needed afterwards."""

    def result(self) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        """The aggregated update, the mean metrics and the replies left out."""


def let_go(reply: Message, arrays_key: str) -> None:
    """Free now the arrays of a reply folded into a fold that does not keep it. A message's
    records sit in reference cycles (a ``RecordDict`` and its typed views refer to each
    other), freed only when the cyclic garbage collector runs, and it runs by the count of
    allocations, not bytes: replies decoded with few allocations (``records.as_numpy``)
    would pile up between its runs, and the server's memory grow with the round. Emptying
    the record frees them at once."""
    reply.content[arrays_key].clear()


class MetricMean:
    """Flower's ``aggregate_metricrecords`` (the weighted mean of each metric, weights
    normalised first, summed in order) over replies' metrics kept as plain numbers: a few
    hundred bytes a reply, the same result to the bit."""

    def __init__(self, weight_key: str) -> None:
        self.weight_key = weight_key
        self.kept: list[tuple[float, dict[str, float | list[float]]]] = []

    def add(self, metrics: MetricRecord) -> float:
        """Keep one reply's metrics; return its weight."""
        weight = metrics[self.weight_key]
        self.kept.append((weight, {k: v for k, v in metrics.items() if k != self.weight_key}))
        return float(weight)

    def __len__(self) -> int:
        return len(self.kept)

    def result(self) -> MetricRecord:
        total = sum(w for w, _ in self.kept)
        out: dict[str, float | list[float]] = {}
        for w, values in self.kept:
            factor = w / total
            for key, value in values.items():
                if isinstance(value, list):
                    out[key] = [v * factor for v in value] if key not in out else \
                        [c + v * factor for c, v in zip(out[key], value, strict=True)]
                else:
                    out[key] = value * factor if key not in out else out[key] + value * factor
        return MetricRecord(out)


class WeightedMean:
    """FedAvg's weighted mean: ``sum_i w_i x_i / sum_i w_i``, summed in float64 in the order
    the replies are added, cast back to each array's dtype; ``w_i`` is the reply's
    ``weight_key`` metric (episodes). Metrics: ``MetricMean``."""

    keeps = False

    def __init__(self, arrays_key: str, weight_key: str) -> None:
        self.arrays_key = arrays_key
        self.total: dict[str, np.ndarray] = {}
        self.dtypes: dict[str, np.dtype] = {}
        self.weight = 0.0
        self.metrics = MetricMean(weight_key)

    def add(self, reply: Message) -> None:
        weight = self.metrics.add(next(iter(reply.content.metric_records.values())))
        for key, array in reply.content[self.arrays_key].items():
            value = as_numpy(array)
            if key not in self.total:
                self.total[key] = np.zeros(value.shape, np.float64)
                self.dtypes[key] = value.dtype
            scaled = value.astype(np.float64)
            scaled *= weight
            self.total[key] += scaled
        self.weight += weight

    def result(self) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        if not len(self.metrics):
            return None, None, []
        arrays = ArrayRecord({k: Array(np.asarray((v / self.weight).astype(self.dtypes[k])))
                              for k, v in self.total.items()})
        return arrays, self.metrics.result(), []


class KeepAll:
    """Every reply kept, in the order added, for ``rule`` to aggregate at once."""

    keeps = True

    def __init__(self, rule: Callable[[list[Message]], tuple[ArrayRecord | None,
                                                             MetricRecord | None,
                                                             list[Message]]]) -> None:
        self.rule = rule
        self.replies: list[Message] = []

    def add(self, reply: Message) -> None:
        self.replies.append(reply)

    def result(self) -> tuple[ArrayRecord | None, MetricRecord | None, list[Message]]:
        return self.rule(self.replies)


class Turns:
    """Replies released in order of their key (the device's partition) as soon as every
    ``expected`` key below theirs has arrived; keys not expected are released when the turn
    passes them. Waiting replies beyond ``held_in_memory`` have their ``arrays_key`` record
    spilled to a temporary folder until their turn."""

    def __init__(self, expected: Iterable[int], arrays_key: str,
                 held_in_memory: float = HELD_IN_MEMORY) -> None:
        self.expected = sorted(set(expected))
        self.arrived: set[int] = set()
        self.next = 0  # index in expected of the first key not arrived
        self.waiting: list[tuple[int, int, Message]] = []  # heap of (key, arrival, reply)
        self.count = itertools.count()
        self.arrays_key, self.held_in_memory = arrays_key, held_in_memory
        self.spilled: dict[int, tuple[Path, list[str]]] = {}  # id(reply) -> file, keys
        self._folder: tempfile.TemporaryDirectory[str] | None = None

    def arrived_from(self, key: int, reply: Message | None) -> Iterator[Message]:
        """``reply`` (``None``: dropped) of device ``key`` came; the replies now in turn, each
        read back from disk only when the one before it was taken (consume them all)."""
        self.arrived.add(key)
        if reply is not None:
            heapq.heappush(self.waiting, (key, next(self.count), reply))
        while self.next < len(self.expected) and self.expected[self.next] in self.arrived:
            self.next += 1
        self._spill_beyond_limit()
        turn = self.expected[self.next] if self.next < len(self.expected) else None
        return self._release(turn)

    def rest(self) -> Iterator[Message]:
        """The replies still waiting (the stream ended), in key order."""
        yield from self._release(None)
        if self._folder is not None:
            self._folder.cleanup()
            self._folder = None

    def _release(self, turn: int | None) -> Iterator[Message]:
        while self.waiting and (turn is None or self.waiting[0][0] < turn):
            yield self._back(heapq.heappop(self.waiting)[2])

    @property
    def in_memory(self) -> int:
        """Waiting replies whose arrays are in memory."""
        return len(self.waiting) - len(self.spilled)

    def _spill_beyond_limit(self) -> None:
        if self.in_memory <= self.held_in_memory:
            return
        if self._folder is None:
            self._folder = tempfile.TemporaryDirectory(prefix="fedmeta-replies-")
        # the latest in turn order go first: they wait longest
        for _, _, reply in sorted(self.waiting, reverse=True, key=lambda e: e[:2]):
            if self.in_memory <= self.held_in_memory:
                break
            if id(reply) in self.spilled:
                continue
            record = reply.content[self.arrays_key]
            path = Path(self._folder.name) / f"{len(self.spilled)}-{id(reply)}.npz"
            keys = list(record.keys())
            np.savez(path, *(as_numpy(record[k]) for k in keys))
            record.clear()  # (not a new record: see ``let_go``)
            self.spilled[id(reply)] = path, keys

    def _back(self, reply: Message) -> Message:
        """``reply`` with its arrays in memory again."""
        if id(reply) in self.spilled:
            path, keys = self.spilled.pop(id(reply))
            with np.load(path) as saved:
                reply.content[self.arrays_key] = ArrayRecord(
                    {k: Array(saved[f"arr_{i}"]) for i, k in enumerate(keys)})
            path.unlink()
        return reply
