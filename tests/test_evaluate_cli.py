"""``fedmeta evaluate``: its JSON against direct ``learner.evaluate`` calls, and its errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import fedmeta.cli
from episode_images import BROKEN, make_generic, make_runs, save_checkpoint, zip_folder
from fedmeta.checkpoint import Checkpoint
from fedmeta.meta.evaluation import mean_ci95
from fedmeta.models import MLP
from fedmeta.tasks.episode import stack_episodes

FEDMETA = Path(sys.executable).with_name("fedmeta")


def evaluate(capsys, *args: object) -> tuple[int, dict | str]:
    """Run ``fedmeta evaluate`` in-process: (exit code, parsed JSON or the stderr line)."""
    code = fedmeta.cli.main(["evaluate", *map(str, args)])
    out, err = capsys.readouterr()
    return code, json.loads(out) if code == 0 else err


def direct(checkpoint: Path, episodes: dict, steps: int | None = None) -> dict[str, list]:
    """Per-episode scores by calling the checkpoint's learner on each episode itself."""
    saved = Checkpoint.load(checkpoint)
    learner = saved.learner()
    scores = [learner.evaluate(saved.params, stack_episodes([e]), steps)
              for e in episodes.values()]
    return {m: [float(s[m][0]) for s in scores] for m in scores[0]}


@pytest.mark.parametrize("steps", [None, 3])
def test_json_equals_scores_computed_directly(tmp_path, capsys, steps):
    episodes = make_generic(tmp_path / "eps", episodes=3)
    checkpoint = save_checkpoint(tmp_path / "maml.pt", "maml", n_way=3, inner_lr=0.5,
                                 eval_steps=2)
    extra = [] if steps is None else ["--steps", steps]
    code, result = evaluate(capsys, "--checkpoint", checkpoint, "--episodes",
                            tmp_path / "eps", *extra)
    assert code == 0
    want = direct(checkpoint, episodes, steps)
    accuracy, ci95 = mean_ci95(np.array(want["post_acc"]))
    assert result["accuracy"] == pytest.approx(accuracy)
    assert result["ci95"] == pytest.approx(ci95)
    assert result["pre_accuracy"] == pytest.approx(np.mean(want["pre_acc"]))
    assert result["loss"] == pytest.approx(np.mean(want["post_loss"]))
    assert result["pre_loss"] == pytest.approx(np.mean(want["pre_loss"]))
    assert {k: result[k] for k in ("episodes", "queries", "algorithm", "layout", "steps")} == {
        "episodes": 3, "queries": 18, "algorithm": "maml", "layout": "generic",
        "steps": 2 if steps is None else steps}
    assert 0 <= result["accuracy"] <= 1 and result["ci95"] >= 0


def test_more_steps_change_the_adapted_scores(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=2)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "maml", n_way=3, inner_lr=0.5)
    one = evaluate(capsys, "--checkpoint", checkpoint, "--episodes", tmp_path / "eps")[1]
    five = evaluate(capsys, "--checkpoint", checkpoint, "--episodes", tmp_path / "eps",
                    "--steps", 5)[1]
    assert five["pre_loss"] == pytest.approx(one["pre_loss"])
    assert five["loss"] < one["loss"]


@pytest.mark.parametrize("form", ["folder", "zip"])
def test_protonet_scores_official_runs_perfectly_when_items_copy_class_images(
        tmp_path, capsys, form):
    """Test items are the class images in another order, so query and support batches have
    the same batch-norm statistics: with the right labels a ProtoNet, even untrained, puts
    each item at distance zero from its own prototype."""
    make_runs(tmp_path / "all_runs", runs=3, ways=5, prefixed=form == "zip")
    path = tmp_path / "all_runs"
    if form == "zip":
        path = zip_folder(path, tmp_path / "all_runs.zip", top="all_runs")
    checkpoint = save_checkpoint(tmp_path / "proto.pt", "protonet", n_way=5)
    code, result = evaluate(capsys, "--checkpoint", checkpoint, "--episodes", path)
    assert code == 0
    assert result["layout"] == "omniglot-runs" and result["episodes"] == 3
    assert result["queries"] == 15 and result["algorithm"] == "protonet"
    assert result["accuracy"] == 1.0 and result["ci95"] == 0.0
    assert result["pre_accuracy"] is None and result["steps"] is None


