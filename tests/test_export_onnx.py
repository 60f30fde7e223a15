"""The ONNX export adapts on a device without torch or fedmeta: ``fedmeta export --format
onnx`` writes the body and head (``torch.export``), and ``adapt_onnx.py``, run by a Python
that can import only numpy and onnxruntime, adapts the head on cached support features and
predicts what fedmeta's ANIL predicts after the same steps. Also: the closed-form head
gradients against autograd, and the fit of the model to the device profiles."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_edge import checkpoint, episode
from torch.func import functional_call, grad

from fedmeta.checkpoint import Checkpoint
from fedmeta.cli import main
from fedmeta.errors import ConfigError
from fedmeta.export.fit import fit_table, needs, weight_bytes
from fedmeta.export.onnx_device import adapt_head, head_gradient
from fedmeta.export.onnx_export import export_onnx
from fedmeta.fleet.profiles import PROFILES, DeviceProfile
from fedmeta.meta.base import task_loss
from fedmeta.models import build_model

SITE = Path(np.__file__).resolve().parents[1]  # site-packages holding numpy, onnxruntime


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Checkpoint, Path]]:
    """ANIL meta-models exported once per module: the MLP through the CLI (default
    format), Conv4 by ``export_onnx``."""
    root = tmp_path_factory.mktemp("onnx")
    mlp, conv4 = checkpoint("mlp", "anil"), checkpoint("conv4", "anil")
    mlp.save(root / "mlp.pt")
    assert main(["export", "--checkpoint", str(root / "mlp.pt"), "--out",
                 str(root / "mlp")]) == 0
    export_onnx(conv4, root / "conv4")
    return {"mlp": (mlp, root / "mlp"), "conv4": (conv4, root / "conv4")}


def device_environment(folder: Path) -> list[str]:
    """A Python that sees only numpy and onnxruntime: ``-I -S`` (no site-packages, no
    PYTHONPATH) and ``sys.path`` + a folder linking just those two packages."""
    only = folder / "site"
    only.mkdir()
    for name in ("numpy", "numpy.libs", "onnxruntime"):
        if (SITE / name).exists():
            (only / name).symlink_to(SITE / name)
    code = (f"import runpy, sys\nsys.path.insert(0, {str(only)!r})\n"
            "for name in ('torch', 'fedmeta'):\n"
            "    try:\n        __import__(name)\n        raise SystemExit(name + ' importable')\n"
            "    except ImportError:\n        pass\n"
            "sys.argv = ['adapt_onnx.py', '.', 'episode.npz', 'out.npy']\n"
            "runpy.run_path('adapt_onnx.py', run_name='__main__')\n")
    return [sys.executable, "-I", "-S", "-c", code]


@pytest.mark.parametrize("model", ["mlp", "conv4"])
def test_onnx_head_adaptation_matches_fedmeta_in_an_environment_without_torch(
        exported: dict, model: str) -> None:
    ck, folder = exported[model]
    info = json.loads((folder / "meta_model.json").read_text())
    assert info["format"] == "fedmeta-edge-onnx/1" and info["adaptation_steps"] == 5
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapt_onnx.py", "body.onnx", "head.npz", "head.onnx", "meta_model.json"]
    ep = episode(model)
    np.savez(folder / "episode.npz", **{k: v.numpy() for k, v in ep.items()})
    done = subprocess.run(device_environment(folder), check=False, cwd=folder, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "cached support features" in done.stdout
    ours = torch.from_numpy(np.load(folder / "out.npy"))
    learner = ck.learner()  # fedmeta's ANIL: body features once, head-only SGD steps
    fast = learner.adapt(dict(ck.params), ep["support_x"], ep["support_y"], 5)
    expected = learner.predict(fast, ep["query_x"]).detach()
    before = learner.predict(dict(ck.params), ep["query_x"]).detach()
    scale = float(expected.abs().max())
    assert float((expected - before).abs().max()) > 0.05 * scale  # adaptation moved them
    # onnxruntime's convolutions round differently from oneDNN's (features ~1e-5 apart)
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5 * max(scale, 1.0) *
                               (1 if model == "mlp" else 20))
    if model == "conv4":
        assert torch.equal(ours.argmax(1), expected.argmax(1))


@pytest.mark.parametrize("case", ["classes", "huge-logits", "regression"])
def test_closed_form_head_gradient_equals_autograd(case: str) -> None:
    g = torch.Generator().manual_seed(3)
    features = torch.randn(7, 6, dtype=torch.float64, generator=g)
    outputs = 2 if case == "regression" else 4
    head = {"weight": torch.randn(outputs, 6, dtype=torch.float64, generator=g),
            "bias": torch.randn(outputs, dtype=torch.float64, generator=g)}
    if case == "huge-logits":  # exp would overflow without the max shift
        head = {k: 300 * v for k, v in head.items()}
    y = (torch.randn(7, 2, dtype=torch.float64, generator=g) if case == "regression"
         else torch.tensor([0, 0, 1, 1, 1, 0, 1]))  # classes 2 and 3 never seen
    linear = torch.nn.Linear(6, outputs).double()
    expected = grad(lambda h: task_loss(functional_call(linear, h, (features,)), y))(head)
    dw, db = head_gradient(features.numpy(), head["weight"].numpy(), head["bias"].numpy(),
                           y.numpy())
    assert np.isfinite(dw).all()
    np.testing.assert_allclose(dw, expected["weight"].numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(db, expected["bias"].numpy(), rtol=1e-10, atol=1e-12)
    w, b = head["weight"].numpy(), head["bias"].numpy()
    w2, b2 = adapt_head(features.numpy(), y.numpy(), w, b, 0.1, 2)
    w1, b1 = w - 0.1 * dw, b - 0.1 * db
    dw1, db1 = head_gradient(features.numpy(), w1, b1, y.numpy())
    np.testing.assert_allclose(w2, w1 - 0.1 * dw1, rtol=1e-12)
    np.testing.assert_allclose(b2, b1 - 0.1 * db1, rtol=1e-12)


def test_onnx_export_refuses_what_it_cannot_adapt(tmp_path: Path) -> None:
    for model, algorithm in (("mlp", "metasgd"), ("conv4", "protonet")):
        with pytest.raises(ConfigError, match="checkpoint algorithm"):
            export_onnx(checkpoint(model, algorithm), tmp_path)
    assert not any(tmp_path.iterdir())


def test_fit_counts_flops_and_bytes_of_conv4() -> None:
    model = build_model("conv4", n_way=5)
    # conv MACs per image: 28x28x64 outputs x 9 inputs, then 14x14, 7x7, 3x3 x 576 inputs
    body = 2 * (28 * 28 * 64 * 9 + (14 * 14 + 7 * 7 + 3 * 3) * 64 * 576)
    head = 2 * 64 * 5
    params = 64 * 9 + 64 + 3 * (64 * 576 + 64) + 4 * 2 * 64 + 64 * 5 + 5
    assert weight_bytes(model, "float32") == 4 * params
    int8 = params - 4 * 2 * 64 - 4 * 64 - 5  # weight entries: 1 byte each
    assert weight_bytes(model, "int8") == int8 + 8 * (4 * 64 + 5) + 4 * (4 * 3 * 64 + 5)
    rows = {(n.variant, n.adaptation): n for n in needs(model, (1, 28, 28), 5, 25, 3)}
    head_only = rows["float32", "head-only"]
    assert head_only.adapt_flops == pytest.approx(5 * body + 3 * 2 * head * 5)
    assert head_only.query_flops == pytest.approx(25 * (body + head))
    # full network: 3 steps of forward + backward; backward = 2 forward - first layer
    first = 2 * 28 * 28 * 64 * 9
    full = rows["float32", "full network"]
    assert full.adapt_flops == pytest.approx(3 * 5 * (3 * (body + head) - first))
    assert full.memory_bytes > head_only.memory_bytes
    assert rows["int8", "head-only"].memory_bytes < head_only.memory_bytes
    fits = fit_table(model, (1, 28, 28), 5, 25, 3, PROFILES)
    assert {f.profile for f in fits} == set(PROFILES) and len(fits) == 4 * len(PROFILES)
    pi = next(f for f in fits if f.profile == "raspberry-pi-4"
              and f.need.variant == "float32" and f.need.adaptation == "head-only")
    assert pi.adapt_s == pytest.approx(head_only.adapt_flops / 8e9) and pi.fits
    tiny = DeviceProfile("tiny", 1e9, head_only.memory_bytes / 1e9 * 0.99, 1.0, 1.0)
    verdict = {(f.need.variant, f.need.adaptation): f.fits
               for f in fit_table(model, (1, 28, 28), 5, 25, 3, {"tiny": tiny})}
    assert verdict == {("float32", "head-only"): False, ("float32", "full network"): False,
                       ("int8", "head-only"): True, ("int8", "full network"): False}


def test_export_fit_cli(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    ck = checkpoint("conv4", "maml")
    ck.task = {"kind": "omniglot", "n_way": 5, "k_shot": 1, "q_query": 5}
    path = ck.save(tmp_path / "ck.pt")
    (tmp_path / "small.toml").write_text(
        "[watch]\nflops = 1e8\nmemory_gb = 0.0001\nuplink_mbps = 1\ndownlink_mbps = 1\n")
    assert main(["export", "--checkpoint", str(path), "--fit", "--profiles-file",
                 str(tmp_path / "small.toml")]) == 0
    out = capsys.readouterr().out
    assert "5 support, 25 query, 5 adaptation steps" in out
    rows = [line for line in out.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == 1 + 4 * (len(PROFILES) + 1)
    watch = [line for line in rows if line.startswith("| watch |")]
    assert len(watch) == 4 and all("| NO |" in line for line in watch)
    assert main(["export", "--checkpoint", str(path), "--fit", "--out", "x"]) == 2
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "e"),
                 "--support", "3"]) == 2
    assert not (tmp_path / "e").exists()
