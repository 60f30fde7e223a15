"""Matching Networks, Relation Networks, SNAIL and LEO: meta-gradients against float64
references written out here with torch.nn.functional and plain autograd (no learner code),
and their behaviour as learners (any-way scoring, errors for what they cannot do)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fedmeta.errors import ConfigError
from fedmeta.meta import build_learner
from fedmeta.meta.snail import SnailModel
from fedmeta.models import MLP, Conv4
from fedmeta.tasks.episode import Episode, stack_episodes

N_WAY, K_SHOT, QUERIES, CHANNELS = 3, 2, 2, 4


def _batch(n_tasks: int = 2, n_way: int = N_WAY, k: int = K_SHOT, q: int = QUERIES,
           seed: int = 0):
    """Float64 episodes with shuffled labels (support and query in no class order)."""
    g = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(n_tasks):
        sy = torch.arange(n_way).repeat(k)[torch.randperm(n_way * k, generator=g)]
        qy = torch.arange(n_way).repeat(q)[torch.randperm(n_way * q, generator=g)]
        eps.append(Episode(torch.randn(n_way * k, 1, 28, 28, generator=g, dtype=torch.float64),
                           sy, torch.randn(n_way * q, 1, 28, 28, generator=g,
                                           dtype=torch.float64), qy, n_way))
    return stack_episodes(eps)


def _learner(name: str, **kwargs):
    torch.manual_seed(0)
    learner = build_learner(name, Conv4(n_way=N_WAY, channels=CHANNELS).double(), **kwargs)
    params = learner.init_params()
    g = torch.Generator().manual_seed(1)  # batch-norm scales away from 1, biases from 0
    params = {k: v + 0.1 * torch.randn(v.shape, generator=g, dtype=v.dtype)
              for k, v in params.items()}
    return learner, params


def _body(p: dict, x: torch.Tensor, pools: tuple[bool, ...] = (True,) * 4) -> torch.Tensor:
    """Conv4's body by hand: conv, batch-norm on the batch's statistics, ReLU, max-pool."""
    for i, pool in enumerate(pools):
        b = f"body.{i}."
        x = F.conv2d(x, p[b + "0.weight"], p[b + "0.bias"], padding=1)
        mean = x.mean((0, 2, 3), keepdim=True)
        var = x.var((0, 2, 3), unbiased=False, keepdim=True)
        x = (x - mean) / torch.sqrt(var + 1e-5) * p[b + "1.weight"].view(1, -1, 1, 1) \
            + p[b + "1.bias"].view(1, -1, 1, 1)
        x = torch.relu(x)
        if pool:
            x = F.max_pool2d(x, 2)
    return x


def _reference(loss_of_task, params: dict, batch) -> dict:
    """Gradient of the mean over tasks of ``loss_of_task(p, sx, sy, qx, qy)``."""
    leaves = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    total = sum(loss_of_task(leaves, batch.support_x[i], batch.support_y[i],
                             batch.query_x[i], batch.query_y[i]) for i in range(len(batch)))
    grads = torch.autograd.grad(total / len(batch), list(leaves.values()))
    return dict(zip(leaves, grads))


def _assert_matches(learner, params: dict, batch, loss_of_task) -> None:
    ours = learner.meta_update(params, batch).direction
    ref = _reference(loss_of_task, params, batch)
    assert ours.keys() == ref.keys()
    for k in ref:
        assert ref[k].abs().max() > 0, k  # every meta-parameter is learned
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-7, atol=1e-10, msg=k)


def _matching_loss(p, sx, sy, qx, qy):
    f, g = _body(p, qx).flatten(1), _body(p, sx).flatten(1)
    cosine = f @ (g / g.norm(dim=1, keepdim=True)).T
    probs = torch.softmax(cosine, dim=1) @ F.one_hot(sy, N_WAY).double()
    return -torch.log(probs[torch.arange(len(qy)), qy]).mean()


def test_matching_meta_gradient_matches_a_float64_reference() -> None:
    learner, params = _learner("matching")
    assert all(k.startswith("body.") for k in params)
    _assert_matches(learner, params, _batch(), _matching_loss)


def _relation_forward(p, pairs):
    x = pairs
    for i in range(2):
        b = f"relation.{i}."
        x = F.conv2d(x, p[b + "0.weight"], p[b + "0.bias"], padding=1)
        x = F.batch_norm(x, None, None, p[b + "1.weight"], p[b + "1.bias"], training=True)
        x = F.max_pool2d(torch.relu(x), 2)
    x = x.amax((2, 3))
    x = torch.relu(x @ p["relation.4.weight"].T + p["relation.4.bias"])
    return torch.sigmoid(x @ p["relation.6.weight"].T + p["relation.6.bias"]).squeeze(1)


def _relation_loss(p, sx, sy, qx, qy):
    pools = (True, True, False, False)
    support, query = _body(p, sx, pools), _body(p, qx, pools)
    classes = [support[sy == k].sum(0) for k in range(N_WAY)]
    pairs = torch.stack([torch.cat([classes[k], query[j]])
                         for j in range(len(qy)) for k in range(N_WAY)])
    scores = _relation_forward(p, pairs)
    target = torch.tensor([float(qy[j] == k) for j in range(len(qy)) for k in range(N_WAY)],
                          dtype=torch.float64)
    return ((scores - target) ** 2).mean()


def test_relation_meta_gradient_matches_a_float64_reference() -> None:
    learner, params = _learner("relation")
    assert {k.split(".")[0] for k in params} == {"body", "relation"}
    _assert_matches(learner, params, _batch(), _relation_loss)


def _causal_conv(x, weight, bias, dilation):
    """Kernel-2 causal convolution written per time step: ``W0 x[t-d] + W1 x[t] + b``."""
    steps = []
    for t in range(x.shape[1]):
        past = x[:, t - dilation] if t >= dilation else torch.zeros_like(x[:, t])
        steps.append(weight[:, :, 0] @ past + weight[:, :, 1] @ x[:, t] + bias)
    return torch.stack(steps, dim=1)


def _attention(p, prefix, x):
    """``[x, causal attention(x)]`` written per position on ``(channels, T)``."""
    h = x.T
    q = h @ p[prefix + "query.weight"].T + p[prefix + "query.bias"]
    k = h @ p[prefix + "key.weight"].T + p[prefix + "key.bias"]
    v = h @ p[prefix + "value.weight"].T + p[prefix + "value.bias"]
    rows = [torch.softmax(q[t] @ k[:t + 1].T / math.sqrt(k.shape[1]), 0) @ v[:t + 1]
            for t in range(h.shape[0])]
    return torch.cat([x, torch.stack(rows, dim=1)])


def _snail_sequence(p, x):
    """SNAIL's blocks by hand on one sequence ``(channels, T)``: attention, then twice
    (TC of dilations 1, 2, 4, 8, attention)."""
    x = _attention(p, "sequence.0.", x)
    for block in range(2):
        tc = f"sequence.{1 + 2 * block}."
        for level in range(4):
            w, b = p[f"{tc}{level}.conv.weight"], p[f"{tc}{level}.conv.bias"]
            out = _causal_conv(x, w, b, 2 ** level)
            half = out.shape[0] // 2
            x = torch.cat([x, torch.tanh(out[:half]) * torch.sigmoid(out[half:])])
        x = _attention(p, f"sequence.{2 + 2 * block}.", x)
    return x


def _snail_loss(p, sx, sy, qx, qy):
    support = torch.cat([_body(p, sx).flatten(1), F.one_hot(sy, N_WAY).double()], 1)
    query = _body(p, qx).flatten(1)
    losses = []
    for j in range(len(qy)):
        last = torch.cat([query[j], torch.zeros(N_WAY, dtype=torch.float64)])
        out = _snail_sequence(p, torch.cat([support, last.unsqueeze(0)]).T)[:, -1]
        logits = out @ p["head.weight"].T + p["head.bias"]
        losses.append(F.cross_entropy(logits.unsqueeze(0), qy[j:j + 1]))
    return torch.stack(losses).mean()


def test_snail_meta_gradient_matches_a_float64_reference() -> None:
    learner, params = _learner("snail")
    assert {k.split(".")[0] for k in params} == {"body", "sequence", "head"}
    # 3-way 2-shot: 7 positions, so the dilations 4 and 8 reach past the start
    _assert_matches(learner, params, _batch(), _snail_loss)


def _leo_loss(p, sx, sy, qx, qy, lr=0.7, steps=2, ft_lr=0.3, ft_steps=2):
    support, query = _body(p, sx).flatten(1), _body(p, qx).flatten(1)
    e = support @ p["encoder.weight"].T + p["encoder.bias"]
    codes = []
    for k in range(N_WAY):
        pair_outputs = []
        for i in torch.nonzero(sy == k).flatten().tolist():
            for j in range(len(sy)):
                h = torch.relu(torch.cat([e[i], e[j]]) @ p["relation.0.weight"].T
                               + p["relation.0.bias"])
                pair_outputs.append(h @ p["relation.2.weight"].T + p["relation.2.bias"])
        codes.append(torch.stack(pair_outputs).mean(0))
    z = torch.stack(codes)

    def support_loss(w):
        return F.cross_entropy(support @ w.T, sy)

    def decode(z):
        return z @ p["decoder.weight"].T + p["decoder.bias"]

    for _ in range(steps):
        z = z - lr * torch.autograd.grad(support_loss(decode(z)), z, create_graph=True)[0]
    w = decode(z)
    for _ in range(ft_steps):
        w = w - ft_lr * torch.autograd.grad(support_loss(w), w, create_graph=True)[0]
    return F.cross_entropy(query @ w.T, qy)


def test_leo_meta_gradient_matches_a_float64_reference() -> None:
    learner, params = _learner("leo", inner_lr=0.7, inner_steps=2, finetune_lr=0.3,
                               finetune_steps=2)
    assert {k.split(".")[0] for k in params} == {"body", "encoder", "relation", "decoder"}
    _assert_matches(learner, params, _batch(), _leo_loss)


def test_leo_adapt_then_predict_is_classify() -> None:
    learner, params = _learner("leo", inner_lr=0.7, inner_steps=2)
    batch = _batch(n_tasks=1)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    adapted = learner.adapt(params, sx, sy)
    torch.testing.assert_close(learner.predict(adapted, qx),
                               learner.classify(params, sx, sy, qx, N_WAY))


@pytest.mark.parametrize("name", ["matching", "relation", "leo"])
def test_metric_learners_score_any_number_of_classes(name: str) -> None:
    learner, params = _learner(name)
    scores = learner.evaluate(params, _batch(n_way=5, k=1))  # a 3-way model, 5-way episodes
    assert torch.isnan(scores["pre_acc"]).all() and torch.isfinite(scores["post_loss"]).all()
    assert learner.any_way


def test_snail_scores_only_its_heads_number_of_classes() -> None:
    learner, params = _learner("snail")
    assert not learner.any_way
    with pytest.raises(ValueError, match="3-way episodes, not 5-way"):
        learner.evaluate(params, _batch(n_way=5, k=1))


@pytest.mark.parametrize("name", ["matching", "relation", "snail", "leo"])
def test_regression_episodes_are_refused(name: str) -> None:
    learner, params = _learner(name)
    x = torch.zeros(2, 5, 1)
    with pytest.raises(ValueError, match="classification"):
        learner.meta_update(params, stack_episodes([Episode(x[0], x[0], x[1], x[1], None)]))


@pytest.mark.parametrize("name", ["matching", "relation", "snail", "leo"])
def test_models_they_cannot_use_are_config_errors(name: str) -> None:
    with pytest.raises(ConfigError, match="a model with a body"):
        build_learner(name, torch.nn.Linear(1, 1))
    if name == "relation":
        with pytest.raises(ConfigError, match="conv4"):
            build_learner(name, MLP())


def test_leo_finetuning_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="finetune_steps"):
        build_learner("leo", Conv4(), finetune_steps=0)


def test_snail_sequence_model_learns_to_copy_the_matching_label() -> None:
    """SNAIL's TC and attention blocks alone (identity embedding) on separable vectors:
    a query near one support vector must output that position's label. (End to end on
    Conv4 features SNAIL stays at chance at the budgets tried here: README.)"""
    torch.manual_seed(0)
    n_way, dim, tasks = 5, 64, 16
    model = SnailModel(torch.nn.Identity(), dim, n_way)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)

    def logits_and_labels(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        protos = torch.randn(count, n_way, dim)
        order = torch.randperm(n_way)
        support = torch.cat([protos, torch.eye(n_way).expand(count, n_way, n_way)], 2)
        labels = torch.randint(0, n_way, (count,))
        query = protos[torch.arange(count), labels] + 0.3 * torch.randn(count, dim)
        last = torch.cat([query, torch.zeros(count, n_way)], 1).unsqueeze(1)
        sequence = torch.cat([support[:, order], last], 1).transpose(1, 2)
        return model.head(model.sequence(sequence)[:, :, -1]), labels

    for _ in range(250):
        logits, labels = logits_and_labels(tasks)
        optimizer.zero_grad()
        F.cross_entropy(logits, labels).backward()
        optimizer.step()
    with torch.no_grad():
        logits, labels = logits_and_labels(500)
    assert (logits.argmax(1) == labels).float().mean() > 0.8  # chance: 0.2
