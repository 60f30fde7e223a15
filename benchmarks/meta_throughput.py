"""Meta-training throughput of fedmeta's learners against `higher` and a plain autograd loop.

Conv4, 5-way 1-shot, 15 queries per class, meta-batch 32, one inner SGD step (lr 0.4) on
synthetic 28x28 images (throughput does not depend on pixel values). Each contender does one
full meta-training step per call: the meta-gradient (or Reptile direction) and an Adam step.

    batched  fedmeta.meta MAML / FirstOrderMAML / Reptile with ``batched=True``: all tasks in
             one set of kernels (grouped convolutions), ``meta_update`` + MetaTrainer.step
    loop     the same learners with ``batched=False``: one task at a time (the CPU default)
    higher   second-order MAML with ``higher.innerloop_ctx`` (copy_initial_weights=False,
             track_higher_grads=True), one task at a time, as its README shows, on
             fedmeta's Conv4; ``higher-std`` the same on a standard ``nn.Sequential`` Conv4
             in NCHW (conv, ``nn.BatchNorm2d(track_running_stats=False)``, ReLU, max-pool),
             the way its users write it
    plain    a per-task ``torch.autograd.grad`` loop (``create_graph=True`` for second order)
             over ``torch.func.functional_call`` of the same Conv4 module
    textbook second-order MAML, plain loop over a hand-written NCHW Conv4 forward
             (``F.batch_norm``, ReLU then max-pool): what one would write without fedmeta

All contenders but ``textbook`` and ``higher-std`` share the fedmeta Conv4 module, so their
ratios measure the meta-learning machinery; those two show what the model's layout choices
are worth. Held-out evaluation (100 5-way 1-shot episodes, 5 adaptation steps, scored before
and after) is timed batched against the per-episode loop. Everything runs once per thread
count (``--threads 1,2``); ratios are only compared within one run. Where a goal is missed
the script profiles (torch.profiler) the batched and the loop step and lists their top
kernels.
On a GPU (``--device cuda``) every contender, batch and peak runs there, each timed step
ends with ``torch.cuda.synchronize()``, and the goal read is the issue's GPU one (second-order
MAML >= 10x ``higher`` on the same GPU); the CPU path is the same code with ``--device cpu``.
Timing is interleaved (warm-up, then rounds visiting every contender in a rotated order) so
host noise hits all alike; throughput is from the median step time, ratios are the median of
per-round paired ratios. FLOPs of one meta-update are counted with
``torch.utils.flop_counter.FlopCounterMode`` and compared with a float32 ``torch.mm`` peak.

    nice python benchmarks/meta_throughput.py [--quick] [--threads 1,2] [--device cuda]
"""

from __future__ import annotations

import argparse
import copy
import datetime
import importlib.metadata
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call
from torch.profiler import ProfilerActivity, profile
from torch.utils.flop_counter import FlopCounterMode

from fedmeta.config import resolve_device
from fedmeta.errors import ConfigError
from fedmeta.meta import MAML, FirstOrderMAML, MetaTrainer, Reptile
from fedmeta.models import Conv4
from fedmeta.tasks.episode import EpisodeBatch
from arguments import at_least_one  # benchmarks/arguments.py, beside this script
from host import cpu_name  # benchmarks/host.py

