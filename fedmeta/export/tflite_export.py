"""Export a checkpoint's meta-model to LiteRT (TFLite) via ``torch.export`` (litert-torch)
for head-only adaptation on a device with numpy and the LiteRT interpreter
(``tflite_device``).

``export_tflite(checkpoint, out, support, query)`` writes

- ``body.tflite``: the body (feature extractor) with the meta-parameters, in two
  signatures of static batch: ``support`` (``support`` inputs) and ``query`` (``query``
  inputs). Conv4's batch-norm normalises each batch by its own statistics, as fedmeta does,
  so the batch is the whole support or query set. TFLite graphs have static shapes (the
  Edge TPU compiler requires them too), and litert-torch 0.10 cannot lower batch-norm's
  ``var_mean`` nor max-pooling with a dynamic batch (a JAX tracer error);
- ``head.npz``: the meta-learned head, the inner learning rate and the adaptation steps;
- ``meta_model.json`` and ``adapt_tflite.py`` (a copy of ``tflite_device``).

The linear head is numpy's on the device, adapted or not (a 64 x n-way product; an Edge
TPU model could not take adapted weights anyway: its weights are compiled in). Needs the
``litert`` extra (litert-torch, which brings ai-edge-litert to check the graph against
fedmeta's model on probe batches before saving).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..checkpoint import Checkpoint
from ..errors import ConfigError, DataError
from . import tflite_device
from .export import head_only_model, input_shape, write_head

INFO, SCRIPT = "meta_model.json", "adapt_tflite.py"
SIGNATURES = ("support", "query")


def _litert_torch() -> Any:
    """litert_torch, or a ConfigError naming the extra that brings it."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # the converter's C++ INFO lines
    try:
        import litert_torch
    except ImportError as exc:
        raise ConfigError("export format", "tflite",
                          f"an environment with the litert extra: pip install "
                          f"'fedmeta[litert]' ({exc})") from None
    return litert_torch


def _convert(body: nn.Module, probes: dict[str, torch.Tensor], path: Path) -> None:
    """Convert ``body`` with one static-batch signature per probe and write ``path``."""
    litert_torch = _litert_torch()
    converter = None
    for name, probe in probes.items():
        converter = (litert_torch.signature(name, body, (probe,)) if converter is None
                     else converter.signature(name, body, (probe,)))
    level = logging.getLogger().level
    logging.getLogger().setLevel(logging.ERROR)  # its progress bars and export warnings
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            converter.convert().export(str(path))
    finally:
        logging.getLogger().setLevel(level)


def _check(path: Path, probes: dict[str, torch.Tensor], body: nn.Module) -> None:
    """Run ``path`` in the LiteRT interpreter on each signature's probe against ``body``."""
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path), num_threads=1)
    for name, probe in probes.items():
        ours = tflite_device.run_signature(interpreter.get_signature_runner(name),
                                           probe.numpy())
        with torch.no_grad():
            expected = body(probe)
        if not torch.allclose(torch.from_numpy(ours), expected, rtol=1e-4, atol=1e-4):
            raise DataError(f"{path.name} ({name}) does not compute what fedmeta's model "
                            f"does (max difference "
                            f"{float((torch.from_numpy(ours) - expected).abs().max()):.3g})")


def export_tflite(checkpoint: Checkpoint | str | Path, out: str | Path, support: int,
                  query: int) -> dict[str, Any]:
    """Write the LiteRT body (``support`` and ``query`` batch signatures), the meta-learned
    head and the device script to ``out``; return the description (``meta_model.json``)."""
    checkpoint, model = head_only_model(checkpoint, "tflite")
    for name, size in (("--support", support), ("--query", query)):
        if size < 2:
            raise ConfigError(name, size, "an integer >= 2 (batch-norm takes the batch's "
                                          "statistics)")
    _litert_torch()
    model.eval()  # no effect on EpisodeBatchNorm2d: it always uses the batch's statistics
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = input_shape(checkpoint)
    probes = {name: torch.linspace(-1, 1, n * int(np.prod(shape))).reshape(n, *shape)
              for name, n in zip(SIGNATURES, (support, query))}
    _convert(model.body, probes, out / tflite_device.BODY)
    _check(out / tflite_device.BODY, probes, model.body)
    head = write_head(out, tflite_device.HEAD_WEIGHTS, checkpoint, model.head)
    shutil.copyfile(tflite_device.__file__, out / SCRIPT)
    info = {"format": "fedmeta-edge-tflite/1", "body": tflite_device.BODY,
            "head_weights": tflite_device.HEAD_WEIGHTS, "signatures": {
                name: [int(n), *shape] for name, n in zip(SIGNATURES, (support, query))},
            **head,
            "adaptation": "head only (ANIL): the support features are computed once by "
                          "body.tflite's support signature, then numpy SGD steps on the head",
            "call": "python adapt_tflite.py <this folder> episode.npz predictions.npy; or "
                    "HeadAdapter(folder).adapt(support_x, support_y); .predict(query_x)",
            "bytes": {name: (out / name).stat().st_size for name in
                      (tflite_device.BODY, tflite_device.HEAD_WEIGHTS)}}
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info
