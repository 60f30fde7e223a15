"""End to end on Flower's simulation engine (Ray): ``fedmeta run`` writes every output,
``fedmeta.simulate`` gives the same table, byte for byte (under Flower's own message pump and
pool, two Ray workers holding one message each; the CLI under fedmeta's indexed pump, one
worker holding two, ``simulation.worker_queue``, pinned to a core, ``pin_workers``), and Ray
is shut down after each run; ``flwr run .`` runs the same app on a local SuperLink."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from local_flwr import ROOT, flwr_run

TINY = """\
[train]
seed = 4

[federation]
num_devices = 4
num_held_out = 1
rounds = 3
eval_every = 2
meta_batch = 4
eval_episodes = 5

[simulation]
num_cpus = 1
ray_cpus = 2
"""
TINY_RUN_CONFIG = ("federation.num_devices=4 federation.num_held_out=1 federation.rounds=3 "
                   "federation.eval_every=2 federation.meta_batch=4 federation.eval_episodes=5 "
                   "train.seed=4")


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, pd.DataFrame]:
    """The tiny config run twice: by the CLI (a subprocess, ``simulation.dispatch``'s
    default pump, one Ray worker with two messages queued) and by ``fedmeta.simulate``
    (Flower's pump and pool, two workers)."""
    import ray

    import fedmeta

    folder = tmp_path_factory.mktemp("runs")
    config = folder / "tiny.toml"
    config.write_text(TINY.replace("ray_cpus = 2", "ray_cpus = 1") + "pin_workers = true\n")
    cli = subprocess.run([sys.executable, "-m", "fedmeta", "run", "--config", str(config),
                          "--out", str(folder / "cli"), "--no-progress"],
                         capture_output=True, text=True, timeout=300)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "post-adaptation MSE" in cli.stdout
    flower_pump = folder / "tiny_flower_pump.toml"
    flower_pump.write_text(TINY + 'dispatch = "flower"\nworker_queue = 1\nworker_batch = 1\n')
    frame = fedmeta.simulate(flower_pump, folder / "api", progress=False)
    assert not ray.is_initialized()  # shut down after the run
    return folder / "cli", folder / "api", frame


def test_run_writes_every_output(runs: tuple[Path, Path, pd.DataFrame]) -> None:
    from fedmeta.checkpoint import Checkpoint

    out = runs[0]
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["results.csv", "summary.json", "config.json", "checkpoint.pt", "quality.png",
         "server_state.pt"])
    table = pd.read_csv(out / "results.csv")
    assert list(table[["round", "source"]].itertuples(index=False, name=None)) == [
        (0, "eval"), (1, "train"), (2, "train"), (2, "eval"), (3, "train"), (3, "eval")]
    assert (table["bytes_down"] > 0).all() and (table["bytes_up"] > 0).all()
    assert table["bytes_total"].is_monotonic_increasing
    assert set(table.loc[table["source"] == "train", "devices"]) == {2}
    summary = json.loads((out / "summary.json").read_text())
    final = table[table["source"] == "eval"].iloc[-1]
    assert summary["algorithm"] == "fedmeta-maml" and summary["rounds"] == 3
    assert summary["final_post_mse"] == pytest.approx(final["post_loss"])
    assert summary["final_pre_mse_ci95"] == pytest.approx(final["pre_loss_ci95"])
    assert summary["bytes_down"] + summary["bytes_up"] == table["bytes_total"].iloc[-1]
    assert summary["wall_s"] > 0
    config = json.loads((out / "config.json").read_text())
    assert config["federation"]["server_optimizer"] == "adam"  # "auto" resolved
    assert Checkpoint.load(out / "checkpoint.pt").algorithm == "maml"
    assert (out / "quality.png").read_bytes()[:4] == b"\x89PNG"


def test_same_config_and_seed_give_byte_identical_results_whichever_pump(
        runs: tuple[Path, Path, pd.DataFrame]) -> None:
    cli, api, frame = runs
    assert (cli / "results.csv").read_bytes() == (api / "results.csv").read_bytes()
    pd.testing.assert_frame_equal(frame, pd.read_csv(api / "results.csv"))


def test_flwr_run_runs_the_app_on_a_local_simulation(tmp_path: Path) -> None:
    done = flwr_run(tmp_path / "flwr", "--federation-config",
                    "num-supernodes=4 client-resources-num-cpus=1",
                    "--run-config", TINY_RUN_CONFIG, timeout=400)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out[-3000:]
    assert "fedmeta-maml on held-out devices" in out, out[-3000:]
    for line in ("round 3 train: 2 devices", "round 3 eval: 1 devices"):
        assert line in out
    assert "CONFIGURATION MIGRATION" not in (ROOT / "pyproject.toml").read_text()


@pytest.mark.slow  # two Ray runs: about 2 minutes on a loaded 2-core host
def test_two_ray_runs_of_one_config_write_the_same_results_whichever_node_ids(
        tmp_path: Path) -> None:
    """Under SecAgg+ messages carry node ids (public keys keyed by them); Ray draws fresh
    random ids each run, and the bytes counted must not change with them. (SecAgg+'s
    stochastic rounding is drawn from secrets unless ``insecure_reproducible_noise``: with
    it the runs differ only if the node ids change what is computed or counted.)"""
    import fedmeta

    config = {"train": {"seed": 5}, "meta": {"eval_steps": 1},
              "federation": {"num_devices": 4, "num_held_out": 1, "rounds": 2,
                             "fraction_train": 1.0, "min_train_devices": 3, "eval_every": 2,
                             "meta_batch": 2, "eval_episodes": 2},
              "privacy": {"secure_aggregation": True, "insecure_reproducible_noise": True},
              "simulation": {"num_cpus": 1, "ray_cpus": 2}}
    for name in ("a", "b"):
        fedmeta.simulate(config, tmp_path / name, progress=False)
    first, second = ((tmp_path / n / "results.csv").read_bytes() for n in ("a", "b"))
    assert first == second
    assert pd.read_csv(tmp_path / "a" / "results.csv")["bytes_down"].sum() > 0