N_WAY, K_SHOT, QUERIES, INNER_LR, META_LR = 5, 1, 15, 0.4, 1e-3
EVAL_EPISODES, EVAL_STEPS = 100, 5
LEARNERS = {"maml": MAML, "fomaml": FirstOrderMAML, "reptile": Reptile}
CPU = torch.device("cpu")
NOTES = [
    ("FLOPs: FlopCounterMode (convolutions and matmuls) sees through torch.func.grad: ours, "
     "higher and the plain loop count the same FLOPs for the same algorithm. (Under "
     "torch.func.vmap, fedmeta's earlier implementation, it counted 3.1x the plain loop's "
     "FLOPs for second-order MAML: vmap's batching rules run other kernels.) The batched "
     "steps are given the loop's count: they run the same arithmetic (the counts agree for "
     "one task), but torch 2.13's counter charges a grouped convolution's weight gradient "
     "as if every group saw all T*C input channels (T times its FLOPs: 2x the loop's total "
     "on 4 tasks)."),
    ("Peaks: torch.mm goes to MKL sgemm and convolutions to oneDNN; where the two pick "
     "different instruction sets (MKL on AMD CPUs) their peaks differ, so both are given."),
    "higher 0.2.1 runs unchanged on this torch; no workaround was needed.",
    ("Batched on one thread of this CPU (2-core AMD EPYC, AVX2, shared): the loop is already "
     "close to what these kernels allow, so batching cannot reach the one-thread goals. The "
     "FLOPs are the same (FlopCounterMode), and at a quiet moment (load 1.1) the loop's "
     "convolutions ran near oneDNN's rate: per-task 64->64 convolutions on 75 images at "
     "56-66 GFLOP/s forward (grouped: 70-77), and a whole first-order step of 8 tasks at 38 "
     "GFLOP/s; 1.5x the plain loop would need 57 GFLOP/s for the whole step, batch-norm, "
     "pooling and the Cin=1 first block (memory-bound) included. What batching adds on one "
     "thread is T-times larger working sets: a first-block activation is 120 MB batched "
     "against 15 MB per task (L3 32 MiB), above glibc's largest mmap threshold, so every "
     "such tensor is a fresh mmap whose pages fault on first touch (a Conv4 forward of 75 "
     "images: 157 ms by default, 72 ms with glibc's mmap disabled; the first block alone "
     "97 vs 12 ms). benchmarks/conv_kernels.py measured the kernels the issue suggested: "
     "im2col + torch.bmm (MKL sgemm, 28 GFLOP/s on this AMD CPU against oneDNN's 70) ran "
     "3.5-4x slower than the grouped convolution on blocks 2-4 and no better on block 1; "
     "nine shifted baddbmm likewise; so the grouped convolution stays, on CPU and GPU. "
     "Hence the automatic choice: batched on an accelerator, the loop on the CPU (quiet "
     "hosts ran the loop faster on two threads too; batching won there only on a host busy "
     "with other jobs, where every loop kernel ends in an OpenMP barrier waiting for a "
     "core; meta_throughput_notes.md)."),
    ("torch.compile is not a contender: it rejects second-order MAML (torch 2.13: "
     "'torch.compile with aot_autograd does not currently support double backward')."),
]
LEARN2LEARN_NOTE = (
    "learn2learn 0.2.0 (the newest release) ships only an sdist whose pre-generated Cython C "
    "includes longintrepr.h, removed in Python 3.11: `pip install learn2learn` fails to build "
    "on Python 3.11, so it is not benchmarked")

Step = Callable[[EpisodeBatch], dict[str, float]]  # one meta-training step -> metrics


def synthetic_batch(meta_batch: int, seed: int = 0,
                    device: torch.device | str = "cpu") -> EpisodeBatch:
    """Random 28x28 support and query images with balanced labels, on ``device``."""
    g = torch.Generator().manual_seed(seed)
    support, query = N_WAY * K_SHOT, N_WAY * QUERIES
    return EpisodeBatch(
        torch.randn(meta_batch, support, 1, 28, 28, generator=g),
        torch.arange(N_WAY).repeat(meta_batch, K_SHOT),
        torch.randn(meta_batch, query, 1, 28, 28, generator=g),
        torch.arange(N_WAY).repeat(meta_batch, QUERIES),
        N_WAY).to(device)


def tasks(batch: EpisodeBatch):
    for i in range(len(batch)):
        yield batch.support_x[i], batch.support_y[i], batch.query_x[i], batch.query_y[i]


