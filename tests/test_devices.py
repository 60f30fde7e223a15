"""The ``train.device`` setting: validation, and the device path of every entry point run with
``device="cpu"`` (the same code a GPU runs); GPU-only tests skip without CUDA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedmeta.config import from_dict, resolve_device
from fedmeta.errors import ConfigError
from fedmeta.local_update import evaluate_device, local_meta_train
from fedmeta.meta import MetaTrainer, build_learner
from fedmeta.meta.evaluation import evaluate_source
from fedmeta.models import MLP, Conv4
from fedmeta.server_state import ServerState
from fedmeta.tasks.sinusoid import SinusoidTasks

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="no CUDA device on this machine")


def test_device_defaults_to_auto_and_accepts_the_documented_forms() -> None:
    assert from_dict({}).train.device == "auto"
    for value in ("auto", "cpu", "cuda", "cuda:3"):
        assert from_dict({"train": {"device": value}}).train.device == value


@pytest.mark.parametrize("value", ["gpu", "tpu", "cuda:", "cuda:x", "CPU", ""])
def test_unknown_device_names_are_config_errors(value: str) -> None:
    with pytest.raises(ConfigError, match="train.device.*auto, cpu, cuda or cuda:N"):
        from_dict({"train": {"device": value}})


def test_auto_and_cpu_resolve_here() -> None:
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda:0" if CUDA else "cpu")


def test_an_absent_device_names_what_is_available() -> None:
    count = torch.cuda.device_count() if CUDA else 0
    with pytest.raises(ConfigError, match=r"train.device.*'auto', 'cpu'") as info:
        resolve_device(f"cuda:{count}")
    if not CUDA:
        assert "no CUDA device visible" in str(info.value)
        with pytest.raises(ConfigError, match="no CUDA device visible"):
            resolve_device("cuda")


def test_trainer_on_a_device_keeps_params_there_and_trains_like_the_default() -> None:
    torch.manual_seed(0)
    model = MLP()
    runs = []
    for device in (None, "cpu"):
        learner = build_learner("maml", model, inner_lr=0.01)
        trainer = (MetaTrainer(learner, 1e-3) if device is None
                   else MetaTrainer(learner, 1e-3, device=device))
        params = trainer.train(SinusoidTasks(k_shot=5), iterations=3, meta_batch=4, seed=0,
                               progress=False)
        assert all(p.device == torch.device("cpu") for p in params.values())
        runs.append(params)
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k])


def test_local_update_and_scores_come_back_on_the_cpu() -> None:
    learner = build_learner("fomaml", MLP(), inner_lr=0.01)
    params = learner.init_params()
    update = local_meta_train(learner, params, SinusoidTasks(k_shot=5),
                              np.random.default_rng(0), 2, 0.1, 3, 1, device="cpu")
    assert all(v.device.type == "cpu" for v in update.delta.values())
    scores = evaluate_device(learner, params, SinusoidTasks(k_shot=5),
                             np.random.default_rng(1), 4, 1, device="cpu")
    assert scores["post_loss"].shape == (4,)
    central = evaluate_source(learner, params, SinusoidTasks(k_shot=5), episodes=5,
                              batch_size=2, device="cpu")
    assert central["post_loss"].shape == (5,)


def test_server_state_saves_the_optimizer_device_free(tmp_path) -> None:
    learner = build_learner("maml", MLP(), inner_lr=0.01)
    trainer = MetaTrainer(learner, 1e-3, device="cpu")
    trainer.train(SinusoidTasks(k_shot=5), iterations=1, meta_batch=2, progress=False)
    state = ServerState(1, from_dict({}).to_dict(), trainer.params,
                        trainer.optimizer.state_dict(), {}, [])
    loaded = ServerState.load(state.save(tmp_path / "state.pt"))
    tensors = [v for s in loaded.optimizer["state"].values() for v in s.values()
               if isinstance(v, torch.Tensor)]
    assert tensors and all(t.device.type == "cpu" for t in tensors)


@needs_cuda
@pytest.mark.parametrize("name", ["maml", "fomaml", "reptile", "protonet"])
def test_batched_on_the_gpu_equals_the_cpu_loop(name: str) -> None:
    torch.manual_seed(0)
    model = Conv4(n_way=3, channels=8).double()
    from test_meta_gradients import _image_batch
    batch = _image_batch(n_tasks=4)
    loop = build_learner(name, model, inner_lr=0.3, batched=False)
    gpu = build_learner(name, model, inner_lr=0.3)
    params = loop.init_params()
    ref = loop.meta_update(params, batch).direction
    ours = gpu.meta_update({k: v.cuda() for k, v in params.items()},
                           batch.to("cuda")).direction
    assert gpu.batches(batch.to("cuda"))
    for k in ref:
        torch.testing.assert_close(ours[k].cpu(), ref[k], rtol=1e-9, atol=1e-12)


@needs_cuda
def test_a_gpu_trained_checkpoint_loads_on_the_cpu(tmp_path) -> None:
    from fedmeta.checkpoint import Checkpoint

    learner = build_learner("maml", MLP(), inner_lr=0.01)
    trainer = MetaTrainer(learner, 1e-3, device="cuda")
    params = trainer.train(SinusoidTasks(k_shot=5), iterations=2, meta_batch=4,
                           progress=False)
    assert all(p.is_cuda for p in params.values())
    path = Checkpoint("maml", "mlp", {}, {"inner_lr": 0.01}, params).save(tmp_path / "c.pt")
    payload = torch.load(path, map_location="meta", weights_only=True)
    assert all(v.device.type == "meta" for v in payload["params"].values())
    assert all(v.device.type == "cpu" for v in Checkpoint.load(path).params.values())
