"""The LiteRT (TFLite) export adapts on a device without torch or fedmeta: ``fedmeta export
--format tflite`` writes the body (litert-torch, static support and query batches), and
``adapt_tflite.py``, run by a Python that can import only numpy and ai-edge-litert, adapts
the head on cached support features and predicts what fedmeta's ANIL predicts after the
same steps.

The export needs the ``litert`` extra (``pip install 'fedmeta[litert]'``: litert-torch,
~1.2 GB with jax and transformers), which ``dev`` leaves out; without it these tests skip,
except the one for the missing extra's error. The device Python is, by default, this one
started with ``-I -S`` and a ``sys.path`` of numpy and ai_edge_litert alone; set
``FEDMETA_TFLITE_PYTHON`` to a separate environment's Python (``pip install ai-edge-litert``
only) to run the device script there.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from importlib.util import find_spec
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_edge import checkpoint, episode, fedmeta_predictions

from fedmeta.checkpoint import Checkpoint
from fedmeta.cli import main
from fedmeta.errors import ConfigError

needs_litert = pytest.mark.skipif(
    find_spec("litert_torch") is None,
    reason="litert-torch is not installed: pip install 'fedmeta[litert]' to run the TFLite "
           "export tests (docs/deployment.md, 'LiteRT / TFLite')")


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Checkpoint, Path]]:
    """ANIL meta-models exported once per module: Conv4 through the CLI (5-way 1-shot, 25
    queries), the MLP by ``export_tflite`` (10 and 10 points)."""
    from fedmeta.export.tflite_export import export_tflite

    root = tmp_path_factory.mktemp("tflite")
    mlp, conv4 = checkpoint("mlp", "anil"), checkpoint("conv4", "anil")
    conv4.save(root / "conv4.pt")
    assert main(["export", "--checkpoint", str(root / "conv4.pt"), "--out",
                 str(root / "conv4"), "--format", "tflite", "--support", "5",
                 "--query", "25"]) == 0
    export_tflite(mlp, root / "mlp", 10, 10)
    return {"mlp": (mlp, root / "mlp"), "conv4": (conv4, root / "conv4")}


def device_command(folder: Path) -> list[str]:
    """A Python that cannot import torch or fedmeta, running ``adapt_tflite.py``."""
    code = ("import runpy, sys\nsys.path[:0] = sys.argv[1:]\n"
            "for name in ('torch', 'fedmeta'):\n"
            "    try:\n        __import__(name)\n        raise SystemExit(name + ' importable')\n"
            "    except ImportError:\n        pass\n"
            "sys.argv = ['adapt_tflite.py', '.', 'episode.npz', 'out.npy']\n"
            "runpy.run_path('adapt_tflite.py', run_name='__main__')\n")
    python = os.environ.get("FEDMETA_TFLITE_PYTHON")
    if python:  # a separate environment holding ai-edge-litert alone
        return [python, "-I", "-c", code]
    site = Path(np.__file__).resolve().parents[1]
    only = folder / "site"
    only.mkdir()
    for name in ("numpy", "numpy.libs", "ai_edge_litert"):
        if (site / name).exists():
            (only / name).symlink_to(site / name)
    return [sys.executable, "-I", "-S", "-c", code, str(only)]


@pytest.mark.slow  # four litert-torch signatures to convert, 20-25 s each
@needs_litert
@pytest.mark.parametrize("model", ["mlp", "conv4"])
def test_tflite_head_adaptation_matches_fedmeta_in_an_environment_without_torch(
        exported: dict, model: str) -> None:
    ck, folder = exported[model]
    info = json.loads((folder / "meta_model.json").read_text())
    assert info["format"] == "fedmeta-edge-tflite/1" and info["adaptation_steps"] == 5
    assert sorted(p.name for p in folder.iterdir()) == [
        "adapt_tflite.py", "body.tflite", "head.npz", "meta_model.json"]
    ep = episode(model)
    np.savez(folder / "episode.npz", **{k: v.numpy() for k, v in ep.items()})
    done = subprocess.run(device_command(folder), check=False, cwd=folder,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    assert "cached support features" in done.stdout
    ours = torch.from_numpy(np.load(folder / "out.npy"))
    expected = fedmeta_predictions(ck, ep)  # fedmeta's ANIL: head-only SGD steps
    before = ck.learner().predict(dict(ck.params), ep["query_x"]).detach()
    scale = float(expected.abs().max())
    assert float((expected - before).abs().max()) > 0.05 * scale  # adaptation moved them
    print(f"{model}: max |TFLite - fedmeta| = {float((ours - expected).abs().max()):.3g} "
          f"(largest output {scale:.3g})")
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5 * max(scale, 1.0) *
                               (1 if model == "mlp" else 20))
    if model == "conv4":
        assert torch.equal(ours.argmax(1), expected.argmax(1))


@pytest.mark.slow
@needs_litert
def test_tflite_device_refuses_another_batch_and_shares_the_onnx_maths(
        exported: dict) -> None:
    from fedmeta.export import onnx_device, tflite_device

    adapter = tflite_device.HeadAdapter(exported["conv4"][1])
    with pytest.raises(ValueError, match=r"\(5, 1, 28, 28\) here .* got \(4, 1, 28, 28\)"):
        adapter.adapt(np.zeros((4, 1, 28, 28), np.float32), np.arange(4))
    g = np.random.default_rng(0)
    features, w, b = g.normal(size=(7, 6)), g.normal(size=(4, 6)), g.normal(size=4)
    y = np.array([0, 1, 2, 3, 0, 1, 2])
    for ours, theirs in zip(tflite_device.adapt_head(features, y, w, b, 0.1, 3),
                            onnx_device.adapt_head(features, y, w, b, 0.1, 3)):
        np.testing.assert_array_equal(ours, theirs)


@needs_litert
def test_tflite_export_refuses_what_it_cannot_adapt(tmp_path: Path) -> None:
    from fedmeta.export.tflite_export import export_tflite

    with pytest.raises(ConfigError, match="checkpoint algorithm"):
        export_tflite(checkpoint("mlp", "metasgd"), tmp_path, 10, 10)
    with pytest.raises(ConfigError, match="--support=1"):
        export_tflite(checkpoint("conv4", "anil"), tmp_path, 1, 25)
    assert not any(tmp_path.iterdir())


def test_tflite_export_without_the_litert_extra_says_how_to_install_it(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture) -> None:
    for name in ("litert_torch", "ai_edge_litert", "ai_edge_litert.interpreter"):
        monkeypatch.setitem(sys.modules, name, None)  # import fails, as when not installed
    for name in ("fedmeta.export.tflite_export", "fedmeta.export.tflite_device"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    path = checkpoint("conv4", "anil").save(tmp_path / "ck.pt")
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "e"),
                 "--format", "tflite", "--support", "5", "--query", "25"]) == 2
    assert "pip install 'fedmeta[litert]'" in capsys.readouterr().err
    assert not (tmp_path / "e").exists()
    assert main(["export", "--checkpoint", str(path), "--out", str(tmp_path / "e"),
                 "--support", "5"]) == 2  # sizes are for --fit and tflite only