# -- ours -------------------------------------------------------------------------------------
def ours_step(algorithm: str, model: nn.Module, batched: bool) -> Step:
    learner = LEARNERS[algorithm](model, inner_lr=INNER_LR, inner_steps=1, batched=batched)
    trainer = MetaTrainer(learner, meta_lr=META_LR, device=device_of(model))

    def step(batch: EpisodeBatch) -> dict[str, float]:
        update = learner.meta_update(trainer.params, batch)
        trainer.step(update)
        return update.metrics
    return step


# -- higher -----------------------------------------------------------------------------------
def higher_maml_step(model: nn.Module) -> Step:
    import higher
    meta_opt = torch.optim.Adam(model.parameters(), lr=META_LR)
    inner_opt = torch.optim.SGD(model.parameters(), lr=INNER_LR)

    def step(batch: EpisodeBatch) -> dict[str, float]:
        meta_opt.zero_grad()
        losses = []
        for sx, sy, qx, qy in tasks(batch):
            with higher.innerloop_ctx(model, inner_opt, copy_initial_weights=False,
                                      track_higher_grads=True) as (fmodel, diffopt):
                diffopt.step(F.cross_entropy(fmodel(sx), sy))
                loss = F.cross_entropy(fmodel(qx), qy)
                (loss / len(batch)).backward()
                losses.append(loss.detach())
        meta_opt.step()
        return {"query_loss": float(torch.stack(losses).mean())}
    return step


def standard_conv4() -> nn.Module:
    """Conv4 as `higher`'s users write it: nn.Sequential, NCHW, ReLU before pooling."""
    layers: list[nn.Module] = []
    for i in range(4):
        layers += [nn.Conv2d(1 if i == 0 else 64, 64, 3, padding=1),
                   nn.BatchNorm2d(64, track_running_stats=False), nn.ReLU(), nn.MaxPool2d(2)]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(64, N_WAY))


# -- plain autograd loops ---------------------------------------------------------------------
def textbook_forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
    """Conv4 by hand in NCHW: conv, batch-norm on batch statistics, ReLU, max-pool."""
    for i in range(4):
        b = f"body.{i}."
        x = F.conv2d(x, p[b + "0.weight"], p[b + "0.bias"], padding=1)
        x = F.batch_norm(x, None, None, p[b + "1.weight"], p[b + "1.bias"], training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1) @ p["head.weight"].T + p["head.bias"]


def plain_step(algorithm: str, model: nn.Module,
               forward: Callable[[dict[str, Tensor], Tensor], Tensor] | None = None) -> Step:
    if forward is None:
        def forward(p: dict[str, Tensor], x: Tensor) -> Tensor:
            return functional_call(model, p, (x,))
    theta = dict(model.named_parameters())
    meta_opt = torch.optim.Adam(theta.values(), lr=META_LR)
    second_order = algorithm == "maml"

    def step(batch: EpisodeBatch) -> dict[str, float]:
        meta_opt.zero_grad()
        losses, accs = [], []
        for sx, sy, qx, qy in tasks(batch):
            inner = torch.autograd.grad(F.cross_entropy(forward(theta, sx), sy),
                                        list(theta.values()), create_graph=second_order)
            fast = {k: v - INNER_LR * g for (k, v), g in zip(theta.items(), inner)}
            if algorithm == "reptile":
                with torch.no_grad():
                    out = forward(fast, qx)  # for the metrics, as ours computes them
                    for k, v in theta.items():
                        d = (v - fast[k]) / len(batch)
                        v.grad = d if v.grad is None else v.grad + d
            else:
                if not second_order:
                    fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
                out = forward(fast, qx)
                loss = F.cross_entropy(out, qy) / len(batch)
                if second_order:
                    loss.backward()
                else:
                    for v, g in zip(theta.values(), torch.autograd.grad(loss, list(fast.values()))):
                        v.grad = g if v.grad is None else v.grad + g
            losses.append(F.cross_entropy(out.detach(), qy))
            accs.append((out.detach().argmax(-1) == qy).float().mean())
        meta_opt.step()
        return {"query_loss": float(torch.stack(losses).mean()),
                "query_acc": float(torch.stack(accs).mean())}
    return step


