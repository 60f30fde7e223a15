"""float32 against bfloat16 autocast (``train.precision``), paired, on this machine's CPU.

Conv4, 5-way 1-shot, 15 queries per class, 28x28: one meta-update of ``--meta-batch``
tasks (one inner step of 0.4) for each first-order learner that ``precision`` applies to
(first-order MAML, Reptile, Prototypical Networks), and a held-out evaluation of
``--eval-episodes`` episodes (5 steps), each on the per-episode loop and on the batched
path. Within each repetition the two precisions run back to back on the same parameters and
episodes; the median time of each and the median of the per-repetition ratios (float32
time / bfloat16 time, > 1: bfloat16 faster) are reported, with the CPU's model and the
instruction sets that decide what bfloat16 costs (``avx512_bf16`` or ``amx_bf16``: units
that compute in it; without them oneDNN emulates it, several times slower). For first-order
MAML and Reptile, one meta-update and its Adam step in bfloat16 is also timed against the
plain per-task autograd loop in float32 that ``meta_throughput.py`` measures the issue's
first-order goals against (``plain_step``). Results:
``benchmarks/results/precision.md`` and ``.json``. Run by hand, alone on the host:

    python benchmarks/precision.py [--reps 5] [--threads 1 2] [--meta-batch 8]
                                   [--eval-episodes 40]
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

import torch
from arguments import at_least_one  # benchmarks/arguments.py, beside this script
from host import cpu_name, isa  # benchmarks/host.py
from meta_throughput import META_LR, plain_step, synthetic_batch

from fedmeta.meta import FirstOrderMAML, MetaLearner, MetaTrainer, ProtoNet, Reptile
from fedmeta.models import Conv4

RESULTS = Path(__file__).resolve().parent / "results"
LEARNERS: dict[str, type[MetaLearner]] = {"fomaml": FirstOrderMAML, "reptile": Reptile,
                                          "protonet": ProtoNet}
def contenders(meta_batch: int, eval_episodes: int
               ) -> dict[str, dict[str, Callable[[], object]]]:
    """name -> {precision: a call}; the same parameters and episodes for both precisions."""
    torch.manual_seed(0)
    model = Conv4(n_way=5)
    train, held_out = synthetic_batch(meta_batch), synthetic_batch(eval_episodes, seed=1)
    out: dict[str, dict[str, Callable[[], object]]] = {}
    for path, batched in (("loop", False), ("batched", True)):
        for name, cls in LEARNERS.items():
            learners = {p: cls(model, inner_lr=0.4, inner_steps=1, eval_steps=5,
                               batched=batched, precision=p) for p in ("float32", "bfloat16")}
            params = learners["float32"].init_params()  # the learner's own (ProtoNet: body)
            out[f"{name} meta-update ({path})"] = {
                p: (lambda lr=lr, ps=params: lr.meta_update(ps, train))
                for p, lr in learners.items()}
        evaluators = {p: FirstOrderMAML(model, inner_lr=0.4, inner_steps=1, eval_steps=5,
                                        batched=batched, precision=p)
                      for p in ("float32", "bfloat16")}
        params = evaluators["float32"].init_params()
        out[f"evaluation, {eval_episodes} episodes ({path})"] = {
            p: (lambda lr=lr, ps=params: lr.evaluate(ps, held_out))
            for p, lr in evaluators.items()}
    for name in ("fomaml", "reptile"):
        for path, batched in (("loop", False), ("batched", True)):
            out[f"{name}: plain loop float32 vs fedmeta bfloat16 ({path})"] = {
                "plain float32": partial(plain_step(name, Conv4(n_way=5)), train),
                "fedmeta bfloat16": partial(trained_step(LEARNERS[name], batched), train)}
    return out


def trained_step(cls: type[MetaLearner], batched: bool) -> Callable[[object], object]:
    """A meta-update of ``cls`` in bfloat16 and its Adam step, as ``plain_step`` does."""
    learner = cls(Conv4(n_way=5), inner_lr=0.4, inner_steps=1, batched=batched,
                  precision="bfloat16")
    trainer = MetaTrainer(learner, meta_lr=META_LR)

    def step(batch: object) -> object:
        update = learner.meta_update(trainer.params, batch)
        trainer.step(update)
        return update.metrics
    return step


def measure(calls: dict[str, Callable[[], object]], reps: int) -> dict[str, object]:
    """Warm-up, then ``reps`` repetitions of float32 then bfloat16 (alternating order)."""
    for call in calls.values():
        call()
    times: dict[str, list[float]] = {p: [] for p in calls}
    for rep in range(reps):
        order = list(calls) if rep % 2 == 0 else list(reversed(calls))
        for p in order:
            start = time.perf_counter()
            calls[p]()
            times[p].append(time.perf_counter() - start)
    first, second = calls
    ratios = [a / b for a, b in zip(times[first], times[second], strict=True)]
    return {"first": first, "second": second, "first_s": statistics.median(times[first]),
            "second_s": statistics.median(times[second]),
            "ratio": statistics.median(ratios), "ratios": [round(r, 2) for r in ratios]}


def write(report: dict[str, object], out: Path) -> None:
    out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = ["# float32 against bfloat16 autocast (`train.precision`)", "",
             f"{report['started']}: {report['cpu']} ({', '.join(report['isa']) or 'no flags'}; "
             f"torch's CPU capability {report['capability']}), {os.cpu_count()} cores; "
             f"Python {platform.python_version()}, torch {torch.__version__}. Load average "
             f"{report['load'][0]:.1f} before, {report['load'][1]:.1f} after.", "",
             "Conv4, 5-way 1-shot, 15 queries per class, 28x28; meta-updates of "
             f"{report['meta_batch']} tasks, one inner step; evaluation 5 steps. "
             f"{report['reps']} repetition{'s' if report['reps'] != 1 else ''} after a "
             "warm-up, the two contenders of a row back to back in each (alternating which "
             "goes first); times are medians, the ratio is the median of the per-repetition "
             "ratios (first / second, > 1: the second faster). Rows against the plain loop: "
             "one meta-update and its Adam step, fedmeta's learner in bfloat16 against "
             "`benchmarks/meta_throughput.py`'s plain per-task autograd loop in float32 (the "
             "issue's reference for the first-order goals).",
             "", f"Command: `{report['command']}`", ""]
    for threads, rows in report["threads"].items():
        lines += [f"## {threads} thread{'s' if threads != '1' else ''}", "",
                  "| contender | first | second | first s | second s | first / second | "
                  "per repetition |", "|---|---|---|---:|---:|---:|---|"]
        lines += [f"| {name} | {r['first']} | {r['second']} | {r['first_s']:.3f} | "
                  f"{r['second_s']:.3f} | {r['ratio']:.2f} | "
                  f"{', '.join(f'{x:.2f}' for x in r['ratios'])} |" for name, r in rows.items()]
        lines.append("")
    out.with_suffix(".md").write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--meta-batch", type=int, default=8)
    parser.add_argument("--eval-episodes", type=int, default=40)
    parser.add_argument("--out", type=Path, default=RESULTS / "precision")
    args = parser.parse_args()
    at_least_one(parser, args, "reps", "meta_batch", "eval_episodes")
    if min(args.threads) < 1:
        parser.error(f"--threads {args.threads}: integers >= 1")
    report: dict[str, object] = {
        "started": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "cpu": cpu_name(), "isa": isa(), "capability": torch.backends.cpu.get_cpu_capability(),
        "reps": args.reps, "meta_batch": args.meta_batch, "eval_episodes": args.eval_episodes,
        "command": "python benchmarks/precision.py " + " ".join(
            f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}"
            for k, v in vars(args).items() if k != "out"),
        "threads": {}}
    load = os.getloadavg()[0]
    for threads in args.threads:
        torch.set_num_threads(threads)
        rows = {}
        for name, calls in contenders(args.meta_batch, args.eval_episodes).items():
            rows[name] = measure(calls, args.reps)
            print(f"{threads} thread(s), {name}: {json.dumps(rows[name])}", flush=True)
        report["threads"][str(threads)] = rows
    report["load"] = [load, os.getloadavg()[0]]
    write(report, args.out)


if __name__ == "__main__":
    main()
