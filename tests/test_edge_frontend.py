"""The edge front-end (``fedmeta.edge``): it serves a published meta-model adapted to its
own labelled examples (equal to fedmeta's ANIL adaptation of that checkpoint), swaps to a
newer version only once it is complete and intact, and keeps serving the old one when a
version is partially written or corrupt. The back-end's publishing never overwrites. The
HTTP interface and ``fedmeta edge serve`` run as a real process on 127.0.0.1."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from test_export_edge import checkpoint, episode

from fedmeta.checkpoint import Checkpoint
from fedmeta.deploy.processes import running, stop, wait_until
from fedmeta.edge import versions
from fedmeta.edge.frontend import EdgeFrontend
from fedmeta.errors import DataError
from fedmeta.models import build_model

ROOT = Path(__file__).resolve().parents[1]


def anil_predictions(ck: Checkpoint, support_x: np.ndarray, support_y: np.ndarray,
                     query_x: np.ndarray) -> np.ndarray:
    """fedmeta's own ANIL adaptation of ``ck`` (body once, head-only SGD steps)."""
    learner = ck.learner()
    fast = learner.adapt(dict(ck.params), torch.from_numpy(support_x),
                         torch.from_numpy(support_y), ck.learner_kwargs["eval_steps"])
    return learner.predict(fast, torch.from_numpy(query_x)).detach().numpy()


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Checkpoint]]:
    """Versions 0 and 3 of two different ANIL MLP meta-models, published once; tests copy
    the folder before changing it."""
    folder = tmp_path_factory.mktemp("publish") / "models"
    cks = [checkpoint("mlp", "anil", seed=0), checkpoint("mlp", "anil", seed=5)]
    versions.publish(cks[0], folder, 0, round=0)
    versions.publish(cks[1], folder, 3, round=3)
    return folder, cks


def copy_with_latest(source: Path, dest: Path, version: int) -> Path:
    """A copy of ``source`` whose ``latest.json`` points at ``version``."""
    shutil.copytree(source, dest)
    pointer = {"version": version, "folder": versions.version_name(version),
               "manifest_sha256": versions.sha256(
                   dest / versions.version_name(version) / versions.MANIFEST)}
    (dest / versions.LATEST).write_text(json.dumps(pointer))
    return dest


