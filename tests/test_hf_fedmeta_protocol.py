"""FedMeta's protocol on a FEMNIST-schema fixture (``task.protocol = "fedmeta"``): the
device is the task, its own images split 0.2 support / 0.8 query over the full 62-class
label space, small writers left out; the FedMeta/LEAF FEMNIST CNN."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from fedmeta import config
from fedmeta.central import train_and_evaluate
from fedmeta.errors import ConfigError
from fedmeta.meta import build_learner
from fedmeta.models import FemnistCNN, build_model
from fedmeta.tasks import hf_images
from fedmeta.tasks.device_split import DeviceSplitSource
from fedmeta.tasks.episode import stack_episodes
from fedmeta.tasks.factory import build_device_tasks, build_tasks, check_fleet_tasks

from hf_fixtures import femnist_writers, isolated_hf_cache, write_femnist

SMALL = [("f9100_00", [3, 4], 4)]  # 8 images: fewer than min_device_images = 10


@pytest.fixture(scope="module", autouse=True)
def hf_cache(tmp_path_factory: pytest.TempPathFactory):
    """``datasets``' own cache in a temporary folder, and no fleet kept from other tests."""
    with isolated_hf_cache(tmp_path_factory.mktemp("hf-cache")) as folder:
        yield folder


@pytest.fixture(scope="module")
def femnist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_femnist(tmp_path_factory.mktemp("femnist"),
                         femnist_writers(9, classes=6, per_class=4) + SMALL)


def protocol_task(folder: Path, *overrides: str):
    return config.load(overrides=["task.kind=hf", f"task.dataset={folder}",
                                  "task.protocol=fedmeta", *overrides]).task


def test_a_device_is_its_own_task_split_02_support_08_query_over_62_classes(femnist) -> None:
    task = protocol_task(femnist)
    check_fleet_tasks(task, 9, 2, seed=0)
    fleet = hf_images.load_fleet(task, 9, seed=0)
    assert fleet.num_classes == 62 and (fleet.eligible, fleet.partitions) == (9, 10)
    assert "f9100_00" not in fleet.names  # 8 images < min_device_images: left out
    images, labels = fleet.device(4)
    source = build_device_tasks(task, 4, 9, 2, seed=0)
    assert isinstance(source, DeviceSplitSource)
    a, b = source.sample(np.random.default_rng(1)), source.sample(np.random.default_rng(2))
    assert a.n_way == 62 and len(labels) == 24
    assert a.support_x.shape == (5, 1, 28, 28) and a.query_x.shape == (19, 1, 28, 28)  # 0.2
    for episode in (a, b):  # support + query: exactly the device's images and labels
        x = torch.cat([episode.support_x, episode.query_x])[:, 0].numpy()
        y = torch.cat([episode.support_y, episode.query_y]).numpy()
        assert Counter(zip(map(bytes, x), y.tolist())) == Counter(
            zip(map(bytes, images), labels.tolist()))
    assert not torch.equal(a.support_y, b.support_y) or not torch.equal(a.support_x,
                                                                        b.support_x)
    tasks = build_tasks(task, seed=0, fleet=(9, 2))
    assert (tasks.model, tasks.model_kwargs) == ("femnist-cnn", {"num_classes": 62})


def test_too_many_devices_for_the_writers_with_enough_images_is_an_error(femnist) -> None:
    with pytest.raises(ConfigError, match="9 of 10 partitions by writer_id that hold "
                                          "task.min_device_images = 10") as caught:
        check_fleet_tasks(protocol_task(femnist), 10, 2, seed=0)
    assert caught.value.field == "federation.num_devices"


def test_femnist_cnn_is_leafs() -> None:
    model = FemnistCNN()
    convs = (1 * 32 * 25 + 32) + (32 * 64 * 25 + 64)
    dense = (7 * 7 * 64) * 2048 + 2048
    head = 2048 * 62 + 62
    assert sum(p.numel() for p in model.parameters()) == convs + dense + head
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 62)
    assert isinstance(build_model("femnist-cnn", num_classes=10).head, torch.nn.Linear)


def test_maml_adapts_the_cnn_on_a_device_split(femnist) -> None:
    task = protocol_task(femnist)
    source = build_device_tasks(task, 0, 9, 2, seed=0)
    torch.manual_seed(0)
    learner = build_learner("maml", FemnistCNN(), inner_lr=0.05, inner_steps=1,
                            eval_steps=5)
    batch = stack_episodes([source.sample(np.random.default_rng(s)) for s in range(3)])
    params = {k: v.detach().clone() for k, v in learner.model.named_parameters()}
    scores = learner.evaluate(params, batch, 5)
    assert all(torch.isfinite(scores[m]).all() for m in scores)
    assert scores["post_loss"].mean() < scores["pre_loss"].mean()  # adapts on the support


@pytest.mark.parametrize(("overrides", "field"), [
    (["task.protocol=leaf"], "task.protocol"),
    (["task.support_fraction=1.0"], "task.support_fraction"),
    (["task.min_device_images=1"], "task.min_device_images"),
])
def test_protocol_config_is_checked(overrides, field) -> None:
    with pytest.raises(ConfigError) as caught:
        config.load(overrides=["task.kind=hf", *overrides])
    assert caught.value.field == field


def test_central_training_refuses_the_federated_protocol(femnist) -> None:
    cfg = config.load(overrides=["task.kind=hf", f"task.dataset={femnist}",
                                 "task.protocol=fedmeta"])
    with pytest.raises(ConfigError) as caught:
        train_and_evaluate(cfg, progress=False)
    assert caught.value.field == "task.protocol"


@pytest.mark.slow  # one Ray run of the 6.6M-parameter CNN: minutes on a loaded 2-core host
def test_fedmeta_run_with_the_protocol_runs_end_to_end(femnist, tmp_path) -> None:
    toml = tmp_path / "c.toml"
    toml.write_text(f"""[task]\nkind = "hf"\ndataset = "{femnist}"\nprotocol = "fedmeta"\n
[meta]\ninner_lr = 0.05\neval_steps = 5\n
[federation]\nnum_devices = 9\nnum_held_out = 2\nrounds = 2\nfraction_train = 0.0
min_train_devices = 4\nmeta_batch = 2\neval_every = 2\neval_episodes = 3\n
[simulation]\nnum_cpus = 1\nray_cpus = 2\n""")
    run = subprocess.run([sys.executable, "-m", "fedmeta", "run", "--config", str(toml),
                          "--out", str(tmp_path / "out"), "--no-progress"],
                         capture_output=True, text=True, timeout=900,
                         env={**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "hf")})
    assert run.returncode == 0, run.stderr[-3000:]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert np.isfinite(summary["final_post_acc"])
