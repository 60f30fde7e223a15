"""The exported meta-model adapts on a device without fedmeta: ``fedmeta export`` writes a
TorchScript program whose adaptation, run by ``adapt_on_device.py`` in a fresh Python that
never imports fedmeta, predicts what ``fedmeta.meta`` predicts after the same steps."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fedmeta.checkpoint import Checkpoint
from fedmeta.errors import ConfigError
from fedmeta.export import export, meta_model, script
from fedmeta.export.quantize import inference_model, quantize, serialized_bytes
from fedmeta.meta import build_learner
from fedmeta.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def checkpoint(model: str, algorithm: str, seed: int = 0) -> Checkpoint:
    """A meta-model of random weights (adaptation is the same maths whatever they are)."""
    kwargs = {"n_way": 5} if model == "conv4" else {}
    learner_kwargs = {"inner_lr": 0.4 if model == "conv4" else 0.01, "inner_steps": 1,
                      "eval_steps": 5}
    torch.manual_seed(seed)
    learner = build_learner(algorithm, build_model(model, **kwargs), **learner_kwargs)
    return Checkpoint(algorithm, model, kwargs, learner_kwargs, learner.init_params(),
                      {"kind": "test"})


def episode(model: str, seed: int = 1) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    if model == "mlp":  # a sinusoid: 10 support and 10 query points
        x = torch.rand(20, 1, generator=g) * 10 - 5
        y = 3.0 * torch.sin(x + 0.5)
        return {"support_x": x[:10], "support_y": y[:10], "query_x": x[10:]}
    images = torch.rand(5 * 1 + 5 * 5, 1, 28, 28, generator=g)  # 5-way 1-shot, 5 queries
    return {"support_x": images[:5], "support_y": torch.arange(5), "query_x": images[5:]}


def fedmeta_predictions(ck: Checkpoint, ep: dict[str, torch.Tensor]) -> torch.Tensor:
    learner = ck.learner()
    fast = learner.adapt(dict(ck.params), ep["support_x"], ep["support_y"],
                         ck.learner_kwargs["eval_steps"])
    return learner.predict(fast, ep["query_x"]).detach()


def on_device(folder: Path, ep: dict[str, torch.Tensor]) -> torch.Tensor:
    """Run ``adapt_on_device.py`` in a fresh, isolated Python; check fedmeta stayed out."""
    torch.save(ep, folder / "episode.pt")
    code = ("import runpy, sys\n"
            "sys.argv = ['adapt_on_device.py', 'meta_model.pt', 'episode.pt', 'out.pt']\n"
            "runpy.run_path('adapt_on_device.py', run_name='__main__')\n"
            "assert 'fedmeta' not in sys.modules, 'fedmeta was imported'\n"
            "print('fedmeta imported:', any(m.startswith('fedmeta') for m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-I", "-c", code], cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "fedmeta imported: False" in done.stdout
    return torch.load(folder / "out.pt", weights_only=True)


def test_exported_sinusoid_mlp_adapts_like_fedmeta_without_fedmeta(tmp_path: Path) -> None:
    ck = checkpoint("mlp", "maml")
    info = export(ck, tmp_path)
    assert info["adaptation_steps"] == 5 and info["input_shape"] == [1]
    ep = episode("mlp")
    expected = fedmeta_predictions(ck, ep)
    assert not torch.allclose(expected, ck.learner().predict(dict(ck.params), ep["query_x"]))
    torch.testing.assert_close(on_device(tmp_path, ep), expected, rtol=0, atol=1e-5)


def test_exported_conv4_adapts_like_fedmeta_without_fedmeta(tmp_path: Path) -> None:
    path = checkpoint("conv4", "maml").save(tmp_path / "checkpoint.pt")
    done = subprocess.run([sys.executable, "-m", "fedmeta", "export", "--checkpoint",
                           str(path), "--out", str(tmp_path / "edge")], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    info = json.loads((tmp_path / "edge" / "meta_model.json").read_text())
    assert info["input_shape"] == [1, 28, 28] and info["labels"].startswith("int64")
    assert sorted(p.name for p in (tmp_path / "edge").iterdir()) == [
        "adapt_on_device.py", "meta_model.json", "meta_model.pt"]
    ep = episode("conv4")
    outputs = on_device(tmp_path / "edge", ep)
    assert outputs.shape == (25, 5)
    # per-episode batch-norm: the query set is normalised by its own statistics
    torch.testing.assert_close(outputs, fedmeta_predictions(Checkpoint.load(path), ep),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("model, algorithm", [("conv4", "anil"), ("mlp", "metasgd"),
                                              ("mlp", "reptile")])
def test_other_learners_adapt_alike(model: str, algorithm: str) -> None:
    ck = checkpoint(model, algorithm)
    if algorithm == "metasgd":  # learned per-entry rates, not all equal
        ck.params = {k: v * (1 + 0.5 * torch.rand_like(v)) if k.startswith("inner_lr.") else v
                     for k, v in ck.params.items()}
    program = script(ck)
    ep = episode(model)
    torch.testing.assert_close(program(ep["support_x"], ep["support_y"], ep["query_x"]),
                               fedmeta_predictions(ck, ep), rtol=0, atol=1e-5)


def test_adaptation_under_no_grad_and_protonet_are_refused() -> None:
    program = script(checkpoint("mlp", "maml"))
    ep = episode("mlp")
    with torch.no_grad(), pytest.raises(Exception, match="gradients enabled"):
        program(ep["support_x"], ep["support_y"], ep["query_x"])
    with pytest.raises(ConfigError, match="adapts by gradient steps"):
        meta_model(checkpoint("conv4", "protonet"))


@pytest.mark.parametrize("model", ["conv4", "mlp"])
def test_int8_quantisation_of_an_adapted_model(model: str) -> None:
    ck, ep = checkpoint(model, "maml"), episode(model)
    learner = ck.learner()
    fast = {k: v.detach() for k, v in learner.adapt(dict(ck.params), ep["support_x"],
                                                    ep["support_y"], 5).items()}
    frozen = inference_model(ck, fast, ep["support_x"])
    with torch.no_grad():
        # on the support set itself, statistics frozen to it are the batch's own
        torch.testing.assert_close(frozen(ep["support_x"]),
                                   learner.predict(fast, ep["support_x"]), rtol=1e-4, atol=1e-4)
        int8 = quantize(frozen, ep["support_x"])
        reference, quantized = frozen(ep["query_x"]), int8(ep["query_x"])
    assert serialized_bytes(int8) < serialized_bytes(frozen)
    error = float((quantized - reference).abs().max() / reference.abs().max())
    assert 0 < error < 0.1, error  # int8 rounding: visible, small


def test_exported_rgb_benchmark_conv4_adapts_like_fedmeta(tmp_path: Path) -> None:
    """A few-shot benchmark's Conv4 (3x32x32 input, 256-feature head): its input shape is
    recorded and the program adapts as fedmeta does."""
    kwargs = {"n_way": 5, "in_channels": 3, "image_size": 32}
    learner_kwargs = {"inner_lr": 0.4, "inner_steps": 1, "eval_steps": 2}
    torch.manual_seed(0)
    learner = build_learner("maml", build_model("conv4", **kwargs), **learner_kwargs)
    ck = Checkpoint("maml", "conv4", kwargs, learner_kwargs, learner.init_params(),
                    {"kind": "fewshot"})
    info = export(ck, tmp_path)
    assert info["input_shape"] == [3, 32, 32]
    images = torch.rand(5 + 10, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    ep = {"support_x": images[:5], "support_y": torch.arange(5), "query_x": images[5:]}
    program = torch.jit.load(tmp_path / "meta_model.pt")
    torch.testing.assert_close(program(ep["support_x"], ep["support_y"], ep["query_x"]),
                               fedmeta_predictions(ck, ep), rtol=0, atol=1e-5)
