"""Measured device traces in FedScale's formats (``fleet.trace_capacity``,
``fleet.trace_behaviour``; a behaviour path ending in ``.csv`` is FLGo's, ``flgo.py``).

FedScale (Lai et al. 2022) ships two pickled dicts, keyed by client id
(``benchmark/dataset/data/device_info/README.md`` of its repository):

- ``client_device_capacity``: ``{client: {"computation": ms, "communication": kbit/s}}``,
  the latency of one sample's forward pass on the device (AI Benchmark) and its network
  bandwidth (MobiPerf). FedScale charges ``3 x computation`` ms per training sample (forward
  and backward) and ``(upload + download) / communication`` seconds.
- ``client_behave_trace``: ``{client: {"active": [s, ...], "inactive": [s, ...],
  "finish_time": s, ...}}``: the device is on from ``active[i]`` to ``inactive[i]``
  seconds, the pattern repeating every ``finish_time`` seconds (FedScale's
  ``ClientMetadata.is_active``: on at ``t`` iff ``active[i] <= t mod finish_time <=
  inactive[i]`` for some ``i``).

Device ``d`` of a fleet takes the trace's ``d mod n``-th client in the file's order, as
FedScale maps its clients onto a trace by ``client_id mod len(trace)``. In fedmeta a
device's compute rate becomes ``F / (computation / 1000)`` FLOP/s with ``F`` the run's
model's forward FLOPs per example, so a forward pass of one example takes ``computation``
ms on it and a training example about three times that (``fedmeta.fleet.cost``: backward
~ 2 forward), which is FedScale's rule; both link rates are ``communication / 1000``
Mbit/s. Availability is read off the simulated clock at the start of each round.

Trace files are read with an unpickler that builds only plain containers, numbers and
strings (and NumPy scalars), never arbitrary objects: a pickle can otherwise run code.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from .. import safe_pickle
from ..errors import ConfigError

def _load(path: str, field: str) -> dict:
    try:
        with Path(path).open("rb") as handle:
            data = safe_pickle.load(handle, safe_pickle.NUMPY_SCALARS)
    except OSError as exc:
        raise ConfigError(field, path, f"a readable trace file ({exc.strerror or exc})") \
            from None
    except Exception as exc:  # noqa: BLE001 (any unpickling failure is a bad file)
        raise ConfigError(field, path, f"a FedScale trace (a pickled dict): {exc}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(field, path, "a FedScale trace: a non-empty dict keyed by client id")
    return data


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool) \
        and math.isfinite(float(value)) and float(value) > 0


@dataclass(frozen=True)
class Capacity:
    """Per trace client, in file order: forward latency (ms per sample), bandwidth (kbit/s)."""

    computation_ms: np.ndarray
    communication_kbps: np.ndarray

    def __len__(self) -> int:
        return len(self.computation_ms)


@lru_cache(maxsize=4)
def load_capacity(path: str, field: str = "fleet.trace_capacity") -> Capacity:
    """A ``client_device_capacity`` pickle, or ``ConfigError`` naming the first bad client."""
    compute, bandwidth = [], []
    for client, entry in _load(path, field).items():
        where = f"{path}, client {client!r}"
        if not isinstance(entry, dict):
            raise ConfigError(field, where, "{'computation': ms, 'communication': kbit/s}")
        for key in ("computation", "communication"):
            if not _positive(entry.get(key)):
                raise ConfigError(field, where, f"{key!r}: a finite number > 0, got "
                                                f"{entry.get(key)!r}")
        compute.append(float(entry["computation"]))
        bandwidth.append(float(entry["communication"]))
    return Capacity(np.array(compute), np.array(bandwidth))


@dataclass(frozen=True)
class Behaviour:
    """Per trace client, in file order: its on windows ``[start, end]`` (s) in a period,
    stored flat (client ``c``'s are ``offsets[c]:offsets[c + 1]``)."""

    starts: np.ndarray
    ends: np.ndarray
    offsets: np.ndarray
    periods: np.ndarray

    def __len__(self) -> int:
        return len(self.periods)

    def on(self, clients: np.ndarray, time_s: float) -> np.ndarray:
        """Whether each of ``clients`` (indices into the trace) is on at ``time_s``: in one
        of its windows at ``time_s mod finish_time``."""
        counts = self.offsets[clients + 1] - self.offsets[clients]
        owner = np.repeat(np.arange(len(clients)), counts)  # window -> position in clients
        first = np.repeat(self.offsets[clients] - np.cumsum(counts) + counts, counts)
        window = first + np.arange(counts.sum())
        t = np.repeat(time_s % self.periods[clients], counts)
        hit = (self.starts[window] <= t) & (t <= self.ends[window])
        return np.bincount(owner, weights=hit, minlength=len(clients)) > 0


@lru_cache(maxsize=4)
def load_behaviour(path: str, field: str = "fleet.trace_behaviour") -> Behaviour:
    """A ``client_behave_trace`` pickle, or ``ConfigError`` naming the first bad client:
    ``active`` and ``inactive`` lists of as many numbers, ``active[i] <= inactive[i]``,
    ``finish_time`` > 0."""
    starts, ends, counts, periods = [], [], [], []
    for client, entry in _load(path, field).items():
        where = f"{path}, client {client!r}"
        if not isinstance(entry, dict) or not {"active", "inactive", "finish_time"} <= set(entry):
            raise ConfigError(field, where, "{'active': [s, ...], 'inactive': [s, ...], "
                                            "'finish_time': s}")
        active, inactive = entry["active"], entry["inactive"]
        if not (isinstance(active, (list, tuple)) and isinstance(inactive, (list, tuple))
                and len(active) == len(inactive)
                and all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                        and math.isfinite(float(v)) for v in [*active, *inactive])):
            raise ConfigError(field, where, "'active' and 'inactive': lists of as many "
                                            "finite numbers (seconds)")
        if any(a > b for a, b in zip(active, inactive)):
            raise ConfigError(field, where, "windows with active[i] <= inactive[i]; got "
                                            f"{list(zip(active, inactive))}")
        if not _positive(entry["finish_time"]):
            raise ConfigError(field, where, f"'finish_time': a number > 0 (the period, s), "
                                            f"got {entry['finish_time']!r}")
        starts.extend(float(v) for v in active)
        ends.extend(float(v) for v in inactive)
        counts.append(len(active))
        periods.append(float(entry["finish_time"]))
    return Behaviour(np.array(starts), np.array(ends),
                     np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
                     np.array(periods))


def trace_clients(num_devices: int, trace_length: int) -> np.ndarray:
    """Which trace client each device takes: device ``d`` the ``d mod n``-th."""
    return np.arange(num_devices) % trace_length
