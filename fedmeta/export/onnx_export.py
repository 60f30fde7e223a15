"""Export a checkpoint's meta-model to ONNX (via ``torch.export``) for head-only
adaptation on a device with onnxruntime and numpy (``onnx_device``).

``export_onnx(checkpoint, out)`` writes

- ``body.onnx``: the body (feature extractor) with the meta-parameters; Conv4's batch-norm
  normalises each batch by its own statistics, as fedmeta does; the batch is dynamic;
- ``head.onnx``: the linear head ``features @ weight.T + bias`` with the weights as inputs,
  so the adapted head runs in onnxruntime;
- ``head.npz``: the meta-learned head, the inner learning rate and the adaptation steps;
- ``meta_model.json`` and ``adapt_onnx.py`` (a copy of ``onnx_device``).

Both graphs are captured by ``torch.onnx.export(..., dynamo=True)`` (``torch.export``, then
onnxscript's translation), which needs the ``edge`` extra (onnx, onnxscript; onnxruntime
for the check). Each is checked against fedmeta's model on a probe batch before saving.
The learner's adaptation is not in the graphs: ``torch.export`` cannot capture
``torch.autograd.grad``, so the head's steps are numpy's (closed-form gradients).
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import Checkpoint
from ..errors import ConfigError, DataError
from . import onnx_device
from .export import head_only_model, input_shape, write_head

INFO, SCRIPT = "meta_model.json", "adapt_onnx.py"
OPSET = 20


class LinearHead(nn.Module):
    """A linear head whose weights are inputs: what ``head.onnx`` computes."""

    def forward(self, features: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        return F.linear(features, weight, bias)


def _onnxruntime() -> Any:
    """onnxruntime, once onnxscript (which torch.onnx's dynamo exporter needs) is found."""
    try:
        import onnxruntime
        import onnxscript  # noqa: F401
    except ImportError as exc:
        raise ConfigError("export format", "onnx",
                          f"an environment with the edge extra: pip install 'fedmeta[edge]' "
                          f"({exc})") from None
    return onnxruntime


def _save(module: nn.Module, args: tuple[Tensor, ...], dynamic: tuple[dict, ...],
          path: Path) -> None:
    """``torch.export`` ``module`` on ``args`` and write the ONNX graph to ``path``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and onnxscript's FutureWarnings
        program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic,
                                    opset_version=OPSET, optimize=True, verbose=False)
    program.save(str(path))


def _check(path: Path, inputs: tuple[Tensor, ...], expected: Tensor, ort: Any) -> None:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    feed = {i.name: x.detach().numpy() for i, x in zip(session.get_inputs(), inputs)}
    ours = torch.from_numpy(session.run(None, feed)[0])
    if not torch.allclose(ours, expected, rtol=1e-4, atol=1e-4):
        raise DataError(f"{path.name} does not compute what fedmeta's model does (max "
                        f"difference {float((ours - expected).abs().max()):.3g})")


def export_onnx(checkpoint: Checkpoint | str | Path, out: str | Path) -> dict[str, Any]:
    """Write the ONNX body and head, the meta-learned head and the device script to
    ``out``; return the description (also written as ``meta_model.json``)."""
    checkpoint, model = head_only_model(checkpoint, "onnx")
    ort = _onnxruntime()
    model.eval()  # no effect on EpisodeBatchNorm2d: it always uses the batch's statistics
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shape = input_shape(checkpoint)
    probe = torch.linspace(-1, 1, 7 * int(np.prod(shape))).reshape(7, *shape)
    batch = torch.export.Dim("batch", min=2)
    with torch.no_grad():
        features = model.body(probe)
        expected_out = model.head(features)
    _save(model.body, (probe,), ({0: batch},), out / onnx_device.BODY)
    _check(out / onnx_device.BODY, (probe,), features, ort)
    weight, bias = model.head.weight.detach(), model.head.bias.detach()
    _save(LinearHead(), (features, weight, bias), ({0: batch}, None, None),
          out / onnx_device.HEAD)
    _check(out / onnx_device.HEAD, (features, weight, bias), expected_out, ort)
    head = write_head(out, onnx_device.HEAD_WEIGHTS, checkpoint, model.head)
    shutil.copyfile(onnx_device.__file__, out / SCRIPT)
    info = {"format": "fedmeta-edge-onnx/1", "body": onnx_device.BODY,
            "head": onnx_device.HEAD, "head_weights": onnx_device.HEAD_WEIGHTS,
            "opset": OPSET, **head, "min_batch": 2,
            "adaptation": "head only (ANIL): the support features are computed once by "
                          "body.onnx, then numpy SGD steps on the head",
            "call": "python adapt_onnx.py <this folder> episode.npz predictions.npy; or "
                    "HeadAdapter(folder).adapt(support_x, support_y); .predict(query_x)",
            "bytes": {name: (out / name).stat().st_size for name in
                      (onnx_device.BODY, onnx_device.HEAD, onnx_device.HEAD_WEIGHTS)}}
    (out / INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info
