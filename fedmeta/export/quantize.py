"""int8 post-training quantisation of an adapted model, for inference on CPU.

After adaptation a device predicts many query inputs with the same fast weights, so the
adapted model is quantised once and run in int8:

- MLP (sinusoids): dynamic quantisation (``torch.ao.quantization.quantize_dynamic``): int8
  weights, activations quantised on the fly.
- Conv4: static quantisation (FX graph mode, x86 backend), calibrated on the support set.
  Batch-norm on each batch's own statistics cannot be folded into an int8 convolution, so
  ``inference_model`` first freezes each batch-norm to the statistics of the support set
  (what it normalised by during adaptation); the float model with frozen statistics is
  reported alongside, to tell the two effects apart.

``torch.ao.quantization`` is deprecated in torch 2.13 in favour of torchao, yet works; its
deprecation warnings are silenced here.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..checkpoint import Checkpoint
from ..meta import Params
from ..meta.metasgd import LR_PREFIX


@contextmanager
def _quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in (r"torch\.ao\.quantization", r"torch\.quantize_per_tensor",
                        r"reduce_range will be deprecated"):
            warnings.filterwarnings("ignore", message=f".*{pattern}")
        yield


def _frozen_conv4(model: nn.Module, calibration_x: Tensor) -> nn.Sequential:
    """Conv4 as plain layers, each batch-norm in eval mode holding the (biased) mean and
    variance of ``calibration_x``'s activations: the normalisation it applied to them."""
    layers: list[nn.Module] = []
    x = calibration_x
    for block in model.body:
        if not isinstance(block, nn.Sequential):
            continue
        conv, norm = block[0], block[1]
        plain = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                          padding=conv.padding)
        plain.load_state_dict(conv.state_dict())
        bn = nn.BatchNorm2d(conv.out_channels, eps=norm.eps)
        with torch.no_grad():
            h = plain(x)
            bn.weight.copy_(norm.weight)
            bn.bias.copy_(norm.bias)
            bn.running_mean.copy_(h.mean((0, 2, 3)))
            bn.running_var.copy_(h.var((0, 2, 3), unbiased=False))
            x = F.relu(F.max_pool2d(bn.eval()(h), 2))
        layers += [plain, bn, nn.MaxPool2d(2), nn.ReLU()]
    layers += [nn.Flatten(), copy.deepcopy(model.head)]
    return nn.Sequential(*layers).eval()


def inference_model(checkpoint: Checkpoint, fast: Params, calibration_x: Tensor) -> nn.Module:
    """The adapted model as a float32 module for inference (Conv4: batch-norm frozen to
    ``calibration_x``'s statistics; MLP: as is)."""
    model = checkpoint.learner().model
    model.load_state_dict({k: v.detach() for k, v in fast.items()
                           if not k.startswith(LR_PREFIX)})
    if checkpoint.model == "conv4":
        return _frozen_conv4(model, calibration_x)
    return model.eval()


def quantize(model: nn.Module, calibration_x: Tensor) -> nn.Module:
    """int8: dynamic for a model of linear layers, static (FX, x86) for convolutions."""
    with _quiet():
        if not any(isinstance(m, nn.Conv2d) for m in model.modules()):
            return torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear},
                                                          dtype=torch.qint8)
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        prepared = prepare_fx(copy.deepcopy(model).eval(), get_default_qconfig_mapping("x86"),
                              (calibration_x,))
        with torch.no_grad():
            prepared(calibration_x)
        return convert_fx(prepared)


def serialized_bytes(model: nn.Module) -> int:
    """Size of the model's saved weights (``torch.save`` of its state dict)."""
    buffer = io.BytesIO()
    with _quiet():
        torch.save(model.state_dict(), buffer)
    return buffer.getbuffer().nbytes
