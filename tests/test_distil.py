"""Meta-distillation (``fedmeta.export.distil``): the loss and its meta-gradient equal a
float64 reference written out here with plain autograd, a meta-update is the optimizer step
on their mean, a run is deterministic, and distilling lowers the loss on held episodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.func import functional_call

from fedmeta.checkpoint import Checkpoint
from fedmeta.errors import ConfigError
from fedmeta.export.distil import ALPHA, TEMPERATURE, distil, student_grad, teacher_outputs
from fedmeta.export.prune import prune_conv4
from fedmeta.meta import build_learner
from fedmeta.models import Conv4
from fedmeta.tasks.episode import Episode

SIDE = 16  # Conv4's smallest image: 16 -> 8 -> 4 -> 2 -> 1


class Glyphs:
    """5-way 1-shot episodes (2 queries a class) of 10 fixed random 16x16 patterns, each
    image with its own noise."""

    def __init__(self, dtype: torch.dtype = torch.float32) -> None:
        self.patterns = torch.rand(10, 1, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
        self.dtype = dtype

    def sample(self, rng: np.random.Generator) -> Episode:
        classes = rng.choice(10, 5, replace=False)
        labels = np.concatenate([np.arange(5), np.repeat(np.arange(5), 2)])
        noise = torch.from_numpy(rng.normal(0.0, 0.3, (15, 1, SIDE, SIDE)))
        x = (self.patterns[classes[labels]] + noise).to(self.dtype)
        y = torch.from_numpy(labels)
        return Episode(x[:5], y[:5], x[5:], y[5:], n_way=5)


def checkpoint(algorithm: str, channels: int, seed: int) -> Checkpoint:
    torch.manual_seed(seed)
    kwargs = {"n_way": 5, "channels": channels, "image_size": SIDE}
    params = {k: v.detach().clone() for k, v in Conv4(**kwargs).named_parameters()}
    return Checkpoint(algorithm, "conv4", kwargs, {"inner_lr": 0.4, "inner_steps": 2},
                      params, {"kind": "synthetic"})


def reference_adapt(model: Conv4, params: dict, sx: torch.Tensor, sy: torch.Tensor,
                    head_only: bool, create_graph: bool) -> dict:
    """Two SGD steps (lr 0.4) on the support cross-entropy, written out."""
    fast = dict(params)
    names = [k for k in fast if k.startswith("head.") or not head_only]
    for _ in range(2):
        logits = functional_call(model, fast, (sx,))
        loss = -logits.log_softmax(-1)[torch.arange(len(sy)), sy].mean()
        grads = torch.autograd.grad(loss, [fast[k] for k in names], create_graph=create_graph)
        fast = fast | {k: fast[k] - 0.4 * g for k, g in zip(names, grads)}
    return fast


def reference_loss(student: torch.Tensor, teacher: torch.Tensor, y: torch.Tensor,
                   temperature: float, alpha: float) -> torch.Tensor:
    p = (teacher / temperature).softmax(-1)
    kl = (p * (p.log() - (student / temperature).log_softmax(-1))).sum(-1).mean()
    ce = -student.log_softmax(-1)[torch.arange(len(y)), y].mean()
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("algorithm", ["anil", "maml", "fomaml"])
def test_loss_and_meta_gradient_equal_a_float64_reference(algorithm: str) -> None:
    teacher, student = checkpoint(algorithm, 6, 0), checkpoint(algorithm, 3, 1)
    episode = Glyphs(torch.float64).sample(np.random.default_rng(5))
    models = [Conv4(**ck.model_kwargs).double() for ck in (teacher, student)]
    t_params, s_params = ({k: v.double() for k, v in ck.params.items()}
                          for ck in (teacher, student))
    learners = [build_learner(algorithm, m, inner_lr=0.4, inner_steps=2) for m in models]
    target = teacher_outputs(learners[0], t_params, episode)
    grads, loss = student_grad(learners[1], s_params, episode, target, 3.0, 0.3)

    head_only = algorithm == "anil"
    sx, sy, qx, qy = episode.support_x, episode.support_y, episode.query_x, episode.query_y
    leaves = {k: v.clone().requires_grad_(True) for k, v in t_params.items()}
    fast = reference_adapt(models[0], leaves, sx, sy, head_only, False)
    expected_target = functional_call(models[0], fast, (qx,)).detach()
    leaves = {k: v.clone().requires_grad_(True) for k, v in s_params.items()}
    fast = reference_adapt(models[1], leaves, sx, sy, head_only, algorithm != "fomaml")
    if algorithm == "fomaml":  # the gradient at the adapted weights
        leaves = fast = {k: v.detach().requires_grad_(True) for k, v in fast.items()}
    expected = reference_loss(functional_call(models[1], fast, (qx,)), expected_target, qy,
                              3.0, 0.3)
    expected_grads = torch.autograd.grad(expected, list(leaves.values()))

    torch.testing.assert_close(target, expected_target, rtol=0, atol=1e-10)
    assert loss.dtype == torch.float64 and abs(float(loss) - float(expected.detach())) < 1e-10
    assert grads.keys() == leaves.keys()
    for k, g in zip(leaves, expected_grads):
        assert float(g.abs().max()) > 0, k
        torch.testing.assert_close(grads[k], g, rtol=0, atol=1e-10, msg=k)


def test_a_meta_update_steps_on_the_mean_gradient_and_runs_are_deterministic() -> None:
    teacher = checkpoint("anil", 8, 0)
    student = checkpoint("anil", 4, 1)
    source = Glyphs()
    stepped = distil(teacher, student, source, 1, meta_batch=2, meta_lr=0.1, optimizer="sgd",
                     seed=3)
    rng = np.random.default_rng(3)
    grads = [student_grad(student.learner(), student.params, e,
                          teacher_outputs(teacher.learner(), teacher.params, e))[0]
             for e in (source.sample(rng), source.sample(rng))]
    for k, v in student.params.items():
        torch.testing.assert_close(stepped.params[k], v - 0.1 * (grads[0][k] + grads[1][k]) / 2)
    again = distil(teacher, student, source, 1, meta_batch=2, meta_lr=0.1, optimizer="sgd",
                   seed=3)
    assert all(torch.equal(again.params[k], v) for k, v in stepped.params.items())
    assert stepped.model_kwargs["channels"] == 4 and stepped.algorithm == "anil"


def test_distillation_lowers_the_loss_on_held_episodes() -> None:
    """The KL term alone (``alpha=1``): on this toy task the query cross-entropy of a
    4-channel student barely moves in 20 updates, and neither does the default mix."""
    teacher = checkpoint("anil", 8, 0)
    student = Checkpoint("anil", "conv4", {**teacher.model_kwargs, "channels": 4},
                         teacher.learner_kwargs, prune_conv4(teacher.params, 4), teacher.task)
    source = Glyphs()
    rng = np.random.default_rng(99)
    held = [source.sample(rng) for _ in range(8)]
    targets = [teacher_outputs(teacher.learner(), teacher.params, e) for e in held]

    def held_loss(ck: Checkpoint) -> float:
        return float(np.mean([float(student_grad(ck.learner(), ck.params, e, t, alpha=1.0)[1])
                              for e, t in zip(held, targets)]))

    losses: list[float] = []
    trained = distil(teacher, student, source, 20, meta_batch=4, meta_lr=0.01, seed=0,
                     alpha=1.0, callback=lambda it, loss: losses.append(loss))
    assert len(losses) == 20
    assert held_loss(trained) < 0.7 * held_loss(student)


def test_the_documented_defaults() -> None:  # as fedmeta compress --help states them
    assert (TEMPERATURE, ALPHA) == (4.0, 0.5)


def test_bad_settings_are_refused() -> None:
    teacher, student = checkpoint("anil", 8, 0), checkpoint("anil", 4, 1)
    with pytest.raises(ConfigError, match="protonet"):
        distil(checkpoint("protonet", 8, 0), student, Glyphs(), 1, 1, 0.1)
    with pytest.raises(ConfigError, match="student algorithm"):
        distil(teacher, checkpoint("maml", 4, 1), Glyphs(), 1, 1, 0.1)
    for kwargs, field in (({"temperature": 0.0}, "temperature"), ({"alpha": 1.5}, "alpha")):
        with pytest.raises(ConfigError, match=field):
            distil(teacher, student, Glyphs(), 1, 1, 0.1, **kwargs)