# -- measurement ------------------------------------------------------------------------------
def device_of(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def matmul_peak(n: int, repeats: int, device: torch.device = CPU) -> float:
    """Best float32 ``torch.mm`` rate on n x n matrices on ``device``, GFLOP/s."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    torch.mm(a, b)
    best = min(_time(lambda: torch.mm(a, b)) for _ in range(repeats))
    return 2 * n ** 3 / best / 1e9


def onednn_gemm_peak(repeats: int, device: torch.device = CPU) -> float:
    """Best rate of a GEMM run as a convolution (a channels-last 1x1 one) on ``device``:
    oneDNN on the CPU, cuDNN on a GPU; GFLOP/s.

    MKL's sgemm (``torch.mm``) and oneDNN (every convolution) pick their own instruction
    sets; on some CPUs they differ by 2x, so both peaks are reported.
    """
    x = torch.randn(16, 512, 32, 32, device=device).contiguous(
        memory_format=torch.channels_last)
    w = torch.randn(512, 512, 1, 1, device=device).contiguous(
        memory_format=torch.channels_last)
    F.conv2d(x, w)
    best = min(_time(lambda: F.conv2d(x, w)) for _ in range(repeats))
    return 2 * 16 * 32 * 32 * 512 * 512 / best / 1e9


def _time(fn: Callable[[], object]) -> float:
    """Seconds ``fn`` takes, its GPU work included (queued kernels finished first)."""
    synchronize()
    start = time.perf_counter()
    fn()
    synchronize()
    return time.perf_counter() - start


def synchronize() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def count_flops(step: Step, batch: EpisodeBatch) -> int:
    with FlopCounterMode(display=False) as counter:
        step(batch)
    return counter.get_total_flops()



def build_contenders(template: nn.Module) -> dict[str, tuple[str, Step]]:
    """name -> (algorithm, step), each over its own copy of ``template``."""
    def fresh() -> nn.Module:
        return copy.deepcopy(template)

    contenders = {f"batched/{a}": (a, ours_step(a, fresh(), True)) for a in LEARNERS}
    contenders |= {f"loop/{a}": (a, ours_step(a, fresh(), False)) for a in LEARNERS}
    contenders["higher/maml"] = ("maml", higher_maml_step(fresh()))
    torch.manual_seed(0)
    contenders["higher-std/maml"] = ("maml", higher_maml_step(
        standard_conv4().to(device_of(template))))
    contenders |= {f"plain/{a}": (a, plain_step(a, fresh())) for a in LEARNERS}
    contenders["textbook/maml"] = ("maml", plain_step("maml", fresh(), textbook_forward))
    return contenders


def eval_contenders(template: nn.Module) -> dict[str, Callable[[EpisodeBatch], object]]:
    """Held-out evaluation (score before and after EVAL_STEPS steps), batched and looped."""
    out = {}
    for name, batched in (("batched", True), ("loop", False)):
        learner = MAML(copy.deepcopy(template), inner_lr=INNER_LR, eval_steps=EVAL_STEPS,
                       batched=batched)
        params = learner.init_params()
        out[f"eval-{name}"] = partial(learner.evaluate, params)
    return out


def timed_rounds(contenders: dict[str, Callable[[EpisodeBatch], object]], batch: EpisodeBatch,
                 warmup: int, rounds: int, label: str) -> dict[str, list[float]]:
    """Seconds per call of every contender, rounds interleaved in a rotated order."""
    names = list(contenders)
    for _ in range(warmup):
        for name in names:
            contenders[name](batch)
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(_time(partial(contenders[name], batch)))
        print(f"{label} round {r + 1}/{rounds}: " + ", ".join(
            f"{n} {times[n][-1]:.2f}s" for n in names), flush=True)
    return times


def paired(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of (time of b) / (time of a): how many times faster a is."""
    return statistics.median(tb / ta for ta, tb in zip(times[a], times[b]))


def top_kernels(fn: Callable[[], object], gpu: bool = False,
                rows: int = 8) -> list[dict[str, float | str]]:
    """The ops with the most self time in one call of ``fn`` (torch.profiler): CPU time, or
    with ``gpu`` the GPU's."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if gpu else [])
    with profile(activities=activities) as prof:
        fn()
        synchronize()

    def self_us(e: Any) -> float:
        return e.self_device_time_total if gpu else e.self_cpu_time_total
    events = sorted(prof.key_averages(), key=self_us, reverse=True)
    total = sum(self_us(e) for e in events) or 1
    return [{"op": e.key, "self_s": self_us(e) / 1e6, "calls": e.count,
             "pct": 100 * self_us(e) / total} for e in events[:rows]]


GOALS = {  # name -> (ratio key, at least)
    "maml >= 2x higher (fedmeta Conv4)": ("batched/maml vs higher/maml", 2.0),
    "maml >= 2x higher (standard Conv4)": ("batched/maml vs higher-std/maml", 2.0),
    "maml >= 1.3x plain": ("batched/maml vs plain/maml", 1.3),
    "fomaml >= 1.5x plain": ("batched/fomaml vs plain/fomaml", 1.5),
    "reptile >= 1.5x plain": ("batched/reptile vs plain/reptile", 1.5),
    "held-out evaluation >= 3x the loop": ("eval-batched vs eval-loop", 3.0),
}
GPU_GOALS = {  # the goal on a GPU: against `higher` on the same GPU
    "maml >= 10x higher on the GPU (fedmeta Conv4)": ("batched/maml vs higher/maml", 10.0),
    "maml >= 10x higher on the GPU (standard Conv4)": ("batched/maml vs higher-std/maml", 10.0),
}


def measure(threads: int, args: argparse.Namespace, warmup: int, rounds: int,
            device: torch.device = CPU) -> dict:
    """Every contender, the evaluation and the peaks on ``device`` with ``threads`` intra-op
    CPU threads."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    template = Conv4(n_way=N_WAY).to(device)
    batch = synthetic_batch(args.meta_batch, device=device)
    contenders = build_contenders(template)
    print(f"torch {torch.__version__}, {device}, {threads} threads, {os.cpu_count()} cores, "
          f"meta-batch {args.meta_batch}, {rounds} rounds", flush=True)
    mm_peak, dnn_peak = matmul_peak(2048, 10, device), onednn_gemm_peak(10, device)
    flop_batch = synthetic_batch(args.flop_tasks, seed=1, device=device)
    scale = args.meta_batch / args.flop_tasks
    flops = {name: count_flops(step, flop_batch) * scale
             for name, (_, step) in build_contenders(template).items()
             if not name.startswith("batched/")}
    flops |= {f"batched/{a}": flops[f"loop/{a}"] for a in LEARNERS}  # see NOTES, FLOPs
    times = timed_rounds({n: step for n, (_, step) in contenders.items()}, batch, warmup,
                         rounds, f"{threads} thr train")
    evals = eval_contenders(template)
    eval_batch = synthetic_batch(args.eval_episodes, seed=2, device=device)
    eval_times = timed_rounds(evals, eval_batch, min(warmup, 1), max(2, rounds // 2),
                              f"{threads} thr eval")
    mm_peak = max(mm_peak, matmul_peak(2048, 10, device))
    dnn_peak = max(dnn_peak, onednn_gemm_peak(10, device))
    results = {}
    for name in contenders:
        median_s, best_s = statistics.median(times[name]), min(times[name])
        gflops, gflops_best = flops[name] / median_s / 1e9, flops[name] / best_s / 1e9
        results[name] = {
            "algorithm": contenders[name][0], "eps_per_s": args.meta_batch / median_s,
            "eps_per_s_best": args.meta_batch / best_s, "step_s": times[name],
            "gflop_per_update": flops[name] / 1e9, "gflop_per_s": gflops,
            "gflop_per_s_best": gflops_best, "pct_mm_peak": 100 * gflops / mm_peak,
            "pct_mm_peak_best": 100 * gflops_best / mm_peak,
            "pct_onednn_peak": 100 * gflops / dnn_peak,
            "pct_onednn_peak_best": 100 * gflops_best / dnn_peak}
    ratios = {f"batched/{a} vs plain/{a}": paired(times, f"batched/{a}", f"plain/{a}")
              for a in LEARNERS}
    ratios |= {f"batched/{a} vs loop/{a}": paired(times, f"batched/{a}", f"loop/{a}")
               for a in LEARNERS}
    ratios |= {f"loop/{a} vs plain/{a}": paired(times, f"loop/{a}", f"plain/{a}")
               for a in LEARNERS}
    for rival in ("higher/maml", "higher-std/maml", "textbook/maml"):
        ratios[f"batched/maml vs {rival}"] = paired(times, "batched/maml", rival)
        ratios[f"loop/maml vs {rival}"] = paired(times, "loop/maml", rival)
    ratios["eval-batched vs eval-loop"] = paired(eval_times, "eval-batched", "eval-loop")
    gpu = device.type == "cuda"
    goals = {g: ratios[key] >= at_least
             for g, (key, at_least) in (GPU_GOALS if gpu else GOALS).items()}
    profiles = {}
    if not all(goals.values()):  # what holds the batched path back, beside the loop's
        small = synthetic_batch(4, seed=3, device=device)
        for name in ("batched/maml", "loop/maml", "batched/fomaml", "loop/fomaml"):
            profiles[f"{name} (4 tasks)"] = top_kernels(partial(contenders[name][1], small),
                                                        gpu)
        small_eval = synthetic_batch(10, seed=4, device=device)
        for name, fn in evals.items():
            profiles[f"{name} (10 episodes)"] = top_kernels(partial(fn, small_eval), gpu)
    return {"threads": threads, "device": str(device),
            "peak_gflop_per_s": {"torch.mm_2048": mm_peak,
                                                      "onednn_gemm": dnn_peak},
            "contenders": results,
            "evaluation_s": {n: {"median_s": statistics.median(t), "runs_s": t}
                             for n, t in eval_times.items()},
            "ratios": ratios, "goals": goals, "profiles": profiles}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="1 warm-up and 3 timed rounds instead of 2 and 15")
    parser.add_argument("--rounds", type=int, help="timed rounds (overrides --quick)")
    parser.add_argument("--meta-batch", type=int, default=32, help="tasks per meta-update")
    parser.add_argument("--threads", default="1,2",
                        help="comma-separated torch intra-op thread counts, each measured")
    parser.add_argument("--eval-episodes", type=int, default=EVAL_EPISODES,
                        help="episodes of the timed held-out evaluation")
    parser.add_argument("--flop-tasks", type=int, default=4,
                        help="tasks in the FLOP-counted meta-update (FLOPs scale linearly)")
    parser.add_argument("--device", default="cpu",
                        help="where everything runs: cpu, cuda or cuda:N (fedmeta's devices)")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/meta_throughput"),
                        help="output path without suffix; writes .json and .md")
    args = parser.parse_args()
    threads = check_args(parser, args)
    try:
        device = resolve_device(args.device)
    except ConfigError as error:
        parser.error(f"--device: {error}")
    warmup, rounds = (1, 3) if args.quick else (2, 15)
    rounds = args.rounds or rounds
    load_before, runs = os.getloadavg(), []
    for count in threads:  # the report is rewritten after each
        runs.append(measure(count, args, warmup, rounds, device))
        write(args, runs, warmup, rounds, load_before, device)


