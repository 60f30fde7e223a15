"""The ONNX export on held-out episodes: head-only adaptation in numpy + onnxruntime
against fedmeta's own adaptation, and its sizes and latencies.

For each run folder (``fedmeta train --out DIR``) it exports the checkpoint with
``fedmeta.export.onnx_export`` and, on ``--episodes`` seeded held-out episodes, scores the
query set after adaptation by

    fedmeta      the checkpoint's own learner (``meta.eval_steps`` steps)
    ANIL         fedmeta's head-only adaptation (``fedmeta.meta.ANIL``) of the same weights
    ONNX         ``HeadAdapter``: body.onnx once on the support set, numpy head steps,
                 body.onnx + head.onnx on the query set (onnxruntime, one thread)

with means and 95% CIs, the largest output difference ONNX - ANIL and how often their
predicted classes agree. Latencies (medians, one thread): the support features, the head
steps, a query batch.

    python benchmarks/edge_onnx.py --run runs/edge_omniglot_anil --run runs/edge_sinusoid
"""

from __future__ import annotations

import argparse
import datetime
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime
import torch

from fedmeta import config
from fedmeta.checkpoint import Checkpoint
from fedmeta.export.onnx_device import HeadAdapter, adapt_head
from fedmeta.export.onnx_export import export_onnx
from fedmeta.meta import build_learner
from fedmeta.meta.base import task_accuracy, task_loss
from fedmeta.meta.evaluation import mean_ci95
from fedmeta.models import build_model
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
    anil = build_learner("anil", build_model(ck.model, **ck.model_kwargs),
                         inner_lr=ck.learner_kwargs["inner_lr"])
    steps = int(ck.learner_kwargs["eval_steps"])
    regression = ck.model == "mlp"
    rng = np.random.default_rng(seed)
    scores: dict[str, list[float]] = {"fedmeta": [], "anil": [], "onnx": []}
    worst, agree = 0.0, []
    with tempfile.TemporaryDirectory() as folder:
        info = export_onnx(ck, folder)
        device = HeadAdapter(folder)
        for _ in range(episodes):
            ep = tasks.test.sample(rng)
            own = learner.predict(learner.adapt(params, ep.support_x, ep.support_y, steps),
                                  ep.query_x).detach()
            head = anil.predict(anil.adapt(params, ep.support_x, ep.support_y, steps),
                                ep.query_x).detach()
            device.adapt(ep.support_x.numpy(), ep.support_y.numpy(), steps)
            ours = torch.from_numpy(device.predict(ep.query_x.numpy()))
            for name, out in (("fedmeta", own), ("anil", head), ("onnx", ours)):
                scores[name].append(score(out, ep.query_y, regression))
            worst = max(worst, float((ours - head).abs().max()))
            if not regression:
                agree.append(float((ours.argmax(1) == head.argmax(1)).float().mean()))
        sx, sy, qx = ep.support_x.numpy(), ep.support_y.numpy(), ep.query_x.numpy()
        features = device.features(sx)
        y = sy.astype(np.int64) if not regression else sy.astype(np.float32)
        features_ms = median_ms(lambda: device.features(sx), 200)
        head_ms = median_ms(lambda: adapt_head(features, y, device.meta_weight,
                                               device.meta_bias, np.float32(device.lr),
                                               steps), 200)
        query_ms = median_ms(lambda: device.predict(qx), 200)
    summary = {name: dict(zip(("mean", "ci95"), mean_ci95(np.array(v))))
               for name, v in scores.items()}
    return {"run": str(run), "task": ck.task.get("kind"), "model": ck.model,
            "algorithm": ck.algorithm, "metric": "MSE" if regression else "accuracy",
            "episodes": episodes, "adaptation_steps": steps, "support": len(sx),
            "query": len(qx), "scores": summary, "max_abs_onnx_minus_anil": worst,
            "class_agreement": float(np.mean(agree)) if agree else None,
            "bytes": info["bytes"], "features_ms": features_ms, "head_steps_ms": head_ms,
            "query_ms": query_ms}


def markdown(rows: list[dict[str, Any]], meta: dict[str, Any]) -> str:
    def cell(s: dict[str, float], digits: int) -> str:
        return f"{s['mean']:.{digits}f} ± {s['ci95']:.{digits}f}"

    lines = ["# The meta-model on the edge: ONNX export, head-only adaptation on the device",
             "", f"{meta['date']}, torch {meta['torch']}, onnxruntime {meta['onnxruntime']}, "
             f"{meta['cpu']}, one CPU thread, latencies are medians. Written by "
             f"`benchmarks/edge_onnx.py {meta['args']}`; see docs/deployment.md.", "",
             "| task (model, learner) | metric | episodes | fedmeta (own adaptation) | "
             "fedmeta ANIL (head only) | ONNX + numpy (head only) | max \\|ONNX - ANIL\\| "
             "output | same class |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, d = r["scores"], 4 if r["metric"] == "MSE" else 3
        same = "-" if r["class_agreement"] is None else f"{100 * r['class_agreement']:.2f}%"
        lines.append(f"| {r['task']} ({r['model']}, {r['algorithm']}) | {r['metric']} | "
                     f"{r['episodes']} | {cell(s['fedmeta'], d)} | {cell(s['anil'], d)} | "
                     f"{cell(s['onnx'], d)} | {r['max_abs_onnx_minus_anil']:.2g} | {same} |")
    lines += ["", "| model | body.onnx | head.onnx + head.npz | support features (once) | "
              "head steps (numpy) | query batch |", "|---|---|---|---|---|---|"]
    for r in rows:
        b = r["bytes"]
        lines.append(f"| {r['model']} ({r['support']} support, {r['query']} query, "
                     f"{r['adaptation_steps']} steps) | {b['body.onnx'] / 1024:.1f} KiB | "
                     f"{(b['head.onnx'] + b['head.npz']) / 1024:.1f} KiB | "
                     f"{r['features_ms']:.2f} ms | {r['head_steps_ms']:.3f} ms | "
                     f"{r['query_ms']:.2f} ms |")
    return "\n".join(lines) + "\n"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--run", dest="runs", type=Path, action="append", required=True,
                   help="a fedmeta train output folder (repeatable)")
    p.add_argument("--episodes", type=int, default=100)
    p.add_argument("--seed", type=int, default=123)
    p.add_argument("--out", type=Path, default=RESULTS / "edge_onnx")
    args = p.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    rows = [bench_run(run, args.episodes, args.seed) for run in args.runs]
    meta = {"date": datetime.date.today().isoformat(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "cpu": cpu_name(),
            "args": " ".join(f"--run {run}" for run in args.runs) + f" --episodes {args.episodes}"}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps({"meta": meta, "runs": rows},
                                                        indent=2) + "\n")
    args.out.with_suffix(".md").write_text(markdown(rows, meta))
    print(markdown(rows, meta))


if __name__ == "__main__":
    main()
