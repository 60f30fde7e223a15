"""``train.batched``: how a meta-batch's episodes run (``true``: together, ``false``: one at
a time, ``auto``: together on an accelerator only), taken by every entry point that builds a
learner (central training, the federated server, the ClientApp), and refused with a clear
error by learners and models that only run one episode at a time."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from fedmeta import config
from fedmeta.errors import ConfigError
from fedmeta.meta import build_learner
from fedmeta.meta.base import MetaLearner
from fedmeta.models import CharLSTM, Conv4


@pytest.fixture
def threads() -> Iterator[None]:
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def test_train_batched_takes_auto_true_or_false() -> None:
    assert config.load().train.batched is None
    for value, expected in [("auto", None), ("AUTO", None), ("true", True), ("false", False)]:
        assert config.load(overrides=[f"train.batched={value}"]).train.batched is expected
    flat = config.load().to_flat()
    assert flat["train.batched"] == "auto"  # what Flower's ConfigRecord carries
    assert config.from_flat(flat).train.batched is None
    assert config.from_flat({"train.batched": False}).train.batched is False
    with pytest.raises(ConfigError, match=r'train.batched.*true, false or "auto"'):
        config.load(overrides=["train.batched=sometimes"])
    with pytest.raises(ConfigError, match="train.batched"):
        config.from_dict({"train": {"batched": 1}})


@pytest.mark.parametrize("setting, torch_threads, together",
                         [("false", 2, False), ("true", 1, True), ("auto", 1, False),
                          ("auto", 2, False)])  # auto: batched on accelerators only
def test_central_training_runs_the_episodes_as_train_batched_says(
        monkeypatch: pytest.MonkeyPatch, threads: None, setting: str, torch_threads: int,
        together: bool) -> None:
    from fedmeta.central import train_and_evaluate

    seen: set[bool] = set()
    batches = MetaLearner.batches

    def spy(self: MetaLearner, batch: object) -> bool:
        together = batches(self, batch)
        seen.add(together)
        return together

    monkeypatch.setattr(MetaLearner, "batches", spy)
    torch.set_num_threads(torch_threads)
    cfg = config.load(overrides=["meta.algorithm=fomaml", "train.iterations=3",
                                 "train.meta_batch=4", "train.eval_episodes=4",
                                 f"train.batched={setting}", "train.device=cpu"])
    train_and_evaluate(cfg, progress=False)
    assert seen == {together}


@pytest.mark.parametrize("setting", ["true", "false", "auto"])
def test_the_clientapp_and_the_server_build_their_learner_with_train_batched(
        monkeypatch: pytest.MonkeyPatch, setting: str) -> None:
    from fedmeta.app import client_app, server_app

    cfg = config.load(overrides=[f"train.batched={setting}"])
    flat = tuple(sorted(cfg.to_flat().items()))
    client_app._LEARNERS.cached = None
    learner = client_app._learner(cfg, flat, "mlp", json.dumps({}))
    assert learner.batched is cfg.train.batched

    built: list[object] = []

    class Built(Exception):
        pass

    def build(*args: object, **kwargs: object) -> MetaLearner:
        built.append(kwargs.get("batched", "missing"))
        raise Built

    monkeypatch.setattr(server_app, "build_learner", build)
    with pytest.raises(Built):
        server_app.run_federation(None, cfg, lambda row: None)  # type: ignore[arg-type]
    assert built == [cfg.train.batched]


@pytest.mark.parametrize("name", ["matching", "relation", "leo"])
def test_a_learner_that_runs_one_episode_at_a_time_refuses_batched_true(name: str) -> None:
    model = Conv4(n_way=5, channels=8)
    assert build_learner(name, model, batched=False).batchable is False
    assert build_learner(name, model, batched=None).batchable is False
    with pytest.raises(ConfigError, match=rf'train.batched.*"auto" or false for {name}'):
        build_learner(name, model, batched=True)


def test_a_model_that_cannot_run_episodes_together_refuses_batched_true() -> None:
    lstm = CharLSTM()
    with pytest.raises(ConfigError, match="train.batched.*CharLSTM"):
        build_learner("fomaml", lstm, batched=True)
    assert build_learner("fomaml", lstm).batchable is False
    assert build_learner("fomaml", Conv4(n_way=5, channels=8), batched=True).batchable
