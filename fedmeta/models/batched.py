"""Many tasks' forward passes as one set of kernels, each task with its own parameters.

``batched_call(module, params, x)`` is ``functional_call(module, params[t], x[t])`` for every
task ``t`` at once: every parameter has a leading task dimension ``T`` and ``x`` is
``(T, n, *features)``. Convolutions run as one grouped convolution with the tasks as groups
on ``(n, T*C, H, W)`` activations (channels-last), so batch-norm's per-channel statistics
are per task and per set of ``n`` images exactly as in a per-task call; linear layers run
as batched matrix products (``torch.baddbmm``). The batching is explicit, not ``vmap``:
``vmap`` of the native batch-norm kernel gets its second derivative wrong (torch 2.13), and
was measured slower.

Supported layers: ``nn.Sequential``, ``nn.Conv2d`` (zero padding), ``EpisodeBatchNorm2d``,
``nn.MaxPool2d``, ``nn.ReLU``, ``nn.Flatten`` (from dimension 1), ``nn.Linear``, and the
models ``Conv4`` and ``MLP`` (body then head). ``supports_batching`` says whether a module
is made of them; learners run other models one task at a time.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv4 import Conv4
from .episode_norm import EpisodeBatchNorm2d
from .mlp import MLP

_COMPOSITES = (Conv4, MLP)  # forward is body then head
_LEAVES = (nn.Conv2d, EpisodeBatchNorm2d, nn.MaxPool2d, nn.ReLU, nn.Flatten, nn.Linear)


def supports_batching(module: nn.Module) -> bool:
    """Whether ``batched_call`` can run ``module`` (every layer is a supported kind)."""
    if isinstance(module, _COMPOSITES):
        return supports_batching(module.body) and supports_batching(module.head)
    if isinstance(module, nn.Sequential):
        return all(supports_batching(child) for child in module)
    if isinstance(module, nn.Conv2d):
        return module.padding_mode == "zeros" and isinstance(module.padding, tuple)
    if isinstance(module, nn.Flatten):
        return module.start_dim == 1 and module.end_dim == -1
    return isinstance(module, _LEAVES)


def expand_params(params: dict[str, Tensor], tasks: int) -> dict[str, Tensor]:
    """``params`` shared by ``tasks`` tasks: a leading task dimension (views, no copies)."""
    return {k: v.expand(tasks, *v.shape) for k, v in params.items()}


def batched_call(module: nn.Module, params: dict[str, Tensor], x: Tensor) -> Tensor:
    """Outputs ``(T, n, *out)`` of ``module`` on ``x`` ``(T, n, *in)``, task ``t`` with
    parameters ``{name: p[t]}``."""
    out = _run(module, params, x, x.shape[0])
    return _ungroup(out, x.shape[0]) if out.dim() == 4 else out


def _sub(params: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k[len(prefix):]: v for k, v in params.items() if k.startswith(prefix)}


def _group(x: Tensor) -> Tensor:
    """``(T, n, C, H, W)`` -> ``(n, T*C, H, W)`` in channels-last memory."""
    t, n, c, h, w = x.shape
    nhwc = x.permute(1, 3, 4, 0, 2).reshape(n, h, w, t * c)
    return nhwc.permute(0, 3, 1, 2)


def _ungroup(x: Tensor, tasks: int) -> Tensor:
    """``(n, T*C, H, W)`` -> ``(T, n, C, H, W)``."""
    n, tc, h, w = x.shape
    return x.reshape(n, tasks, tc // tasks, h, w).transpose(0, 1)


def _run(module: nn.Module, params: dict[str, Tensor], x: Tensor, tasks: int) -> Tensor:
    """Apply ``module`` to ``x``: ``(T, n, *features)``, or ``(n, T*C, H, W)`` (grouped)
    between a convolution and a flatten."""
    if isinstance(module, _COMPOSITES):
        module = nn.Sequential(module.body, module.head)
        params = {("0." if k.startswith("body.") else "1.") + k.split(".", 1)[1]: v
                  for k, v in params.items()}
    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            x = _run(child, _sub(params, name + "."), x, tasks)
        return x
    if isinstance(module, nn.Conv2d):
        if x.dim() == 5:
            x = _group(x)
        weight = params["weight"]
        bias = params["bias"].flatten() if "bias" in params else None
        return F.conv2d(x.contiguous(memory_format=torch.channels_last),
                        weight.flatten(0, 1), bias, module.stride, module.padding,
                        module.dilation, module.groups * tasks)
    if isinstance(module, EpisodeBatchNorm2d):
        return F.batch_norm(x, None, None, params["weight"].flatten(),
                            params["bias"].flatten(), training=True, eps=module.eps)
    if isinstance(module, nn.MaxPool2d):
        return F.max_pool2d(x, module.kernel_size, module.stride, module.padding,
                            module.dilation, module.ceil_mode)
    if isinstance(module, nn.ReLU):
        return F.relu(x)
    if isinstance(module, nn.Flatten):
        return _ungroup(x, tasks).flatten(2) if x.dim() == 4 else x.flatten(2)
    if isinstance(module, nn.Linear):
        weight = params["weight"].transpose(1, 2)
        if "bias" in params:
            return torch.baddbmm(params["bias"].unsqueeze(1), x, weight)
        return torch.bmm(x, weight)
    raise TypeError(f"batched_call cannot run {type(module).__name__}")
