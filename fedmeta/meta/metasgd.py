"""Meta-SGD (Li, Zhou, Chen & Li 2017, "Meta-SGD: Learning to Learn Quickly").

Learns, with the initialisation, one inner learning rate per parameter entry:

    phi_i = theta - alpha * grad_theta L_{S_i}(theta)      (elementwise product)

``alpha`` lives in the meta-parameters under ``inner_lr.<name>``, starts at ``inner_lr`` and
is meta-learned by the same second-order gradient as ``theta``.
"""

from __future__ import annotations

from torch import Tensor

from .base import Params, step_grad, task_loss, task_losses
from .maml import MAML

LR_PREFIX = "inner_lr."


class MetaSGD(MAML):
    """Second-order MAML with learned per-parameter inner learning rates."""

    name = "metasgd"

    def init_params(self) -> Params:
        params = super().init_params()
        return params | {LR_PREFIX + k: v.new_full(v.shape, self.inner_lr)
                         for k, v in params.items()}

    def predict(self, params: Params, x: Tensor) -> Tensor:
        weights = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
        return super().predict(weights, x)

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Params:
        weights = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
        for _ in range(self.inner_steps if steps is None else steps):
            g = step_grad(lambda p: task_loss(super(MetaSGD, self).predict(p, support_x),
                                              support_y), weights)
            weights = {k: weights[k] - params[LR_PREFIX + k] * g[k] for k in weights}
        return weights

    def predict_many(self, params: Params, x: Tensor) -> Tensor:
        weights = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
        return super().predict_many(weights, x)

    def adapt_many(self, params: Params, support_x: Tensor, support_y: Tensor,
                   steps: int | None = None) -> Params:
        weights = {k: v for k, v in params.items() if not k.startswith(LR_PREFIX)}
        for _ in range(self.inner_steps if steps is None else steps):
            g = step_grad(lambda p: task_losses(
                super(MetaSGD, self).predict_many(p, support_x), support_y).sum(), weights)
            weights = {k: weights[k] - params[LR_PREFIX + k] * g[k] for k in weights}
        return weights