def sinusoid(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ep = episode("mlp", seed)
    return ep["support_x"].numpy()[:n], ep["support_y"].numpy()[:n]


def test_published_version_is_complete_and_never_overwritten(published) -> None:
    folder, cks = published
    assert sorted(p.name for p in folder.iterdir()) == ["latest.json", "v000000", "v000003"]
    manifest = json.loads((folder / "v000003" / versions.MANIFEST).read_text())
    assert manifest["version"] == 3 and manifest["round"] == 3
    assert sorted(manifest["files"]) == ["adapt_onnx.py", "body.onnx", "checkpoint.pt",
                                         "head.npz", "head.onnx", "meta_model.json"]
    assert versions.latest(folder) == versions.Pointer(
        3, "v000003", versions.sha256(folder / "v000003" / versions.MANIFEST))
    before = versions.sha256(folder / "v000003" / "head.npz")
    with pytest.raises(DataError, match="version 3 is already published"):
        versions.publish(cks[0], folder, 3, round=3)
    assert versions.sha256(folder / "v000003" / "head.npz") == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no temporary left


def test_adapts_on_its_examples_and_swaps_to_the_newer_version(published, tmp_path) -> None:
    folder, cks = published
    models = copy_with_latest(folder, tmp_path / "models", 0)
    front = EdgeFrontend(models)
    try:
        assert front.version is None and front.refresh() and front.version == 0
        x, y = sinusoid(10, seed=1)
        query = episode("mlp", seed=2)["query_x"].numpy()
        meta = front.predict(query)[1]
        assert front.add_examples(x[:6], y[:6]) == 6 and front.add_examples(x[6:], y[6:]) == 10
        version, adapted = front.predict(query)
        assert version == 0
        expected = anil_predictions(cks[0], x, y, query)
        assert np.abs(expected - meta).max() > 1e-3  # adaptation moved the predictions
        np.testing.assert_allclose(adapted, expected, rtol=0, atol=1e-5)
        assert not front.refresh()  # nothing newer
        (models / versions.LATEST).write_text((folder / versions.LATEST).read_text())
        assert front.refresh() and front.version == 3
        version, swapped = front.predict(query)  # re-adapted on the same 10 examples
        assert version == 3
        np.testing.assert_allclose(swapped, anil_predictions(cks[1], x, y, query), atol=1e-5)
        assert [(s["version"], s["round"], s["examples"]) for s in front.status()["swaps"]] \
            == [(0, 0, 0), (3, 3, 10)]
    finally:
        front.close()


def test_keeps_only_the_newest_examples(published, tmp_path) -> None:
    folder, cks = published
    front = EdgeFrontend(copy_with_latest(folder, tmp_path / "models", 0), max_examples=4)
    try:
        front.refresh()
        x, y = sinusoid(10, seed=1)
        assert front.add_examples(x, y) == 4
        query = x[:3]
        np.testing.assert_allclose(front.predict(query)[1],
                                   anil_predictions(cks[0], x[-4:], y[-4:], query), atol=1e-5)
    finally:
        front.close()


def test_conv4_serves_class_scores_adapted_to_its_labelled_images(tmp_path) -> None:
    ck = checkpoint("conv4", "anil")
    versions.publish(ck, tmp_path / "models", 0, round=0)
    front = EdgeFrontend(tmp_path / "models")
    try:
        front.refresh()
        ep = {k: v.numpy() for k, v in episode("conv4").items()}
        with pytest.raises(DataError, match=r"class indices in \[0, 5\)"):
            front.add_examples(ep["support_x"], ep["support_y"] + 1)
        with pytest.raises(DataError, match="class indices"):
            front.add_examples(ep["support_x"], ep["support_y"].astype(np.float32))
        assert front.add_examples(ep["support_x"], ep["support_y"]) == 5
        version, scores = front.predict(ep["query_x"])
        assert version == 0
        expected = anil_predictions(ck, ep["support_x"], ep["support_y"], ep["query_x"])
        scale = float(np.abs(expected).max())
        # onnxruntime's convolutions round differently from oneDNN's (test_export_onnx)
        np.testing.assert_allclose(scores, expected, rtol=0, atol=2e-4 * max(scale, 1.0))
        assert np.array_equal(scores.argmax(1), expected.argmax(1))
        with pytest.raises(DataError, match="send 2 inputs or more"):
            front.predict(ep["query_x"][:1])
    finally:
        front.close()


def damage(kind: str, version_folder: Path) -> str:
    """Damage one published version as a crash or a bad copy would; the error expected."""
    if kind == "truncated":  # a copy still in progress
        body = version_folder / "body.onnx"
        body.write_bytes(body.read_bytes()[:100])
        return "body.onnx is missing or does not match its SHA-256"
    if kind == "missing":
        (version_folder / "head.npz").unlink()
        return "head.npz is missing"
    if kind == "no-manifest":  # the manifest not yet there
        (version_folder / versions.MANIFEST).unlink()
        return "cannot read version 3"
    if kind == "altered":  # garbage in a graph, its manifest changed to vouch for it
        (version_folder / "body.onnx").write_bytes(b"not an onnx graph")
        manifest = json.loads((version_folder / versions.MANIFEST).read_text())
        manifest["files"]["body.onnx"] = versions.sha256(version_folder / "body.onnx")
        (version_folder / versions.MANIFEST).write_text(json.dumps(manifest))
        return "manifest.json does not match the SHA-256 that latest.json gives it"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["truncated", "missing", "no-manifest", "altered"])
