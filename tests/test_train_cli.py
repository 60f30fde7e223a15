"""``fedmeta train``: outputs of a small run, and one clear line for each kind of bad input."""

from __future__ import annotations

import json
import zipfile

import pytest

from fedmeta.checkpoint import Checkpoint
from fedmeta.cli import main


def test_small_sinusoid_run_writes_checkpoint_summary_and_config(tmp_path, capsys):
    code = main(["train", "--set", "train.iterations=30", "--set", "train.eval_episodes=20",
                 "--set", "meta.algorithm=fomaml", "--out", str(tmp_path), "--no-progress"])
    assert code == 0
    printed = json.loads(capsys.readouterr().out)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert printed == summary and summary["algorithm"] == "fomaml"
    assert summary["episodes"] == 20 and summary["post_loss"] > 0
    assert json.loads((tmp_path / "config.json").read_text())["train"]["iterations"] == 30
    assert Checkpoint.load(tmp_path / "checkpoint.pt").learner().name == "fomaml"


def _error(capsys, *args: str) -> str:
    code = main(["train", *args])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and "Traceback" not in err
    return err


@pytest.mark.parametrize("override, names", [
    ("meta.algorithm=mamal", ["meta.algorithm", "'mamal'", "anil", "reptile"]),
    ("task.k_shot=0", ["task.k_shot", ">= 1"]),
    ("task.kind=cifar", ["task.kind", "omniglot", "sinusoid"]),
    ("train.itterations=5", ["train.itterations", "iterations"]),
    ("meta.inner_lr=-0.1", ["meta.inner_lr", "> 0"]),
])
def test_bad_config_values_name_field_and_allowed(capsys, override, names):
    err = _error(capsys, "--set", override)
    for name in names:
        assert name in err


def test_missing_data_path_is_named(capsys, tmp_path):
    missing = tmp_path / "nowhere"
    err = _error(capsys, "--set", "task.kind=omniglot", "--set", f"task.data_dir={missing}")
    assert str(missing) in err


def test_a_zip_that_is_not_omniglot_is_named(capsys, tmp_path):
    bogus = tmp_path / "images_background.zip"
    with zipfile.ZipFile(bogus, "w") as z:
        z.writestr("notes/readme.txt", "hello")
    err = _error(capsys, "--set", "task.kind=omniglot", "--set", f"task.data_dir={bogus}")
    assert str(bogus) in err


def test_impossible_episodes_for_the_data_say_what_is_needed(capsys, omniglot_dir):
    err = _error(capsys, "--set", "task.kind=omniglot", "--set", f"task.data_dir={omniglot_dir}",
                 "--set", "task.k_shot=15", "--set", "task.q_query=10")
    assert "15-shot" in err and "k_shot + q_query = 25" in err
