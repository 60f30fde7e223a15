"""Shakespeare next-character prediction by role (``task.kind = "hf-text"``) on fixtures in
``flwrlabs/shakespeare``'s schema, read through flwr-datasets' ``FederatedDataset``: schema
in, episodes out; bad schema a ``ConfigError``; the LEAF/FedMeta character LSTM meta-trains,
and its second-order MAML meta-gradient matches an independent float64 double backward."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hf_fixtures import (
    isolated_hf_cache,
    shakespeare_features,
    shakespeare_rows,
    write_dataset,
    write_shakespeare,
)

from fedmeta import config
from fedmeta.errors import ConfigError
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.models import CharLSTM, build_model
from fedmeta.tasks import factory
from fedmeta.tasks.episode import stack_episodes
from fedmeta.tasks.factory import build_device_tasks, build_tasks, check_fleet_tasks
from fedmeta.tasks.hf_text import ALL_LETTERS, encode

ROLES = [(f"ROLE_{r}", 20 + 5 * r) for r in range(6)] + [("TINY", 6)]  # TINY: < 10 samples


@pytest.fixture(scope="module", autouse=True)
def hf_cache(tmp_path_factory: pytest.TempPathFactory):
    """``datasets``' own cache in a temporary folder, and no fleet kept from other tests."""
    with isolated_hf_cache(tmp_path_factory.mktemp("hf-cache")) as folder:
        yield folder