def test_a_damaged_version_is_refused_and_the_old_one_keeps_serving(published, tmp_path,
                                                                    kind) -> None:
    folder, _ = published
    models = copy_with_latest(folder, tmp_path / "models", 0)
    front = EdgeFrontend(models)
    try:
        front.refresh()
        x, y = sinusoid(10, seed=1)
        front.add_examples(x, y)
        before = front.predict(x[:3])
        message = damage(kind, models / "v000003")
        (models / versions.LATEST).write_text((folder / versions.LATEST).read_text())
        with pytest.raises(DataError, match=message):
            front.refresh()
        version, outputs = front.predict(x[:3])
        assert version == 0 and np.array_equal(outputs, before[1])
        # only the served version stays staged
        assert [p.name.split("-")[0] for p in front._work.iterdir()] == ["v000000"]
    finally:
        front.close()


def test_a_corrupt_file_that_its_manifest_vouches_for_is_a_clear_load_error(
        published, tmp_path) -> None:
    """A publisher that wrote garbage and hashed it: staging passes, loading fails."""
    folder, _ = published
    models = copy_with_latest(folder, tmp_path / "models", 0)
    front = EdgeFrontend(models)
    try:
        front.refresh()
        damage("altered", models / "v000003")  # and a pointer that vouches for it too
        pointer = json.loads((folder / versions.LATEST).read_text())
        pointer["manifest_sha256"] = versions.sha256(models / "v000003" / versions.MANIFEST)
        (models / versions.LATEST).write_text(json.dumps(pointer))
        with pytest.raises(DataError, match=r"v000003: version 3 cannot be loaded \("):
            front.refresh()
        assert front.predict(np.zeros((2, 1)))[0] == 0
    finally:
        front.close()


def test_a_version_that_latest_json_does_not_name_yet_is_not_loaded(published,
                                                                     tmp_path) -> None:
    """A publisher interrupted before its rename (a hidden temporary folder with part of
    a version), or after it but before ``latest.json``: the served version stays."""
    folder, _ = published
    models = copy_with_latest(folder, tmp_path / "models", 0)
    hidden = models / ".v000004.x1y2"
    hidden.mkdir()
    (hidden / "body.onnx").write_bytes(b"half")
    shutil.copytree(folder / "v000003", models / "v000005")
    front = EdgeFrontend(models)
    try:
        assert front.refresh() and not front.refresh()
        assert front.version == 0 and front.status()["swaps"][-1]["version"] == 0
    finally:
        front.close()


def test_a_version_for_other_inputs_is_refused_and_the_old_one_keeps_serving(
        published, tmp_path) -> None:
    """The federation changed its task: version 4 takes 2 inputs, the stored examples
    have 1."""
    folder, _ = published
    models = copy_with_latest(folder, tmp_path / "models", 0)
    other = checkpoint("mlp", "anil")
    wider = build_model("mlp", in_features=2)
    other = Checkpoint("anil", "mlp", {"in_features": 2}, other.learner_kwargs,
                       dict(wider.named_parameters()), other.task)
    front = EdgeFrontend(models)
    try:
        front.refresh()
        x, y = sinusoid(10, seed=1)
        front.add_examples(x, y)
        versions.publish(other, models, 4, round=4)
        with pytest.raises(DataError, match=r"version 4 cannot adapt to the 10 stored examples "
                                            r"\(it takes inputs of shape \(2,\), they are "
                                            r"\(1,\)\)"):
            front.refresh()
        assert front.predict(x[:2])[0] == 0 and front.status()["examples"] == 10
    finally:
        front.close()


def test_an_unreadable_pointer_is_a_clear_error(published, tmp_path) -> None:
    folder, _ = published
    models = copy_with_latest(folder, tmp_path / "models", 0)
    front = EdgeFrontend(models)
    try:
        front.refresh()
        (models / versions.LATEST).write_text('{"version": 3, "fold')  # written half
        with pytest.raises(DataError, match="latest.json: not a readable pointer"):
            front.refresh()
        assert front.version == 0
    finally:
        front.close()


