"""The on-device program: a TorchScript module that adapts the meta-model and predicts.

``MetaModel`` holds the meta-parameters and, with torch alone, runs fedmeta's adaptation

    phi = theta;  repeat steps:  phi <- phi - lr * grad_phi L(f(support_x; phi), support_y)

(``torch.autograd.grad``; cross-entropy for integer labels, MSE otherwise; ``lr`` a scalar
or, for Meta-SGD, one per entry; only the head for ANIL) and returns ``f(query_x; phi)``.
The forward passes are written out functionally (parameters as a list), as TorchScript
cannot swap a module's parameters; they compute what ``fedmeta.models`` computes, in the
same memory layout, so the numbers agree with ``fedmeta.meta`` to float32 round-off.
Call it with gradients enabled (not under ``torch.no_grad()``): adaptation differentiates.
"""

from typing import List  # TorchScript reads these annotations: no `from __future__` here

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class MLPForward(nn.Module):
    """``fedmeta.models.MLP``: linear layers with ReLU between; parameters
    ``[w0, b0, w1, b1, ..., w_head, b_head]``."""

    def forward(self, params: List[Tensor], x: Tensor) -> Tensor:
        layers = len(params) // 2
        for i in range(layers):
            x = F.linear(x, params[2 * i], params[2 * i + 1])
            if i < layers - 1:
                x = F.relu(x)
        return x


class Conv4Forward(nn.Module):
    """``fedmeta.models.Conv4``: blocks of [3x3 conv (channels-last input), batch-norm on
    the batch's own statistics, 2x2 max-pool, ReLU], then a linear head; parameters
    ``[conv w, conv b, bn w, bn b] * blocks + [head w, head b]``."""

    blocks: int
    eps: float

    def __init__(self, blocks: int = 4, eps: float = 1e-5) -> None:
        super().__init__()
        self.blocks, self.eps = blocks, eps

    def forward(self, params: List[Tensor], x: Tensor) -> Tensor:
        for i in range(self.blocks):
            n, c, h, w = x.shape
            nhwc = x.permute(0, 2, 3, 1).contiguous().flatten().view(n, h, w, c)
            x = F.conv2d(nhwc.permute(0, 3, 1, 2), params[4 * i], params[4 * i + 1],
                         padding=1)
            x = F.batch_norm(x, None, None, params[4 * i + 2], params[4 * i + 3], True, 0.0,
                             self.eps)
            x = F.relu(F.max_pool2d(x, 2))
        return F.linear(x.flatten(1), params[-2], params[-1])


class MetaModel(nn.Module):
    """Meta-parameters plus their adaptation: ``forward(support_x, support_y, query_x)``
    adapts ``steps`` steps on the support set and returns the query outputs."""

    theta: List[Tensor]
    lr: List[Tensor]
    adapted: List[int]
    steps: int
    regression: bool

    def __init__(self, net: nn.Module, theta: List[Tensor], lr: List[Tensor],
                 adapted: List[int], steps: int, regression: bool) -> None:
        super().__init__()
        self.net = net
        self.theta = [t.detach().clone() for t in theta]
        self.lr = [t.detach().clone() for t in lr]
        self.adapted, self.steps, self.regression = adapted, steps, regression

    def loss(self, output: Tensor, target: Tensor) -> Tensor:
        """Support-set loss: MSE for regression, cross-entropy for integer labels."""
        if self.regression:
            return F.mse_loss(output, target)
        return F.cross_entropy(output, target)

    @torch.jit.export
    def adapt(self, support_x: Tensor, support_y: Tensor, steps: int) -> List[Tensor]:
        """The fast weights after ``steps`` SGD steps on the support set."""
        if steps > 0 and not torch.is_grad_enabled():
            raise RuntimeError("adaptation differentiates: call it with gradients enabled, "
                               "not under torch.no_grad() or torch.inference_mode()")
        fast = [t for t in self.theta]
        for _ in range(steps):
            fast = [t.detach() for t in fast]
            wrt: List[Tensor] = []
            for i in self.adapted:
                fast[i] = fast[i].requires_grad_()
                wrt.append(fast[i])
            grads = torch.autograd.grad([self.loss(self.net(fast, support_x), support_y)], wrt)
            for j, i in enumerate(self.adapted):
                g = grads[j]
                if g is not None:
                    fast[i] = fast[i] - self.lr[i] * g
        return [t.detach() for t in fast]

    @torch.jit.export
    def predict(self, params: List[Tensor], x: Tensor) -> Tensor:
        """The model's outputs on ``x`` with parameters ``params`` (e.g. ``adapt``'s)."""
        return self.net(params, x)

    def forward(self, support_x: Tensor, support_y: Tensor, query_x: Tensor) -> Tensor:
        return self.net(self.adapt(support_x, support_y, self.steps), query_x)