def check_args(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[int]:
    """The thread counts; a count, round or episode number below 1 is refused (exit 2)
    naming the option and the value."""
    at_least_one(parser, args, "rounds", "meta_batch", "eval_episodes", "flop_tasks")
    try:
        threads = [int(t) for t in args.threads.split(",")]
    except ValueError:
        threads = []
    if not threads or min(threads) < 1:
        parser.error(f"--threads {args.threads}: comma-separated integers >= 1, e.g. 1,2")
    return threads


def write(args: argparse.Namespace, runs: list[dict], warmup: int, rounds: int,
          load_before: tuple[float, float, float],
          device: torch.device = CPU) -> None:
    """Write the .json and .md report of the runs so far."""
    report = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "full",
        "machine": {"cpu": cpu_name(), "lscpu": lscpu(), "cores": os.cpu_count(),
                    "python": platform.python_version(), "torch": torch.__version__,
                    "higher": importlib.metadata.version("higher"),
                    "niceness": os.nice(0),
                    "load_average_before": load_before, "load_average_after": os.getloadavg(),
                    "gpu": (torch.cuda.get_device_name(device) if device.type == "cuda"
                            else None),
                    "gpu_unused": (torch.cuda.get_device_name(0)
                                   if device.type != "cuda" and torch.cuda.is_available()
                                   else None)},
        "config": {"model": "Conv4", "device": str(device), "n_way": N_WAY, "k_shot": K_SHOT,
                   "queries_per_class": QUERIES, "meta_batch": args.meta_batch,
                   "inner_steps": 1, "inner_lr": INNER_LR, "meta_optimizer": "adam",
                   "warmup_rounds": warmup, "rounds": rounds,
                   "eval_episodes": args.eval_episodes, "eval_steps": EVAL_STEPS},
        "flop_counting": (f"FlopCounterMode over one meta-training step of {args.flop_tasks} "
                          f"tasks, scaled to {args.meta_batch}"),
        "notes": NOTES,
        "runs": runs,
        "learn2learn": LEARN2LEARN_NOTE,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(report))
    print(markdown(report))