def test_one_episode_has_no_confidence_interval(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=1)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "reptile", n_way=3)
    code, result = evaluate(capsys, "--checkpoint", checkpoint, "--episodes", tmp_path / "eps")
    assert code == 0 and result["episodes"] == 1 and result["ci95"] is None
    assert 0 <= result["accuracy"] <= 1 and 0 <= result["pre_accuracy"] <= 1


def test_per_episode_csv_has_one_row_per_episode(tmp_path, capsys):
    episodes = make_generic(tmp_path / "eps", episodes=3)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "fomaml", n_way=3)
    csv = tmp_path / "out" / "rows.csv"
    code, result = evaluate(capsys, "--checkpoint", checkpoint, "--episodes", tmp_path / "eps",
                            "--per-episode", csv)
    assert code == 0
    rows = pd.read_csv(csv)
    assert rows["episode"].tolist() == ["ep00", "ep01", "ep02"]
    assert rows[["n_way", "support", "queries"]].values.tolist() == [[3, 6, 6]] * 3
    assert rows["post_acc"].tolist() == pytest.approx(direct(checkpoint, episodes)["post_acc"])
    assert rows["post_acc"].mean() == pytest.approx(result["accuracy"])


def test_a_head_of_another_class_count_cannot_score_the_episodes(tmp_path, capsys):
    make_runs(tmp_path / "runs", runs=2, ways=4)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "anil", n_way=5)
    code, err = evaluate(capsys, "--checkpoint", checkpoint, "--episodes", tmp_path / "runs")
    assert code == 2
    assert "episode run01: has 4 classes but the checkpoint's anil model classifies 5" in err


def _one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2
    assert err.startswith("fedmeta evaluate: error: ") and err.count("\n") == 1, err
    for needle in needles:
        assert needle in err


@pytest.mark.parametrize("case", sorted(BROKEN))
def test_bad_episodes_exit_2_with_one_line_naming_the_path(tmp_path, capsys, case):
    path, message = BROKEN[case](tmp_path)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "protonet")
    _one_line_error(*evaluate(capsys, "--checkpoint", checkpoint, "--episodes", path), message)


def test_a_missing_checkpoint_exits_2(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=1)
    _one_line_error(*evaluate(capsys, "--checkpoint", tmp_path / "none.pt", "--episodes",
                              tmp_path / "eps"), "none.pt: no such file")


def test_a_file_that_is_no_checkpoint_exits_2_naming_it(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=1)
    code, err = evaluate(capsys, "--checkpoint", tmp_path / "eps/ep00/query/a/00.png",
                         "--episodes", tmp_path / "eps")
    assert code == 2 and err.startswith("fedmeta evaluate: error: checkpoint ")
    assert "00.png: not a readable checkpoint" in err


def test_a_file_that_is_no_checkpoint_gets_a_one_line_message(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=1)
    _one_line_error(*evaluate(capsys, "--checkpoint", tmp_path / "eps/ep00/query/a/00.png",
                              "--episodes", tmp_path / "eps"), "not a readable checkpoint")


def test_a_checkpoint_of_a_model_that_takes_no_images_exits_2(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=1)
    model = MLP()
    Checkpoint("maml", "mlp", {}, {}, dict(model.named_parameters()),
               {"kind": "sinusoid"}).save(tmp_path / "sine.pt")
    _one_line_error(*evaluate(capsys, "--checkpoint", tmp_path / "sine.pt", "--episodes",
                              tmp_path / "eps"), "sine.pt: its 'mlp' model does not take")


def test_zero_steps_exit_2(tmp_path, capsys):
    make_generic(tmp_path / "eps", episodes=1)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "maml", n_way=3)
    _one_line_error(*evaluate(capsys, "--checkpoint", checkpoint, "--episodes",
                              tmp_path / "eps", "--steps", 0), "steps=0")


def test_console_script_prints_one_json_object(tmp_path):
    make_runs(tmp_path / "runs", runs=2, ways=5)
    checkpoint = save_checkpoint(tmp_path / "m.pt", "protonet")
    done = subprocess.run([str(FEDMETA), "evaluate", "--checkpoint", str(checkpoint),
                           "--episodes", str(tmp_path / "runs")],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("\n") == 1 and json.loads(done.stdout)["accuracy"] == 1.0
