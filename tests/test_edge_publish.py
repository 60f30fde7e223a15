"""The back-end's side of the edge front-end: the ServerApp, given
``federation.publish_dir``, publishes the meta-model of every evaluated round (round 0
included) and the last one is the run's final meta-model; a folder that already holds a
version stops the run with one line and overwrites nothing; a publish that fails half-way
leaves no version, no temporary folder and the old ``latest.json``. In process, on a
``LocalGrid`` (no Ray, no SuperLink)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from local_grid import LocalGrid
from test_discovery import context, run_config
from test_export_edge import checkpoint

from fedmeta.app import client_app, server_app
from fedmeta.app.server_app import run_federation
from fedmeta.app.sizing import fit_to_federation
from fedmeta.checkpoint import Checkpoint
from fedmeta.config import from_flat
from fedmeta.edge import versions
from fedmeta.errors import ConfigError


def flat(publish: Path) -> dict:
    return run_config(federation__algorithm="fedmeta-anil", federation__rounds=3,
                      federation__eval_every=2, federation__eval_episodes=2,
                      federation__meta_batch=2, federation__publish_dir=str(publish))


def test_the_server_publishes_every_evaluated_round_and_its_final_meta_model(
        tmp_path: Path) -> None:
    grid = LocalGrid(client_app.app, 2)
    sized, partitions = fit_to_federation(grid, flat(tmp_path / "models"))
    final = run_federation(grid, from_flat(sized), lambda row: None, partitions=partitions)
    models = tmp_path / "models"
    assert sorted(p.name for p in models.iterdir()) == [
        "latest.json", "v000000", "v000002", "v000003"]  # round 0, every 2nd, the last
    assert versions.latest(models).version == 3
    manifests = [json.loads((models / v / versions.MANIFEST).read_text())
                 for v in ("v000000", "v000002", "v000003")]
    assert [(m["round"], m["algorithm"]) for m in manifests] == [
        (0, "fedmeta-anil"), (2, "fedmeta-anil"), (3, "fedmeta-anil")]
    last = Checkpoint.load(models / "v000003" / versions.CHECKPOINT)
    assert last.algorithm == "anil" and last.learner_kwargs == final.learner_kwargs
    assert last.params.keys() == final.params.keys()
    for name, value in final.params.items():
        assert torch.equal(last.params[name], value.detach().cpu()), name
    first = Checkpoint.load(models / "v000000" / versions.CHECKPOINT)
    assert any(not torch.equal(first.params[n], last.params[n]) for n in last.params)


def test_a_folder_that_holds_a_version_stops_the_run_and_keeps_it(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    models = tmp_path / "models"
    versions.publish(checkpoint("mlp", "anil"), models, 0, round=0)
    before = {p.name: versions.sha256(p) for p in (models / "v000000").iterdir()}
    with caplog.at_level(logging.INFO, logger="flwr.fedmeta"), \
            pytest.raises(server_app.ServerAppFailed):
        server_app.main(LocalGrid(client_app.app, 2), context(flat(models)))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [(f"fedmeta: {models / 'v000000'}: version 0 is already published "
                       f"there; publish to an empty folder (federation.publish_dir)")]
    assert {p.name: versions.sha256(p) for p in (models / "v000000").iterdir()} == before


def test_a_relative_publish_folder_is_refused_under_flwr_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.INFO, logger="flwr.fedmeta"), \
            pytest.raises(server_app.ServerAppFailed):
        server_app.main(LocalGrid(client_app.app, 2), context(flat(Path("models"))))
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == [("fedmeta: federation.publish_dir='models' is not allowed: expected an "
                       "absolute path under flwr run (the ServerApp runs in a working folder "
                       "of Flower's choosing)")]
    assert list(tmp_path.iterdir()) == []


def test_a_publish_that_fails_half_way_leaves_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    versions.publish(checkpoint("mlp", "anil"), models, 0, round=0)
    pointer = (models / versions.LATEST).read_text()
    # the checkpoint is written, then the ONNX export refuses Meta-SGD's learned rates
    with pytest.raises(ConfigError, match="Meta-SGD"):
        versions.publish(checkpoint("mlp", "metasgd"), models, 1, round=1)
    assert sorted(p.name for p in models.iterdir()) == ["latest.json", "v000000"]
    assert (models / versions.LATEST).read_text() == pointer