def lscpu() -> dict[str, str]:
    """``lscpu``'s model name, cores, caches and whether AVX-512 / AMX are present."""
    import subprocess
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return {}
    fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("Flags", "").split()
    keep = ("Model name", "CPU(s)", "Thread(s) per core", "L1d cache", "L2 cache", "L3 cache")
    return {**{k: fields[k] for k in keep if k in fields},
            "isa": " ".join(f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
                            if f in flags) or "none of avx2/avx512/amx"}


NO_GPU = ("none available to this run: the GPU goals (second-order MAML >= 10x higher on a "
          "GPU, a federated Omniglot round with 8 devices sharing one) are not measured; the "
          "CUDA code path is exercised by CPU tests of the same functions with device=\"cpu\" "
          "(tests/test_devices.py), GPU-only tests skip")


def markdown(report: dict) -> str:
    m, c = report["machine"], report["config"]
    lines = [
        "# Meta-training throughput",
        "",
        (f"{report['date']} ({report['mode']} run): {m['cpu']} (lscpu: "
         f"{m['lscpu'].get('Model name', '?')}, {m['lscpu'].get('isa', '?')}; L2 "
         f"{m['lscpu'].get('L2 cache', '?')}, L3 {m['lscpu'].get('L3 cache', '?')}), "
         f"{m['cores']} cores; Python {m['python']}, torch {m['torch']}, higher {m['higher']}."),
        (f"GPU: {m['gpu']}, this run's device (--device {c.get('device', 'cuda')}): every "
         "contender, batch and peak on it, each timed step synchronized."
         if m["gpu"] else
         f"GPU: {m['gpu_unused']}, present but not used by this run (--device cpu)."
         if m.get("gpu_unused") else f"GPU: {NO_GPU}."),
        ((f"The host was busy: other jobs shared its {m['cores']} cores (load average "
          f"{m['load_average_before'][0]:.1f} before, {m['load_average_after'][0]:.1f} after; "
          f"this run at niceness {m['niceness']}), so absolute rates are low and noisy; "
          "compare only ratios, which are paired per round.")
         if m["load_average_before"][0] >= 1 else
         (f"The host was quiet: load average {m['load_average_before'][0]:.1f} before "
          f"({m['load_average_after'][0]:.1f} after, this run's own threads included; "
          f"niceness {m['niceness']}); ratios are paired per round.")),
        (f"Conv4, {c['n_way']}-way {c['k_shot']}-shot, {c['queries_per_class']} queries per "
         f"class, meta-batch {c['meta_batch']}, {c['inner_steps']} inner step (lr "
         f"{c['inner_lr']}), Adam outer step; {c['warmup_rounds']} warm-up + {c['rounds']} "
         f"interleaved rounds, median. Held-out evaluation: {c['eval_episodes']} episodes, "
         f"{c['eval_steps']} steps."),
    ]
    for run in report["runs"]:
        peaks = run["peak_gflop_per_s"]
        gpu = run.get("device", "cpu").startswith("cuda")
        conv, timed = ("cuDNN", "GPU") if gpu else ("oneDNN", "CPU")
        lines += [
            "", f"## {run['threads']} thread{'s' if run['threads'] > 1 else ''}"
            + (f", {run['device']}" if gpu else ""), "",
            (f"Peak: torch.mm 2048^2 float32 {peaks['torch.mm_2048']:.0f} GFLOP/s; "
             f"{conv} GEMM (1x1 conv) {peaks['onednn_gemm']:.0f} GFLOP/s. Rates as median / "
             "best step."), "",
            f"| contender | eps/s | GFLOP/update | GFLOP/s | % of mm peak | % of {conv} peak |",
            "|---|---:|---:|---:|---:|---:|"]
        for name, r in run["contenders"].items():
            lines.append(
                f"| {name} | {r['eps_per_s']:.1f} / {r['eps_per_s_best']:.1f} | "
                f"{r['gflop_per_update']:.0f} | {r['gflop_per_s']:.0f} / "
                f"{r['gflop_per_s_best']:.0f} | {r['pct_mm_peak']:.0f} / "
                f"{r['pct_mm_peak_best']:.0f} | {r['pct_onednn_peak']:.0f} / "
                f"{r['pct_onednn_peak_best']:.0f} |")
        lines += ["", "| held-out evaluation | median s |", "|---|---:|"]
        lines += [f"| {n} | {e['median_s']:.2f} |" for n, e in run["evaluation_s"].items()]
        lines += ["", "| speed ratio: times faster (median of per-round paired ratios) | x |",
                  "|---|---:|"]
        lines += [f"| {k} | {v:.2f} |" for k, v in run["ratios"].items()]
        lines += ["", "Goals: " + "; ".join(f"{g}: {'met' if ok else 'not met'}"
                                             for g, ok in run["goals"].items()) + "."]
        for name, rows in run["profiles"].items():
            lines += ["", f"Profile, {name}: top ops by self {timed} time", "",
                      "| op | self s | calls | % |", "|---|---:|---:|---:|"]
            lines += [f"| {r['op']} | {r['self_s']:.3f} | {r['calls']} | {r['pct']:.0f} |"
                      for r in rows]
    lines += ["", f"learn2learn: {report['learn2learn']}.", ""]
    lines += [f"- {note}" for note in report["notes"]]
    lines += ["",
              "Rerun: `nice python benchmarks/meta_throughput.py` (`--quick`, `--rounds N`, "
              "`--threads 1,2`, `--meta-batch N`, `--device cuda`).", "",
              "Analyses of these and earlier runs (the kernels tried, the one-thread ceiling, "
              "the CPU default, bfloat16), written by hand: `meta_throughput_notes.md` beside "
              "this file. A rerun rewrites this file only.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
