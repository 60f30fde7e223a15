"""Structured channel pruning of Conv4 (``fedmeta.export.prune``) and ``fedmeta compress``:
the pruned network computes what the original did when the removed channels are dead, the
criteria keep the channels they should, and the command writes its table, rows and
checkpoints on real held-out Omniglot episodes (with and without a distilled student)
without overwriting earlier results, and refuses bad student settings by name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch.func import functional_call

from fedmeta import config
from fedmeta.checkpoint import Checkpoint
from fedmeta.cli import main
from fedmeta.errors import ConfigError
from fedmeta.export.prune import prune_conv4
from fedmeta.meta import build_learner
from fedmeta.models import Conv4


def random_conv4(channels: int = 8) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    params = {k: v.detach().clone() for k, v in Conv4(channels=channels).named_parameters()}
    for b in range(4):  # distinct, non-trivial batch-norm scales and shifts
        params[f"body.{b}.1.weight"] = torch.rand(channels) + 0.5
        params[f"body.{b}.1.bias"] = torch.randn(channels) * 0.1
    return params


@pytest.mark.parametrize("criterion", ["bn", "norm"])
def test_pruning_dead_channels_leaves_the_function_unchanged(criterion: str) -> None:
    params = random_conv4()
    dead = {0: [1, 6], 1: [0, 3], 2: [2, 7], 3: [4, 5]}
    for b, channels in dead.items():
        for c in channels:  # a dead channel: output 0 whatever its input
            params[f"body.{b}.1.weight"][c] = 0.0
            params[f"body.{b}.1.bias"][c] = 0.0
            if criterion == "norm":  # and the smallest filter
                params[f"body.{b}.0.weight"][c] *= 1e-3
    pruned = prune_conv4(params, 6, criterion)
    assert pruned["body.0.0.weight"].shape == (6, 1, 3, 3)
    assert pruned["body.1.0.weight"].shape == (6, 6, 3, 3)
    assert pruned["head.weight"].shape == (5, 6)
    kept3 = [c for c in range(8) if c not in dead[3]]
    torch.testing.assert_close(pruned["head.weight"], params["head.weight"][:, kept3])
    x = torch.rand(10, 1, 28, 28)
    original = functional_call(Conv4(channels=8), params, (x,))
    small = functional_call(Conv4(channels=6), pruned, (x,))
    torch.testing.assert_close(small, original, rtol=1e-5, atol=1e-5)


def test_pruning_keeps_the_largest_scores_and_refuses_bad_widths() -> None:
    params = random_conv4()
    params["body.2.1.weight"] = torch.tensor([0.9, -3.0, 0.1, 2.0, -0.2, 0.3, 1.5, 0.05])
    pruned = prune_conv4(params, 3, "bn")
    torch.testing.assert_close(pruned["body.2.1.weight"], torch.tensor([-3.0, 2.0, 1.5]))
    for keep in (0, 9, 2.5, True):
        with pytest.raises(ConfigError, match="keep"):
            prune_conv4(params, keep)
    with pytest.raises(ConfigError, match="criterion"):
        prune_conv4(params, 3, "random")


def omniglot_run(tmp_path: Path, omniglot_dir: Path, algorithm: str) -> Path:
    """A run folder: the tiny Omniglot config and an untrained 8-channel Conv4 checkpoint."""
    cfg = config.load(None, ["task.kind=omniglot", f"task.data_dir={omniglot_dir}",
                             "task.k_shot=1", "task.q_query=2", f"meta.algorithm={algorithm}",
                             "meta.eval_steps=2", "train.meta_batch=2"])
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps(cfg.to_dict()))
    kwargs = {"n_way": 5, "channels": 8}
    learner = build_learner(algorithm, Conv4(**kwargs), inner_lr=0.4, eval_steps=2)
    Checkpoint(algorithm, "conv4", kwargs, {"inner_lr": 0.4, "eval_steps": 2},
               learner.init_params(), {"kind": "omniglot"}).save(run / "checkpoint.pt")
    return run


def test_compress_writes_a_table_of_every_stage(tmp_path: Path, omniglot_dir: Path,
                                                capsys: pytest.CaptureFixture) -> None:
    run = omniglot_run(tmp_path, omniglot_dir, "fomaml")
    args = ["compress", "--run", str(run), "--out", str(tmp_path / "out"), "--keep", "4",
            "--finetune", "2", "--episodes", "4"]
    assert main(args) == 0
    rows = json.loads((tmp_path / "out" / "compress.json").read_text())
    assert [r["params"] for r in rows][:3] == [rows[0]["params"]] + 2 * [rows[1]["params"]]
    assert rows[1]["params"] < rows[0]["params"] and rows[3]["bytes"] < rows[0]["bytes"]
    assert rows[0]["change"] == 0 and all(r["episodes"] == 4 for r in rows)
    assert all(r["adaptation"] == "full network" for r in rows)  # fomaml: every layer
    assert rows[1]["flops_adapt"] < rows[0]["flops_adapt"] == rows[3]["flops_adapt"]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)
    assert all(r["loses_over_2_points"] == (r["change"] < -0.02) for r in rows)
    table = (tmp_path / "out" / "compress.md").read_text()
    assert table.count("\n") == 2 + 5 and "pruned 4/8 ch (bn) + 2 meta-updates" in table
    tuned = Checkpoint.load(tmp_path / "out" / "checkpoint.pt")
    assert tuned.model_kwargs["channels"] == 4
    capsys.readouterr()
    assert main(args) == 2  # earlier results are not overwritten
    assert "not overwritten" in capsys.readouterr().err


def test_compress_with_distillation_adds_the_student_and_its_int8(
        tmp_path: Path, omniglot_dir: Path) -> None:
    run = omniglot_run(tmp_path, omniglot_dir, "anil")
    out = tmp_path / "out"
    assert main(["compress", "--run", str(run), "--out", str(out), "--keep", "4",
                 "--student-channels", "2", "--distil", "2", "--finetune", "1",
                 "--episodes", "4"]) == 0
    rows = json.loads((out / "compress.json").read_text())
    assert len(rows) == 7
    student, student8 = rows[5], rows[6]
    assert student["stage"] == ("student 2/8 ch (bn-pruned init) + 2 distillation updates "
                                "(T=4, alpha=0.5)")
    assert student8["stage"] == "int8 of " + student["stage"]
    assert student["params"] == student8["params"] < rows[1]["params"]
    assert student8["bytes"] < student["bytes"] < rows[1]["bytes"]
    assert student["flops_query"] < rows[1]["flops_query"]
    assert all(r["adaptation"] == "head-only" for r in rows)  # anil
    assert all(r["loses_over_2_points"] == (r["change"] < -0.02) for r in rows)
    assert (out / "compress.md").read_text().count("\n") == 2 + 7
    saved = Checkpoint.load(out / "student.pt")
    assert saved.model_kwargs["channels"] == 2 and saved.algorithm == "anil"


def test_compress_without_distillation_and_bad_student_settings(
        tmp_path: Path, omniglot_dir: Path, capsys: pytest.CaptureFixture) -> None:
    run = omniglot_run(tmp_path, omniglot_dir, "fomaml")
    out = tmp_path / "out"
    base = ["compress", "--run", str(run), "--out", str(out), "--keep", "4", "--finetune", "1",
            "--episodes", "2"]
    refused = [(["--distil", "1", "--student-channels", "0"],
                "--student-channels=0 is not allowed: expected an integer in [1, 8]"),
               (["--distil", "1", "--student-channels", "9"],
                "--student-channels=9 is not allowed: expected an integer in [1, 8]"),
               (["--student-channels", "2"],
                "--student-channels=2 is not allowed: expected only with --distil N > 0"),
               (["--distil", "-1"], "--distil=-1 is not allowed: expected an integer >= 0"),
               (["--distil", "1", "--alpha", "2"], "--alpha=2.0 is not allowed"),
               (["--distil", "1", "--temperature", "0"], "--temperature=0.0 is not allowed")]
    for extra, message in refused:
        capsys.readouterr()
        assert main(base + extra) == 2
        assert message in capsys.readouterr().err
        assert not out.exists()
    assert main(base + ["--distil", "0"]) == 0
    rows = json.loads((out / "compress.json").read_text())
    assert len(rows) == 5 and not any("student" in r["stage"] for r in rows)
    assert not (out / "student.pt").exists()