def test_bad_inputs_and_labels_are_clear_errors(published, tmp_path) -> None:
    folder, _ = published
    front = EdgeFrontend(tmp_path / "nothing-yet")
    try:
        assert not front.refresh()
        with pytest.raises(DataError, match="no meta-model yet"):
            front.predict([[1.0]])
        front.models = copy_with_latest(folder, tmp_path / "models", 0)
        front.refresh()
        with pytest.raises(DataError, match=r"expected \(n, 1\)"):
            front.predict([[1.0, 2.0]])
        with pytest.raises(DataError, match="finite"):
            front.predict([[float("nan")]])
        with pytest.raises(DataError, match="2 rows of 1 finite targets"):
            front.add_examples([[1.0], [2.0]], [1.0])
        assert front.status()["examples"] == 0
    finally:
        front.close()


@pytest.mark.parametrize("args, message", [
    (["--poll", "0"], "--poll=0.0 is not allowed: expected seconds in [0.01, 3600]"),
    (["--port", "70000"], "--port=70000 is not allowed"),
    (["--max-examples", "0"], "--max-examples=0 is not allowed: expected a positive integer"),
])
def test_fedmeta_edge_serve_refuses_bad_options(tmp_path, capsys, args, message) -> None:
    from fedmeta.cli import main

    assert main(["edge", "serve", "--models", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"fedmeta edge: error: {message}") and err.count("\n") == 1, err


def post(url: str, body: dict) -> tuple[int, dict]:
    request = urllib.request.Request(url, json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as reply:
            return reply.status, json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def get(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=30) as reply:
        return json.loads(reply.read())


def start_frontend(models: Path, log: Path) -> tuple[subprocess.Popen, str]:
    """``fedmeta edge serve`` on a free port of 127.0.0.1, polling every 0.2 s."""
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "fedmeta", "edge", "serve", "--models",
                             str(models), "--port", "0", "--poll", "0.2"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=log.open("wb"), text=True,
                            start_new_session=True)
    line = proc.stdout.readline()
    assert line.startswith("serving on http://127.0.0.1:"), (line, log.read_text())
    return proc, line.split()[-1]


def test_fedmeta_edge_serve_over_http(published, tmp_path) -> None:
    folder, cks = published
    models = tmp_path / "models"
    models.mkdir()
    proc, url = start_frontend(models, tmp_path / "frontend.log")
    try:
        x, y = sinusoid(10, seed=1)
        code, reply = post(url + "/predict", {"x": x[:2].tolist()})
        assert code == 503 and "no meta-model yet" in reply["error"]
        shutil.copytree(folder / "v000000", models / "v000000")
        (models / versions.LATEST).write_text(json.dumps({
            "version": 0, "folder": "v000000",
            "manifest_sha256": versions.sha256(models / "v000000" / versions.MANIFEST)}))
        assert wait_until(lambda: get(url + "/status")["version"] == 0, 60)
        assert post(url + "/examples", {"x": x.tolist(), "y": y.tolist()}) == (
            200, {"examples": 10, "version": 0})
        code, reply = post(url + "/predict", {"x": x[:3].tolist()})
        assert code == 200 and reply["version"] == 0
        np.testing.assert_allclose(np.array(reply["outputs"], np.float32),
                                   anil_predictions(cks[0], x, y, x[:3]), atol=1e-5)
        code, reply = post(url + "/predict", {"x": [[1.0, 2.0]]})
        assert code == 400 and "expected (n, 1)" in reply["error"]
        shutil.copytree(folder / "v000003", models / "v000003")
        shutil.copy(folder / versions.LATEST, models / versions.LATEST)
        assert wait_until(lambda: get(url + "/status")["version"] == 3, 60)
        code, reply = post(url + "/predict", {"x": x[:3].tolist()})
        np.testing.assert_allclose(np.array(reply["outputs"], np.float32),
                                   anil_predictions(cks[1], x, y, x[:3]), atol=1e-5)
    finally:
        stop([proc.pid], grace=10)
        proc.wait(timeout=30)
    assert not running(proc.pid) and proc.returncode == 0  # SIGTERM: a clean exit