@pytest.fixture(scope="module")
def shakespeare(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_shakespeare(tmp_path_factory.mktemp("shakespeare"), ROLES)


def text_task(dataset: Path | str, **fields: object) -> config.TaskConfig:
    return config.from_dict({"task": {"kind": "hf-text", "dataset": str(dataset),
                                      "label_column": "y", "partition_by": "character_id",
                                      "protocol": "fedmeta", **fields}}).task


def test_vocabulary_is_leafs_80_characters() -> None:
    assert len(ALL_LETTERS) == 80 and len(set(ALL_LETTERS)) == 80
    assert encode("To be}").tolist() == [ALL_LETTERS.index(c) for c in "To be}"]
    assert encode("é\t").tolist() == [1, 1]  # outside the vocabulary: the space's id


def test_schema_in_episodes_out(shakespeare: Path) -> None:
    task = text_task(shakespeare)
    check_fleet_tasks(task, 6, 2, seed=0)  # every role but TINY
    with pytest.raises(ConfigError, match="federation.num_devices") as err:
        check_fleet_tasks(task, 7, 2, seed=0)
    assert "at most the 6 of 7 partitions by character_id" in str(err.value)
    fleet = factory._text_fleet(task, 6, 0)
    assert sorted(fleet.names) == [f"ROLE_{r}" for r in range(6)]
    rows = shakespeare_rows(ROLES)
    for d, name in enumerate(fleet.names):
        mine = [i for i, role in enumerate(rows["character_id"]) if role == name]
        n = len(mine)
        assert n == dict(ROLES)[name]
        x, y = fleet.device(d)
        assert sorted("".join(ALL_LETTERS[i] for i in row) + ALL_LETTERS[t]
                      for row, t in zip(x, y)) == \
            sorted(rows["x"][i] + rows["y"][i] for i in mine)
        episode = build_device_tasks(task, d, 6, 2, seed=0).sample(np.random.default_rng(d))
        support = round(0.2 * n)
        assert episode.support_x.shape == (support, 80)
        assert episode.query_x.shape == (n - support, 80)
        assert episode.support_x.dtype == episode.support_y.dtype == torch.int64
        assert episode.n_way == 80
    tasks = build_tasks(task, seed=0, fleet=(6, 2))
    assert tasks.model == "lstm" and tasks.info["eligible_partitions"] == 6
    assert tasks.info["partitions"] == 7 and len(tasks.info["held_out"]) == 2


@pytest.mark.parametrize("change, field", [
    ({"text_column": "text"}, "task.text_column"),
    ({"label_column": "next"}, "task.label_column"),
    ({"partition_by": "speaker"}, "task.partition_by"),
])
def test_missing_column_is_a_config_error(shakespeare: Path, change: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        check_fleet_tasks(text_task(shakespeare, **change), 4, 1)
    assert err.value.field == field and "character_id" in str(err.value)


def test_wrong_types_and_windows_are_config_errors(tmp_path: Path) -> None:
    from datasets import Features, Value
    rows = shakespeare_rows(ROLES[:3])
    as_ints = {**rows, "y": [ord(c) for c in rows["y"]]}
    ints = Features({"character_id": Value("string"), "x": Value("string"),
                     "y": Value("int64")})
    with pytest.raises(ConfigError, match="strings") as err:
        check_fleet_tasks(text_task(write_dataset(tmp_path / "ints", as_ints, ints)), 2, 1)
    assert err.value.field == "task.label_column"
    short = {**rows, "x": [x[:79] for x in rows["x"]]}
    with pytest.raises(ConfigError, match="windows of 80 characters") as err:
        check_fleet_tasks(text_task(write_dataset(tmp_path / "short", short,
                                                  shakespeare_features())), 2, 1)
    assert err.value.field == "task.text_column"
    empty = {k: [] for k in rows}
    with pytest.raises(ConfigError) as err:
        check_fleet_tasks(text_task(write_dataset(tmp_path / "empty", empty,
                                                  shakespeare_features())), 2, 1)
    assert err.value.field in ("task.split", "task.dataset")


@pytest.mark.parametrize("fields, field", [
    ({"protocol": "few-shot"}, "task.protocol"),
    ({"partition_by": "dirichlet"}, "task.partition_by"),
    ({"partition_by": "x"}, "task.partition_by"),
    ({"text_column": "y"}, "task.label_column"),
    ({"support_fraction": 1.0}, "task.support_fraction"),
    ({"min_device_images": 1}, "task.min_device_images"),
    ({"text_column": " "}, "task.text_column"),
])
def test_bad_config_names_the_field(fields: dict, field: str) -> None:
    with pytest.raises(ConfigError) as err:
        text_task("flwrlabs/shakespeare", **fields)
    assert err.value.field == field


def test_real_size_lstm_matches_nn_lstm_and_the_papers_count() -> None:
    model = build_model("lstm")
    # embedding 80x8; layer 1: 4*256*(8+256) + 2*4*256; layer 2: 4*256*(256+256) + 2*4*256;
    # head 256*80 + 80 (nn.LSTM's layout: two biases a layer)
    expected = 80 * 8 + (4 * 256 * 264 + 2048) + (4 * 256 * 512 + 2048) + (256 * 80 + 80)
    assert expected == 819_920
    assert sum(p.numel() for p in model.parameters()) == expected
    torch.manual_seed(0)
    small = CharLSTM(hidden=16).double()
    reference = torch.nn.LSTM(8, 16, 2, batch_first=True).double()
    reference.load_state_dict(small.body[1].state_dict())
    x = torch.randint(0, 80, (3, 80))
    out, _ = reference(small.body[0](x))
    torch.testing.assert_close(small.body(x), out[:, -1], rtol=1e-12, atol=1e-12)


def _lstm_by_hand(p: dict, x: torch.Tensor, hidden: int) -> torch.Tensor:
    """The character LSTM written independently: embedding rows, per-step cells."""
    seq = p["body.0.weight"][x]
    for layer in range(2):
        w_ih, w_hh = p[f"body.1.weight_ih_l{layer}"], p[f"body.1.weight_hh_l{layer}"]
        b = p[f"body.1.bias_ih_l{layer}"] + p[f"body.1.bias_hh_l{layer}"]
        h = torch.zeros(x.shape[0], hidden, dtype=seq.dtype)
        c = torch.zeros_like(h)
        steps = []
        for t in range(x.shape[1]):
            z = seq[:, t] @ w_ih.T + h @ w_hh.T + b
            i, f = torch.sigmoid(z[:, :hidden]), torch.sigmoid(z[:, hidden:2 * hidden])
            g, o = torch.tanh(z[:, 2 * hidden:3 * hidden]), torch.sigmoid(z[:, 3 * hidden:])
            c = f * c + i * g
            h = o * torch.tanh(c)
            steps.append(h)
        seq = torch.stack(steps, 1)
    return seq[:, -1] @ p["head.weight"].T + p["head.bias"]


def test_second_order_maml_matches_float64_double_backward(shakespeare: Path) -> None:
    hidden, lr, steps = 6, 0.5, 2
    torch.manual_seed(1)
    model = CharLSTM(hidden=hidden).double()
    learner = build_learner("maml", model, inner_lr=lr, inner_steps=steps)
    source = build_device_tasks(text_task(shakespeare), 0, 6, 2, seed=0)
    rng = np.random.default_rng(0)
    batch = stack_episodes([source.sample(rng) for _ in range(2)])
    batch = type(batch)(batch.support_x[:, :4, :12], batch.support_y[:, :4],
                        batch.query_x[:, :6, :12], batch.query_y[:, :6], batch.n_way)
    theta = {k: v.detach().clone() for k, v in model.named_parameters()}
    got = learner.meta_update(theta, batch).direction
    names = list(theta)
    leaves = [theta[k].clone().requires_grad_(True) for k in names]
    total = torch.zeros((), dtype=torch.float64)
    for t in range(len(batch)):
        fast = leaves
        for _ in range(steps):
            loss = F.cross_entropy(_lstm_by_hand(dict(zip(names, fast)), batch.support_x[t],
                                                 hidden), batch.support_y[t])
            grads = torch.autograd.grad(loss, fast, create_graph=True)
            fast = [w - lr * g for w, g in zip(fast, grads)]
        total = total + F.cross_entropy(_lstm_by_hand(dict(zip(names, fast)),
                                                      batch.query_x[t], hidden),
                                        batch.query_y[t])
    reference = torch.autograd.grad(total / len(batch), leaves)
    first_order = build_learner("fomaml", model, inner_lr=lr, inner_steps=steps)
    fo = first_order.meta_update(theta, batch).direction
    assert max(float((fo[k] - r).abs().max()) for k, r in zip(names, reference)) > 1e-6
    for k, r in zip(names, reference):
        torch.testing.assert_close(got[k], r, rtol=1e-10, atol=1e-10, msg=k)


def test_lstm_meta_trains_on_the_fixture(shakespeare: Path) -> None:
    torch.manual_seed(0)
    model = CharLSTM(hidden=32)
    learner = build_learner("maml", model, inner_lr=0.5, inner_steps=1)
    task = text_task(shakespeare)
    source = build_device_tasks(task, 0, 6, 2, seed=0)
    held_out = build_device_tasks(task, 4, 6, 2, seed=0)
    rng = np.random.default_rng(5)
    batch = stack_episodes([held_out.sample(rng) for _ in range(3)])
    before = learner.evaluate(learner.init_params(), batch, steps=1)["post_loss"].mean()
    params = MetaTrainer(learner, 0.01, "adam", "cpu").train(source, 15, 2, seed=0,
                                                              progress=False)
    after = learner.evaluate(params, batch, steps=1)["post_loss"].mean()
    assert after < before - 0.5, (before, after)


@pytest.mark.slow  # one Ray run of the 820k-parameter LSTM, second order: a minute or more
def test_fedmeta_run_with_the_lstm_runs_end_to_end(shakespeare: Path, tmp_path: Path) -> None:
    import json
    import os
    import subprocess
    import sys
    toml = tmp_path / "c.toml"
    toml.write_text(f"""[task]\nkind = "hf-text"\ndataset = "{shakespeare}"
label_column = "y"\npartition_by = "character_id"\nprotocol = "fedmeta"\n
[meta]\nalgorithm = "maml"\ninner_lr = 0.5\ninner_steps = 1\neval_steps = 1\n
[federation]\nnum_devices = 6\nnum_held_out = 2\nrounds = 2\nfraction_train = 0.0
min_train_devices = 4\nmeta_batch = 1\neval_every = 2\neval_episodes = 2\n
[simulation]\nnum_cpus = 1\nray_cpus = 2\n""")
    run = subprocess.run([sys.executable, "-m", "fedmeta", "run", "--config", str(toml),
                          "--out", str(tmp_path / "out"), "--no-progress"],
                         check=False, capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert np.isfinite(summary["final_post_acc"]) and np.isfinite(summary["final_post_loss"])
