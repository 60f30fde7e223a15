"""benchmarks/meta_throughput.py's device plumbing, on the CPU (the same code runs with
``--device cuda`` on a GPU): batches and steps on the device asked for, timing that waits
for queued work, GPU-labelled reports, and arguments refused with a clear error."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))
import meta_throughput as mt  # noqa: E402  (benchmarks/ is not a package)


def test_batches_and_steps_run_on_the_device_asked_for() -> None:
    device = torch.device("cpu")
    batch = mt.synthetic_batch(2, device=device)
    assert batch.support_x.device == device and batch.query_y.device == device
    model = mt.Conv4(n_way=mt.N_WAY).to(device)
    for algorithm in mt.LEARNERS:
        for batched in (False, True):
            metrics = mt.ours_step(algorithm, mt.copy.deepcopy(model), batched)(batch)
            assert all(torch.isfinite(torch.tensor(v)) for v in metrics.values())
    assert mt.device_of(model) == device
    assert mt.matmul_peak(64, 1, device) > 0 and mt.onednn_gemm_peak(1, device) > 0


def test_the_profile_lists_the_ops_by_self_time() -> None:
    a = torch.randn(256, 256)
    rows = mt.top_kernels(lambda: a @ a, rows=3)
    assert rows and rows[0]["op"] in {"aten::mm", "aten::matmul"}
    assert [r["self_s"] for r in rows] == sorted((r["self_s"] for r in rows), reverse=True)
    assert 0 < sum(r["pct"] for r in rows) <= 100 + 1e-9


def test_a_gpu_run_is_reported_as_one() -> None:
    run = {"threads": 1, "device": "cuda:0",
           "peak_gflop_per_s": {"torch.mm_2048": 50_000.0, "onednn_gemm": 40_000.0},
           "contenders": {}, "evaluation_s": {}, "ratios": {"batched/maml vs higher/maml": 12.0},
           "goals": {g: True for g in mt.GPU_GOALS},
           "profiles": {"batched/maml (4 tasks)": [{"op": "aten::cudnn_convolution",
                                                    "self_s": 0.001, "calls": 4, "pct": 50.0}]}}
    report = {"date": "now", "mode": "quick",
              "machine": {"cpu": "x", "lscpu": {}, "cores": 16, "python": "3.12",
                          "torch": "2.11", "higher": "0.2.1", "niceness": 0,
                          "load_average_before": (0.1,), "load_average_after": (0.2,),
                          "gpu": "NVIDIA H200", "gpu_unused": None},
              "config": {"device": "cuda:0", "n_way": 5, "k_shot": 1, "queries_per_class": 15,
                         "meta_batch": 8, "inner_steps": 1, "inner_lr": 0.4,
                         "warmup_rounds": 1, "rounds": 3, "eval_episodes": 100,
                         "eval_steps": 5},
              "notes": [], "runs": [run], "learn2learn": "-"}
    text = mt.markdown(report)
    assert "GPU: NVIDIA H200, this run's device (--device cuda:0)" in text
    assert "## 1 thread, cuda:0" in text and "% of cuDNN peak" in text
    assert "top ops by self GPU time" in text
    assert "maml >= 10x higher on the GPU (fedmeta Conv4): met" in text
    assert "none available to this run" not in text
    assert "`meta_throughput_notes.md` beside this file" in text


@pytest.mark.parametrize("args, message", [
    (["--threads", "0"], "--threads 0: comma-separated integers >= 1"),
    (["--threads", "one"], "--threads one: comma-separated integers >= 1"),
    (["--meta-batch", "0"], "--meta-batch 0: an integer >= 1"),
    (["--rounds", "-1"], "--rounds -1: an integer >= 1"),
    (["--device", "tpu"], "--device: "),
])
def test_bad_arguments_are_refused_naming_the_option(args: list[str], message: str,
                                                     tmp_path: Path) -> None:
    out = tmp_path / "report"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "meta_throughput.py"), *args,
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and message in done.stderr
    assert not list(tmp_path.iterdir())  # nothing written


def test_a_report_points_to_the_analyses_it_does_not_rewrite() -> None:
    notes = BENCHMARKS / "results" / "meta_throughput_notes.md"
    assert notes.is_file() and "one-thread ceiling" in notes.read_text()
    report = (BENCHMARKS / "results" / "meta_throughput.md").read_text()
    assert "`meta_throughput_notes.md`" in report and "## 2026-12-01" not in report
