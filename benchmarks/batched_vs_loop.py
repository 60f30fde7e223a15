"""One meta-update (or a held-out evaluation), batched against the per-episode loop, paired.

Conv4, 5-way 1-shot, 15 queries, meta-batch 8, 28x28, one inner step (``--eval N``: N
episodes scored before and after 5 steps instead), on ``--threads`` intra-op threads (1 by
default). The two paths alternate within each repetition; the median of the per-repetition
times and the per-repetition ratios (loop time / batched time, > 1: batched faster) are
printed, with the host's load average. ``--profile`` adds a torch.profiler table for one
call of each path. Run by hand:
``OMP_NUM_THREADS=1 python benchmarks/batched_vs_loop.py --reps 5 [--algorithm fomaml]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from fedmeta.meta import MAML, FirstOrderMAML, Reptile
from fedmeta.models import Conv4
from meta_throughput import synthetic_batch  # benchmarks/, beside this script


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--algorithm", choices=("maml", "fomaml", "reptile"), default="maml")
    parser.add_argument("--eval", type=int, default=0, metavar="N",
                        help="time evaluate() on N episodes (5 steps) instead of meta_update")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model = Conv4(n_way=5)
    batch = synthetic_batch(args.eval or 8)
    cls = {"maml": MAML, "fomaml": FirstOrderMAML, "reptile": Reptile}[args.algorithm]
    learners = {b: cls(model, inner_lr=0.4, inner_steps=1, eval_steps=5, batched=b)
                for b in (False, True)}
    params = {k: v.detach().clone() for k, v in model.named_parameters()}

    def call(learner: MAML) -> object:
        if args.eval:
            return learner.evaluate(params, batch)
        return learner.meta_update(params, batch)

    times: dict[bool, list[float]] = {False: [], True: []}
    for learner in learners.values():
        call(learner)  # warm-up
    for _ in range(args.reps):
        for b, learner in learners.items():
            start = time.perf_counter()
            call(learner)
            times[b].append(time.perf_counter() - start)
    loop, batched = statistics.median(times[False]), statistics.median(times[True])
    ratios = [round(a / b, 2) for a, b in zip(times[False], times[True])]
    print(f"loop {loop:.3f} s, batched {batched:.3f} s, loop/batched {loop / batched:.2f} "
          f"(per repetition {ratios}), load average {os.getloadavg()[0]:.2f}")
    if args.profile:
        for b, learner in learners.items():
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                call(learner)
            print("batched" if b else "loop")
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


if __name__ == "__main__":
    main()
