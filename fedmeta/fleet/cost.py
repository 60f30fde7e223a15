"""What a device's meta-learning costs: FLOPs and memory per episode, by algorithm.

The counts are analytic, from the model's weighted layers (convolutions and linear maps,
what ``torch.utils.flop_counter`` counts; normalisation, pooling and activations are left
out there and here). With ``F(n)`` the forward FLOPs on ``n`` examples and ``L(n)`` those of
the first weighted layer, whose input gradient is never needed:

- backward (weight and input gradients): ``B(n) = 2 F(n) - L(n)``;
- one inner step on the support set ``s``: ``F(s) + B(s)``;
- first-order MAML with ``k`` steps: ``k (F(s) + B(s)) + F(q) + B(q)`` (query ``q``);
- second-order MAML and Meta-SGD: first-order plus ``3 k B(s)``, differentiating each inner
  step's backward pass (double backward) costs three backward passes;
- ANIL: the body runs on the support once, only the head adapts: ``F(s) + B(s) + F(q) +
  B(q)`` (the head's steps are negligible);
- Reptile: ``k (F(s) + B(s)) + F(q)`` (the query forward gives its metrics);
- joint training (FedAvg): ``F(s+q) + B(s+q)``; Per-FedAvg FO: one step, ``F(s) + B(s) +
  F(q) + B(q)``; HF adds two support gradients, ``2 (F(s) + B(s))``.

Learners that score queries from the whole episode (``few_shot_only``: Prototypical,
Matching and Relation Networks, SNAIL, LEO) are measured per episode instead
(``ModelCost.of_episode``): ``F`` is the forward FLOPs of the learner's ``classify`` on one
episode (embedding of support and query, relation module, sequence model, LEO's encoder,
relation net) and ``L`` its first image layer's; the meta-gradient costs ``F + 2 F - L``
(one backward through everything) and scoring costs ``F``. Left out: the attention and
cosine products (SNAIL, Matching) and LEO's decoder and latent and fine-tuning steps, on
16-d codes and a linear classifier (within 0.1% on Conv4 5- and 20-way).

``tests/test_fleet_cost.py`` checks these against ``torch.utils.flop_counter``: equal on
Conv4 and the sinusoid MLP, ANIL within 6% (its head steps are left out). Scoring the
episodes a device trained on (pre- and post-adaptation query loss, as its reply reports)
adds ``2 F(q) + k' (F(s) + B(s))`` for ``k'`` scoring steps.

Memory is a rough upper estimate (float32): the meta-parameters and three same-sized
copies (adapted weights, gradient, pseudo-gradient) plus the activations autograd keeps:
one forward on support and query for first-order learners and ANIL; second-order ones keep
every inner step's forward and backward graph, ``3 k`` support activations, plus ``2 k``
more copies of the parameters. Per-episode learners: the four copies and the activations
of one ``classify``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..meta import MetaLearner
from ..tasks.episode import Episode

FLOAT_BYTES = 4
SECOND_ORDER = ("maml", "metasgd")
LEARNERS = ("maml", "fomaml", "anil", "metasgd", "reptile", "joint", "perfedavg-fo",
            "perfedavg-hf", "protonet")  # and any learner measured per episode
WEIGHTED = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class ModelCost:
    """Per-example forward FLOPs, first-layer FLOPs and kept activations of a model; or,
    with ``per_episode``, those of one episode's ``classify`` (``of_episode``)."""

    params: int  # entries of the model's parameters
    forward: float  # FLOPs of one example's forward pass (conv + linear)
    first_layer: float  # FLOPs of the first weighted layer on one example
    activations: int  # floats a forward pass produces per example (every leaf module)
    per_episode: bool = False  # the three above are one episode's, not one example's

    @classmethod
    def of(cls, model: nn.Module, example_shape: tuple[int, ...]) -> ModelCost:
        """Measure ``model`` with forward hooks on two examples of ``example_shape``."""
        flops: list[float] = []
        floats: list[int] = []

        def weighted(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            per_output = module.weight.numel() / module.weight.shape[0]  # MACs per output
            flops.append(2.0 * out.numel() * per_output / 2)

        def leaf(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            floats.append(out.numel() // 2)

        hooks = [m.register_forward_hook(weighted) for m in model.modules()
                 if isinstance(m, WEIGHTED)]
        hooks += [m.register_forward_hook(leaf) for m in model.modules()
                  if not list(m.children())]
        try:
            with torch.no_grad():
                model(torch.zeros(2, *example_shape))
        finally:
            for hook in hooks:
                hook.remove()
        return cls(sum(p.numel() for p in model.parameters()), sum(flops),
                   flops[0] if flops else 0.0, sum(floats))

    @classmethod
    def of_episode(cls, learner: MetaLearner, episode: Episode) -> ModelCost:
        """Measure ``learner.classify`` (a ``few_shot_only`` learner) on ``episode`` with
        forward hooks: its FLOPs, its first image layer's and the floats its leaf modules
        output, all for the whole episode."""
        model = learner.model
        first = next(m for m in model.body.modules() if isinstance(m, WEIGHTED))
        flops: list[float] = []
        first_flops: list[float] = []
        floats: list[int] = []

        def weighted(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            value = out.numel() * module.weight.numel() / module.weight.shape[0]
            flops.append(2.0 * value)
            if module is first:
                first_flops.append(2.0 * value)

        def leaf(module: nn.Module, inputs: tuple, out: torch.Tensor) -> None:
            floats.append(out.numel())

        hooks = [m.register_forward_hook(weighted) for m in model.modules()
                 if isinstance(m, WEIGHTED)]
        hooks += [m.register_forward_hook(leaf) for m in model.modules()
                  if not list(m.children())]
        params = learner.init_params()
        try:
            with torch.no_grad():
                learner.classify(params, episode.support_x.float(), episode.support_y,
                                 episode.query_x.float(), episode.n_way)
        finally:
            for hook in hooks:
                hook.remove()
        return cls(sum(v.numel() for v in params.values()), sum(flops), sum(first_flops),
                   sum(floats), per_episode=True)

    def fwd(self, n: int) -> float:
        return self.forward * n

    def bwd(self, n: int) -> float:
        return (2 * self.forward - self.first_layer) * n

    def step(self, n: int) -> float:
        """One gradient step on ``n`` examples: forward and backward."""
        return self.fwd(n) + self.bwd(n)


def episode_flops(cost: ModelCost, learner: str, support: int, query: int,
                  inner_steps: int) -> float:
    """FLOPs of one episode's share of ``learner.meta_update`` (see the module docstring)."""
    k, s, q = inner_steps, support, query
    if cost.per_episode:
        return cost.forward + 2 * cost.forward - cost.first_layer
    if learner in ("fomaml", "anil", "perfedavg-fo"):
        inner = (1 if learner != "fomaml" else k) * cost.step(s)
        return inner + cost.step(q)
    if learner in SECOND_ORDER:
        return k * cost.step(s) + cost.step(q) + 3 * k * cost.bwd(s)
    if learner == "reptile":
        return k * cost.step(s) + cost.fwd(q)
    if learner == "joint":
        return cost.step(s + q)
    if learner == "perfedavg-hf":
        return 3 * cost.step(s) + cost.step(q)
    if learner == "protonet":
        return cost.step(s + q)
    raise ValueError(f"no FLOP count for learner {learner!r}; known: {LEARNERS}")


def scoring_flops(cost: ModelCost, support: int, query: int, steps: int) -> float:
    """FLOPs of scoring one episode before and after ``steps`` adaptation steps (a
    per-episode cost: one ``classify``)."""
    if cost.per_episode:
        return cost.forward
    return 2 * cost.fwd(query) + steps * cost.step(support)


def memory_bytes(cost: ModelCost, learner: str, support: int, query: int,
                 inner_steps: int) -> float:
    """Estimated peak bytes of one episode's meta-gradient (see the module docstring)."""
    params = cost.params * (2 if learner == "metasgd" else 1)
    if cost.per_episode:
        floats = 4 * params + cost.activations
    elif learner in SECOND_ORDER:
        floats = (4 + 2 * inner_steps) * params + cost.activations * (
            3 * inner_steps * support + query)
    else:
        floats = 4 * params + cost.activations * (support + query)
    return floats * FLOAT_BYTES
