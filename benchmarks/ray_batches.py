"""Messages per Ray call (``simulation.worker_batch``): what a call costs, and how the size
of each call changes a round's length.

1. **Measured**: a Ray actor answers calls carrying ``k`` Flower messages (each an
   ``ArrayRecord`` of the sinusoid MLP's parameters, 7 KB, and a ``ConfigRecord``) with as
   many replies; the driver's and the actor's process CPU time per message, for ``k`` in
   ``--batches``, over ``--messages`` messages each.
2. **Modelled** (a discrete-event model of ``fedmeta.app.ray_batches``'s queue, not a
   measurement): one round of ``n`` messages that all wait at its start, each ``learn`` ms
   of work, ``actors`` actors with 2 call slots each, a call costing the measured per-call
   and per-message worker CPU of its size; the round's length over the ideal ``n * learn /
   actors``, for three ways to size a call: fedmeta's ``call_size`` (the waiting messages'
   share per slot, rounded down, at most 8), the earlier ``min(8, ceil(waiting / actors))``
   and one message a call (Flower's actors).

Writes ``benchmarks/results/ray_batches.md`` and ``.json``.

    OMP_NUM_THREADS=1 python benchmarks/ray_batches.py [--batches 1 8 16] [--messages 2000]
"""

from __future__ import annotations

import argparse
import datetime
import heapq
import json
import math
import os
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import ray
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from host import cpu_name

from fedmeta.app.ray_batches import call_size

RESULTS = Path(__file__).parent / "results"
DEPTH = 2  # simulation.worker_queue's default: call slots per actor
Rule = Callable[[int, int, int], int]  # (waiting, actors, slots) -> messages in the call


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _identify() -> None:
    """A run's identity, which Flower's ``Message`` needs (the engine sets it in a run)."""
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1


@ray.remote(num_cpus=1)
class _Echo:
    def __init__(self) -> None:
        _identify()

    def cpu_s(self) -> float:
        return _cpu_s()

    def run_batch(self, messages: list[Message]) -> list[Message]:
        return [Message(m.content, reply_to=m) for m in messages]


def _message(i: int) -> Message:
    arrays = [np.random.default_rng(j).standard_normal(shape).astype(np.float32)
              for j, shape in enumerate([(40, 1), (40,), (40, 40), (40,), (1, 40), (1,)])]
    content = RecordDict({"arrays": ArrayRecord(arrays),
                          "config": ConfigRecord({"server-round": 1, "local-steps": 5})})
    return Message(content, dst_node_id=1000 + i, message_type=MessageType.TRAIN)


def measure(batches: list[int], messages: int) -> list[dict[str, float]]:
    """Driver and worker CPU ms per message, a call of ``k`` messages at a time."""
    _identify()
    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        actor = _Echo.remote()  # type: ignore[attr-defined]
        ray.get(actor.run_batch.remote([_message(0)]))  # warm
        pool = [_message(i) for i in range(max(batches))]
        rows = []
        for k in batches:
            calls = max(messages // k, 1)
            driver, worker = _cpu_s(), ray.get(actor.cpu_s.remote())
            start = time.perf_counter()
            for _ in range(calls):
                ray.get(actor.run_batch.remote(pool[:k]))
            wall = time.perf_counter() - start
            driver, worker = _cpu_s() - driver, ray.get(actor.cpu_s.remote()) - worker
            n = calls * k
            rows.append({"batch": k, "messages": n, "driver_ms": 1000 * driver / n,
                         "worker_ms": 1000 * worker / n, "wall_ms": 1000 * wall / n})
        return rows
    finally:
        ray.shutdown()


def round_length(n: int, actors: int, learn: float, call_ms: float, message_ms: float,
                 rule: Rule) -> float:
    """Length of a round of ``n`` messages waiting at its start (the model above), ms."""
    waiting, busy_until, end, seq = n, [0.0] * actors, 0.0, 0
    slots = [(0.0, i, i % actors) for i in range(actors * DEPTH)]  # interleaved: a, b, a, b
    while waiting:
        free_at, _, a = heapq.heappop(slots)
        k = rule(waiting, actors, actors * DEPTH)
        waiting -= k
        busy_until[a] = max(free_at, busy_until[a]) + call_ms + k * (learn + message_ms)
        end = max(end, busy_until[a])
        seq += 1
        heapq.heappush(slots, (busy_until[a], actors * DEPTH + seq, a))
    return end


RULES: dict[str, Rule] = {
    "fedmeta (waiting // slots)": lambda w, a, s: call_size(w, s, 8),
    "ceil(waiting / actors)": lambda w, a, s: min(8, math.ceil(w / a)),
    "one a call": lambda w, a, s: 1,
}


def model(costs: dict[int, dict[str, float]]) -> list[dict[str, object]]:
    """Each rule's round length over the ideal, by actors, messages an actor and learning."""
    one, eight = costs[1], costs.get(8, costs[max(costs)])
    per_message = max(eight["worker_ms"], 0.0)  # in a call of 8, beside the call's own cost
    per_call = max(one["worker_ms"] - per_message, 0.0)
    rows = []
    for actors in (2, 8):
        for each in (5, 10, 25, 50):
            for learn in (14.0, 28.0):
                n = actors * each
                row: dict[str, object] = {"actors": actors, "messages": n, "learn_ms": learn}
                for name, rule in RULES.items():
                    length = round_length(n, actors, learn, per_call,
                                          per_message if name != "one a call" else 0.0, rule)
                    row[name] = length / (n * learn / actors) - 1
                rows.append(row)
    return rows


def write(measured: list[dict[str, float]], modelled: list[dict[str, object]]) -> None:
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    head = (f"{now}: {cpu_name()}, {os.cpu_count()} cores; one Ray worker, the driver "
            f"single-threaded; load average when written {os.getloadavg()[0]:.1f}.")
    lines = ["# Messages per Ray call", "", head, "",
             "## Measured: CPU per message, by messages per call", "",
             "| messages a call | messages | driver CPU ms a message | worker CPU ms a message "
             "| wall ms a message |", "|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['batch']} | {r['messages']} | {r['driver_ms']:.3f} | "
              f"{r['worker_ms']:.3f} | {r['wall_ms']:.3f} |" for r in measured]
    lines += ["", "## Modelled: a round's length over the ideal (n x learning / actors)", "",
              f"All n messages wait at the round's start; {DEPTH} call slots an actor; a call "
              "costs the worker's measured CPU of a call of 1 less that of a message in a "
              "call of 8, plus that per message (none per message for one a call). A model "
              "of the queue, not a measurement of Ray.", "",
              "| actors | messages | learning ms | " + " | ".join(RULES) + " |",
              "|---:|---:|---:|" + "---:|" * len(RULES)]
    lines += [f"| {r['actors']} | {r['messages']} | {r['learn_ms']:.0f} | "
              + " | ".join(f"+{100 * float(r[name]):.1f}%"  # type: ignore[arg-type]
                           for name in RULES) + " |" for r in modelled]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "ray_batches.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "ray_batches.json").write_text(json.dumps(
        {"started": now, "cpu": cpu_name(), "measured": measured, "modelled": modelled},
        indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 16])
    parser.add_argument("--messages", type=int, default=2000)
    args = parser.parse_args()
    if 1 not in args.batches or min(args.batches) < 1:
        parser.error(f"--batches {args.batches}: must include 1, each at least 1")
    measured = measure(sorted(set(args.batches)), args.messages)
    modelled = model({int(r["batch"]): r for r in measured})
    write(measured, modelled)
    print((RESULTS / "ray_batches.md").read_text())


if __name__ == "__main__":
    main()
