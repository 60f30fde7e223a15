"""LEO: Latent Embedding Optimization (Rusu, Rao, Sygnowski, Vinyals, Pascanu, Osindero &
Hadsell, ICLR 2019).

The classifier's weights are decoded from a low-dimensional latent code per class, and the
inner loop optimises the codes, not the weights. With features ``u = b(x)``::

    e_i   = g_e(u_i)                                            (encoder)
    z_k   = 1/(N K^2) sum_{i: y_i = k} sum_j g_r(e_i, e_j)      (relation net, all pairs)
    w_k   = g_d(z_k);  logits(x) = b(x) . w_k                   (decoder, linear classifier)
    z'    = z - alpha grad_z L_S(g_d(z))                        (latent steps)
    w'    = w - eta grad_w L_S(w),  from w = g_d(z')            (fine-tuning steps)

and the meta-gradient is that of the query loss ``L_Q(w')`` through all of it (second
order), with respect to the body ``b`` and ``g_e``, ``g_r``, ``g_d``.

What differs from the paper: the paper's features are frozen from a pre-trained WRN-28-10
(640-d) and it reports miniImageNet and tieredImageNet only; here ``b`` is the configured
Conv4's body (64-d on 28x28 images), trained jointly from scratch. The paper's ``g_r`` and
``g_d`` output the mean and standard deviation of Gaussians that are sampled in training;
here they are deterministic (their means), so the KL term on the codes is dropped, and so are
the encoder penalty and the decoder's orthogonality regulariser (plain query cross-entropy).
Latent steps: ``inner_steps`` of ``inner_lr`` (``eval_steps`` when scoring); fine-tuning:
``finetune_steps`` of ``finetune_lr``. Sizes: encoder 64 -> 16, relation net 32 -> 32 ->
16 (ReLU), decoder 16 -> 64 (the paper's latent code has 64 dimensions).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad

from ..errors import ConfigError
from .base import Params, check_positive
from .episodic import EpisodicLearner

LATENT = 16


class LeoModel(nn.Module):
    """Feature ``body``, ``encoder``, pairwise ``relation`` net and weight ``decoder``."""

    def __init__(self, body: nn.Module, features: int) -> None:
        super().__init__()
        self.body = body
        self.encoder = nn.Linear(features, LATENT)
        self.relation = nn.Sequential(nn.Linear(2 * LATENT, 2 * LATENT), nn.ReLU(),
                                      nn.Linear(2 * LATENT, LATENT))
        self.decoder = nn.Linear(LATENT, features)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)


class Leo(EpisodicLearner):
    """LEO over the configured model's body (classification, any number of classes)."""

    name = "leo"

    def __init__(self, model: nn.Module, inner_lr: float = 1.0, inner_steps: int = 1,
                 eval_steps: int | None = None, batched: bool | None = None,
                 precision: str = "float32", finetune_steps: int = 1,
                 finetune_lr: float = 0.01) -> None:
        super().__init__(model, inner_lr, inner_steps, eval_steps, batched, precision)
        check_positive("finetune_steps", finetune_steps, integer=True)
        check_positive("finetune_lr", finetune_lr)
        self.finetune_steps, self.finetune_lr = int(finetune_steps), float(finetune_lr)

    def build(self, model: nn.Module) -> nn.Module:
        head = getattr(model, "head", None)
        if not isinstance(head, nn.Linear):
            raise ConfigError("model", type(model).__name__,
                              "a model with a linear head (its width is the embedding's) "
                              "for leo")
        return LeoModel(model.body, head.in_features)

    def _part(self, params: Params, name: str) -> Params:
        return {k[len(name) + 1:]: v for k, v in params.items() if k.startswith(name + ".")}

    def codes(self, params: Params, support: Tensor, sy: Tensor, n_way: int) -> Tensor:
        """Initial latent codes ``z_k`` from the support features, ``(n_way, LATENT)``."""
        e = functional_call(self.model.encoder, self._part(params, "encoder"), (support,))
        s = e.shape[0]
        pairs = torch.cat([e.unsqueeze(1).expand(s, s, LATENT),
                           e.unsqueeze(0).expand(s, s, LATENT)], dim=2)
        related = functional_call(self.model.relation, self._part(params, "relation"),
                                  (pairs,)).mean(1)  # (s, LATENT): mean over partners j
        onehot = F.one_hot(sy, n_way).to(e.dtype)
        return onehot.T @ related / onehot.sum(0).unsqueeze(1)

    def weights(self, params: Params, support: Tensor, sy: Tensor, n_way: int,
                steps: int | None = None) -> Tensor:
        """Classifier weights ``w'`` ``(n_way, features)`` after the latent and fine-tuning
        steps on the support features."""
        decoder = self._part(params, "decoder")

        def decode(z: Tensor) -> Tensor:  # F.linear: module hooks break func.grad's backward
            return F.linear(z, decoder["weight"], decoder["bias"])

        def support_loss(w: Tensor) -> Tensor:
            return F.cross_entropy(support @ w.T, sy)

        z = self.codes(params, support, sy, n_way)
        for _ in range(self.inner_steps if steps is None else steps):
            z = z - self.inner_lr * grad(lambda c: support_loss(decode(c)))(z)
        w = decode(z)
        for _ in range(self.finetune_steps):
            w = w - self.finetune_lr * grad(support_loss)(w)
        return w

    def adapt(self, params: Params, support_x: Tensor, support_y: Tensor,
              steps: int | None = None) -> Params:
        """``params`` and the task's decoded, fine-tuned classifier under ``"classifier"``
        (one row per class label present, ``max(label) + 1``)."""
        support = functional_call(self.model.body, self._part(params, "body"), (support_x,))
        n_way = int(support_y.max()) + 1
        return params | {"classifier": self.weights(params, support, support_y, n_way, steps)}

    def predict(self, params: Params, x: Tensor) -> Tensor:
        """Logits of ``x`` under ``adapt``'s classifier."""
        return functional_call(self.model.body, self._part(params, "body"), (x,)) \
            @ params["classifier"].T

    def classify(self, params: Params, sx: Tensor, sy: Tensor, qx: Tensor, n_way: int,
                 steps: int | None = None) -> Tensor:
        """Logits ``b(x) . w'_k`` of the queries."""
        body = self._part(params, "body")
        support = functional_call(self.model.body, body, (sx,))
        w = self.weights(params, support, sy, n_way, steps)
        return functional_call(self.model.body, body, (qx,)) @ w.T
