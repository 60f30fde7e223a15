"""The meta-model on the edge: exported program size and adaptation latency, and int8
post-training quantisation of the adapted model (size, query latency, quality change).

For each run folder (``fedmeta train --out DIR``: checkpoint.pt + config.json) it draws
``--episodes`` held-out episodes (seeded) and on each: adapts the meta-model with fedmeta
(``meta.eval_steps`` steps), scores the query set with

    float32      fedmeta's model: batch-norm on the query set's own statistics (Conv4)
    float32 BN   the adapted model with batch-norm frozen to the support set's statistics
    int8         that model quantised (Conv4: static FX, x86, calibrated on the support set;
                 MLP: dynamic int8 linear layers; fedmeta.export.quantize)

and reports means with 95% CIs and the paired change int8 - float32 BN. Everything runs on
one CPU thread (an edge device has few cores); latencies are medians: the exported
TorchScript program adapting on one support set, and one query-set forward pass per model.

    python benchmarks/edge_export.py --run runs/edge_omniglot --run runs/edge_sinusoid
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedmeta import config
from fedmeta.checkpoint import Checkpoint
from fedmeta.export import export
from fedmeta.export.quantize import inference_model, quantize, serialized_bytes
from fedmeta.meta.base import task_accuracy, task_loss
from fedmeta.meta.evaluation import mean_ci95
from fedmeta.tasks.factory import build_tasks
from timing import median_ms  # benchmarks/timing.py
from host import cpu_name  # benchmarks/host.py, beside this script

RESULTS = Path(__file__).resolve().parent / "results"





def score(output: torch.Tensor, target: torch.Tensor, regression: bool) -> float:
    return float(task_loss(output, target) if regression else task_accuracy(output, target))


def bench_run(run: Path, episodes: int, seed: int) -> dict[str, Any]:
    ck = Checkpoint.load(run / "checkpoint.pt")
    cfg = config.from_dict(json.loads((run / "config.json").read_text()))
    tasks = build_tasks(cfg.task, seed=cfg.train.seed)
    learner, params = ck.learner(), dict(ck.params)
    steps = int(ck.learner_kwargs["eval_steps"])
    regression = ck.model == "mlp"
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"float32": [], "float32_bn": [], "int8": []}
    for _ in range(episodes):
        ep = tasks.test.sample(rng)
        fast = learner.adapt(params, ep.support_x, ep.support_y, steps)
        fast = {k: v.detach() for k, v in fast.items()}
        with torch.no_grad():
            frozen = inference_model(ck, fast, ep.support_x)
            scores["float32"].append(score(learner.predict(fast, ep.query_x), ep.query_y,
                                           regression))
            scores["float32_bn"].append(score(frozen(ep.query_x), ep.query_y, regression))
            scores["int8"].append(score(quantize(frozen, ep.support_x)(ep.query_x), ep.query_y,
                                        regression))

    # sizes, and latencies on the last episode
    with tempfile.TemporaryDirectory() as folder:
        info = export(ck, folder)
        program = torch.jit.load(str(Path(folder) / info["program"]))
        adapt_ms = median_ms(lambda: program.adapt(ep.support_x, ep.support_y, steps), 20)
    quantized = quantize(frozen, ep.support_x)
    with torch.no_grad():
        float_ms = median_ms(lambda: frozen(ep.query_x), 200)
        int8_ms = median_ms(lambda: quantized(ep.query_x), 200)
    metric = "MSE" if regression else "accuracy"
    summary = {name: dict(zip(("mean", "ci95"), mean_ci95(np.array(v))))
               for name, v in scores.items()}
    change = np.array(scores["int8"]) - np.array(scores["float32_bn"])
    summary["int8_minus_float32_bn"] = dict(zip(("mean", "ci95"), mean_ci95(change)))
    return {"run": str(run), "task": ck.task.get("kind"), "model": ck.model,
            "algorithm": ck.algorithm, "metric": metric, "episodes": episodes,
            "adaptation_steps": steps, "support": int(len(ep.support_x)),
            "query": int(len(ep.query_x)), "scores": summary,
            "program_bytes": info["program_bytes"], "float32_bytes": serialized_bytes(frozen),
            "int8_bytes": serialized_bytes(quantized), "adapt_ms": adapt_ms,
            "float32_query_ms": float_ms, "int8_query_ms": int8_ms}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def cell(s: dict[str, float], digits: int) -> str:
        return f"{s['mean']:.{digits}f} ± {s['ci95']:.{digits}f}"

    lines = ["# The meta-model on the edge: export and int8 quantisation", "",
             f"{meta['date']}, torch {meta['torch']} ({meta['quantized_engine']} int8 "
             f"kernels), {meta['cpu']}, all on one CPU thread, latencies are medians. Written "
             f"by `benchmarks/edge_export.py {meta['args']}`; see docs/deployment.md.", "",
             "| task (model, learner) | metric | episodes | float32 (fedmeta) | float32, BN "
             "frozen to support | int8 | int8 - float32 BN (paired) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        s, d = r["scores"], 4 if r["metric"] == "MSE" else 3
        lines.append(f"| {r['task']} ({r['model']}, {r['algorithm']}) | {r['metric']} | "
                     f"{r['episodes']} | {cell(s['float32'], d)} | {cell(s['float32_bn'], d)} "
                     f"| {cell(s['int8'], d)} | {cell(s['int8_minus_float32_bn'], d)} |")
    lines += ["", "| model | TorchScript program | adapted weights float32 | int8 | "
              "adaptation on device (program) | query pass float32 | int8 |",
              "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['model']} ({r['support']} support, {r['query']} query, "
                     f"{r['adaptation_steps']} steps) | {r['program_bytes'] / 1024:.1f} KiB | "
                     f"{r['float32_bytes'] / 1024:.1f} KiB | {r['int8_bytes'] / 1024:.1f} KiB "
                     f"({r['float32_bytes'] / r['int8_bytes']:.1f}x smaller) | "
                     f"{r['adapt_ms']:.1f} ms | {r['float32_query_ms']:.2f} ms | "
                     f"{r['int8_query_ms']:.2f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", dest="runs", type=Path, action="append", required=True,
                   help="a fedmeta train output folder (repeatable)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", type=Path, default=RESULTS / "edge_export")
    args = p.parse_args()
    torch.set_num_threads(1)  # an edge device has few cores; and stable timings
    torch.manual_seed(args.seed)
    rows = [bench_run(run, args.episodes, args.seed) for run in args.runs]
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "cpu": cpu_name(),
            "quantized_engine": torch.backends.quantized.engine,
            "args": " ".join(f"--run {run}" for run in args.runs) + f" --episodes {args.episodes}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows},
                                                        indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
