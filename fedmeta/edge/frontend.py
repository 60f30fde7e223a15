"""The edge front-end: serve a published meta-model, adapted to the device's own labels.

``EdgeFrontend(models)`` watches a publish folder (``fedmeta.edge.versions``). ``refresh``
takes the newest version once it is complete and intact (staged into the front-end's own
folder, every file checked against its manifest), loads it into onnxruntime
(``fedmeta.export.onnx_device.HeadAdapter``), adapts its head on the stored examples and
only then swaps it in: a version that cannot be staged or loaded raises ``DataError`` and
the model being served stays. ``add_examples`` stores labelled examples (the oldest dropped
beyond ``max_examples``) and re-adapts; ``predict`` scores inputs with the adapted model.

Adaptation is ANIL's head-only adaptation from the meta-learned head, on all the stored
examples: the body's features of them are computed once per adaptation (Conv4's batch-norm
normalises by the batch's statistics, so they depend on the whole support set) and cached
for the head's steps. Every method is safe to call from several threads.
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import DataError, FedmetaError
from ..export.onnx_device import HeadAdapter
from . import versions

logger = logging.getLogger("fedmeta.edge")


class EdgeFrontend:
    """A published meta-model, its adaptation to the stored examples, and the swap to a
    newer version."""

    def __init__(self, models: str | Path, max_examples: int = 500) -> None:
        if isinstance(max_examples, bool) or not isinstance(max_examples, int) \
                or max_examples < 1:
            raise DataError(f"max_examples={max_examples!r}: expected a positive integer")
        self.models = Path(models)
        self.max_examples = max_examples
        self._work = Path(tempfile.mkdtemp(prefix="fedmeta-edge-"))
        self._lock = threading.RLock()
        self._model: HeadAdapter | None = None
        self._staged: Path | None = None
        self.info: dict[str, Any] = {}  # the served version's meta_model.json
        self.manifest: dict[str, Any] = {}
        self._x: list[np.ndarray] = []
        self._y: list[np.ndarray] = []
        self.swaps: list[dict[str, Any]] = []
        self.error: str | None = None  # why the newest version is not served, if it is not

    @property
    def version(self) -> int | None:
        """The version served (``None`` before the first)."""
        return self.manifest.get("version")

    def refresh(self) -> bool:
        """Swap to the newest published version if it is newer than the one served; return
        whether it swapped. A version that cannot be taken raises ``DataError``."""
        pointer = versions.latest(self.models)
        if pointer is None or (self.version is not None and pointer.version <= self.version):
            return False
        staged = self._work / f"{pointer.folder}-{time.monotonic_ns()}"
        manifest = versions.stage(self.models, pointer, staged)
        try:
            info = json.loads((staged / "meta_model.json").read_text())
            model = HeadAdapter(staged)
        except Exception as exc:  # noqa: BLE001 (onnxruntime and numpy: many kinds)
            shutil.rmtree(staged, ignore_errors=True)
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise DataError(f"{self.models / pointer.folder}: version {pointer.version} "
                            f"cannot be loaded ({first})") from None
        with self._lock:
            if self._x:
                try:
                    self._fits(model, info)
                    self._adapt(model, info)
                except (DataError, ValueError) as exc:  # numpy's, for what _fits missed
                    shutil.rmtree(staged, ignore_errors=True)
                    raise DataError(f"{self.models / pointer.folder}: version "
                                    f"{pointer.version} cannot adapt to the {len(self._x)} "
                                    f"stored examples ({exc})") from None
            old, self._staged = self._staged, staged
            self._model, self.info, self.manifest = model, info, manifest
            self.swaps.append({"version": pointer.version, "round": manifest.get("round"),
                               "examples": len(self._x), "time": time.time()})
            self.error = None
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        logger.info("serving version %d (round %s), adapted on %d examples", pointer.version,
                    manifest.get("round"), len(self._x))
        return True

    def _fits(self, model: HeadAdapter, info: dict[str, Any]) -> None:
        """The stored examples are inputs and labels of ``model`` (the last version's may
        not be: the federation may have changed its task)."""
        shape, outputs = tuple(info["input_shape"]), model.meta_weight.shape[0]
        if self._x[0].shape != shape:
            raise DataError(f"it takes inputs of shape {shape}, they are {self._x[0].shape}")
        labels = np.stack(self._y)
        if info["model"] == "mlp" and labels.shape[1:] != (outputs,):
            raise DataError(f"it predicts {outputs} targets, they have {labels.shape[1:]}")
        if info["model"] != "mlp" and (labels.ndim != 1 or labels.max() >= outputs):
            raise DataError(f"it has {outputs} classes, they have labels up to "
                            f"{labels.max()}")

    def _adapt(self, model: HeadAdapter, info: dict[str, Any]) -> None:
        """Adapt ``model``'s head from the meta-learned one on every stored example."""
        x = np.stack(self._x)
        y = np.stack(self._y) if info["model"] == "mlp" else np.array(self._y, np.int64)
        model.adapt(x, y)

    def _check_inputs(self, x: Any) -> np.ndarray:
        if self._model is None:
            raise DataError(f"no meta-model yet: none published in {self.models}")
        try:
            x = np.asarray(x, dtype=np.float32)
        except (TypeError, ValueError) as exc:
            raise DataError(f"inputs: not an array of numbers ({exc})") from None
        shape = tuple(self.info["input_shape"])
        if x.ndim != 1 + len(shape) or x.shape[1:] != shape or len(x) == 0:
            raise DataError(f"inputs of shape {x.shape}: expected (n, {', '.join(map(str, shape))})"
                            f" with n >= 1")
        if not np.isfinite(x).all():
            raise DataError("inputs: expected finite numbers")
        return x

    def add_examples(self, x: Any, y: Any) -> int:
        """Store labelled examples (class indices, or float targets of shape ``(n,
        outputs)`` for regression) and re-adapt; return how many are stored."""
        with self._lock:
            x = self._check_inputs(x)
            outputs = self._model.meta_weight.shape[0]
            if self.info["model"] == "mlp":
                try:
                    y = np.asarray(y, dtype=np.float32).reshape(len(x), outputs)
                except (TypeError, ValueError):
                    y = None
                if y is None or not np.isfinite(y).all():
                    raise DataError(f"labels: expected {len(x)} rows of {outputs} finite "
                                    f"targets")
            else:
                y = np.asarray(y)
                if y.shape != (len(x),) or not np.issubdtype(y.dtype, np.integer) \
                        or y.min() < 0 or y.max() >= outputs:
                    raise DataError(f"labels: expected {len(x)} class indices in "
                                    f"[0, {outputs})")
            self._x = (self._x + list(x))[-self.max_examples:]
            self._y = (self._y + list(y))[-self.max_examples:]
            self._adapt(self._model, self.info)
            return len(self._x)

    def predict(self, x: Any) -> tuple[int, np.ndarray]:
        """The served version and its adapted model's outputs on ``x``. Conv4 normalises a
        batch by its own statistics, so it needs 2 inputs or more, as fedmeta does."""
        with self._lock:
            x = self._check_inputs(x)
            if self.info["model"] == "conv4" and len(x) < 2:
                raise DataError("inputs: Conv4 normalises a batch by its own statistics; "
                                "send 2 inputs or more")
            return int(self.version), self._model.predict(x)

    def status(self) -> dict[str, Any]:
        """The served version and round, the stored examples, the swaps, the last error."""
        with self._lock:
            return {"version": self.version, "round": self.manifest.get("round"),
                    "model": self.info.get("model"), "input_shape": self.info.get("input_shape"),
                    "examples": len(self._x), "swaps": list(self.swaps), "error": self.error}

    def watch(self, interval: float, stop: threading.Event) -> None:
        """``refresh`` every ``interval`` seconds until ``stop`` is set; a version that
        cannot be taken is logged once and kept in ``error`` while the old one serves."""
        while not stop.is_set():
            try:
                self.refresh()
            except FedmetaError as exc:
                if str(exc) != self.error:
                    logger.error("%s; still serving version %s", exc, self.version)
                self.error = str(exc)
            except Exception as exc:  # a bug must not end the watching
                logger.exception("unexpected error; still serving version %s", self.version)
                self.error = f"unexpected error: {exc!r}"
            stop.wait(interval)

    def close(self) -> None:
        """Remove the staged copies."""
        shutil.rmtree(self._work, ignore_errors=True)
