"""The server's memory for one round's aggregation, by round size and arrival order.

Each round's replies are made one at a time, only when the server pulls the next one (as
``fedmeta.app.fold.replies_as_they_come`` delivers them), and ``FedMeta.aggregate_train``
folds them; ``tracemalloc`` records the peak of what Python and NumPy allocate meanwhile,
in units of one reply's update. ``in order``: device 0 first; ``reversed``: device 0 last
(every other reply waits for its turn: ``held_in_memory`` of them in memory, the rest on
disk). Writes ``benchmarks/results/server_memory.md``.

    python benchmarks/server_memory.py [--sizes 8 64 512] [--width 256]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import torch
from flwr.app import Message, MessageType, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity
from host import cpu_name

from fedmeta.app.records import to_record
from fedmeta.app.strategy import FedMeta
from fedmeta.config import from_dict
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import MLP

RESULTS = Path(__file__).parent / "results"


def strategy(n: int, aggregation: str, width: int) -> FedMeta:
    cfg = from_dict({"federation": {"num_devices": n + 1, "num_held_out": 1,
                                    "min_train_devices": n, "fraction_train": 1.0,
                                    "aggregation": aggregation}})
    torch.manual_seed(0)
    learner = build_learner("maml", MLP(hidden=(width, width)), inner_lr=0.1)
    s = FedMeta(cfg.federation, MetaTrainer(learner, 1.0, "sgd"), seed=1)
    s.partitions = {1000 + p: p for p in range(n + 1)}
    s._asked["train", 1] = [1000 + p for p in range(n)]  # as configure_train records
    return s


def arriving(s: FedMeta, order: list[int]) -> Iterator[Message]:
    for p in order:
        gen = torch.Generator().manual_seed(p)
        delta = {k: torch.randn(v.shape, generator=gen) for k, v in s.trainer.params.items()}
        metrics = MetricRecord({"num-examples": 10, "pre_loss": 1.0, "pre_acc": 0.5,
                                "post_loss": 0.5, "post_acc": 0.75})
        sent = Message(RecordDict(), dst_node_id=1000 + p, message_type=MessageType.TRAIN)
        yield Message(RecordDict({"arrays": to_record(delta), "metrics": metrics}),
                      reply_to=sent)


def measure(n: int, aggregation: str, arrival: str, width: int) -> dict:
    s = strategy(n, aggregation, width)
    one = sum(v.numel() * 4 for v in s.trainer.params.values())
    order = list(range(n)) if arrival == "in order" else list(range(n))[::-1]
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    start = time.perf_counter()
    s.aggregate_train(1, arriving(s, order))
    seconds = time.perf_counter() - start
    peak = tracemalloc.get_traced_memory()[1] - base
    tracemalloc.stop()
    return {"aggregation": aggregation, "arrival": arrival, "devices": n,
            "reply_mb": one / 2**20, "peak_mb": peak / 2**20, "peak_replies": peak / one,
            "seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[8, 64, 512])
    parser.add_argument("--width", type=int, default=256)
    args = parser.parse_args()
    TaskIdentity.run_id, TaskIdentity.task_id, TaskIdentity.node_id = 1, 1, 1
    rows = [measure(n, aggregation, arrival, args.width)
            for aggregation, arrival in (("mean", "in order"), ("mean", "reversed"),
                                         ("median", "in order"))
            for n in args.sizes]
    load = os.getloadavg()
    lines = [
        "# Server memory for one round's aggregation",
        "",
        (f"`python benchmarks/server_memory.py --sizes {' '.join(map(str, args.sizes))} "
        f"--width {args.width}` on {cpu_name()}, 1 thread, load average "
        f"{load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f} (1 / 5 / 15 min), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. Peak of Python and NumPy "
        "allocations (tracemalloc) while `FedMeta.aggregate_train` takes the round's replies "
        "one at a time, in units of one reply's update (MLP 1-"
        f"{args.width}-{args.width}-1, {rows[0]['reply_mb']:.2f} MB)."),
        "",
        "| aggregation | arrival | devices | peak MB | peak (replies) | s (traced) |",
        "|---|---|---:|---:|---:|---:|",
        *(f"| {r['aggregation']} | {r['arrival']} | {r['devices']} | {r['peak_mb']:.1f} | "
          f"{r['peak_replies']:.1f} | {r['seconds']:.2f} |" for r in rows)]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "server_memory.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "server_memory.json").write_text(json.dumps(rows, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
