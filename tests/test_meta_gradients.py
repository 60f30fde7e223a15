"""The meta-gradients against independent references: float64 double backward, finite
differences, and cases small enough to work out by hand."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from fedmeta.meta import (ANIL, MAML, FirstOrderMAML, JointTraining, MetaSGD, PerFedAvgFO,
                          PerFedAvgHF, ProtoNet, Reptile)
from fedmeta.models import MLP, Conv4
from fedmeta.tasks.episode import Episode, stack_episodes


def _regression_batch(n_tasks: int = 3, k: int = 5, q: int = 6, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(n_tasks):
        x = torch.rand(k + q, 1, generator=g, dtype=torch.float64) * 10 - 5
        y = 2 * torch.sin(x - 0.5) + 0.1 * torch.randn(k + q, 1, generator=g, dtype=torch.float64)
        eps.append(Episode(x[:k], y[:k], x[k:], y[k:], None))
    return stack_episodes(eps)


def _image_batch(n_tasks: int = 2, n_way: int = 3, k: int = 2, q: int = 2, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    eps = []
    for _ in range(n_tasks):
        sx = torch.randn(n_way * k, 1, 28, 28, generator=g, dtype=torch.float64)
        qx = torch.randn(n_way * q, 1, 28, 28, generator=g, dtype=torch.float64)
        eps.append(Episode(sx, torch.arange(n_way).repeat(k), qx, torch.arange(n_way).repeat(q),
                           n_way))
    return stack_episodes(eps)


def _mlp_forward(p: dict, x: torch.Tensor) -> torch.Tensor:
    """MLP(1-8-8-1) written out by hand: the reference does not use functional_call."""
    h = torch.relu(x @ p["body.0.weight"].T + p["body.0.bias"])
    h = torch.relu(h @ p["body.2.weight"].T + p["body.2.bias"])
    return h @ p["head.weight"].T + p["head.bias"]


def _conv4_forward(p: dict, x: torch.Tensor) -> torch.Tensor:
    """Conv4 written out with torch.nn.functional, batch-norm on the batch's statistics."""
    for i in range(4):
        b = f"body.{i}."
        x = F.conv2d(x, p[b + "0.weight"], p[b + "0.bias"], padding=1)
        x = F.batch_norm(x, None, None, p[b + "1.weight"], p[b + "1.bias"], training=True)
        x = F.max_pool2d(F.relu(x), 2)
    return x.flatten(1) @ p["head.weight"].T + p["head.bias"]


def _reference_maml_grad(forward, params, batch, lr, steps, loss_fn):
    """Second-order MAML by explicit double backward, one task at a time."""
    theta = {k: v.detach().clone().requires_grad_(True) for k, v in params.items()}
    total = 0.0
    for i in range(len(batch)):
        fast = dict(theta)
        for _ in range(steps):
            loss = loss_fn(forward(fast, batch.support_x[i]), batch.support_y[i])
            grads = torch.autograd.grad(loss, list(fast.values()), create_graph=True)
            fast = {k: v - lr * g for (k, v), g in zip(fast.items(), grads)}
        total = total + loss_fn(forward(fast, batch.query_x[i]), batch.query_y[i])
    grads = torch.autograd.grad(total / len(batch), list(theta.values()))
    return dict(zip(theta, grads))


def _assert_close(ours: dict, ref: dict, rtol: float) -> None:
    assert ours.keys() == ref.keys()
    flat_ours = torch.cat([ours[k].flatten() for k in ref])
    flat_ref = torch.cat([ref[k].flatten() for k in ref])
    rel = (flat_ours - flat_ref).norm() / flat_ref.norm()
    assert rel < rtol, f"relative error {rel:.2e}"
    assert flat_ref.norm() > 0


@pytest.mark.parametrize("steps", [1, 3])
def test_maml_matches_double_backward_on_mlp(steps: int) -> None:
    torch.manual_seed(0)
    learner = MAML(MLP(1, (8, 8), 1).double(), inner_lr=0.05, inner_steps=steps)
    params = learner.init_params()
    batch = _regression_batch()
    ours = learner.meta_update(params, batch).direction
    ref = _reference_maml_grad(_mlp_forward, params, batch, 0.05, steps, F.mse_loss)
    _assert_close(ours, ref, 1e-6)


def test_maml_matches_double_backward_on_conv4_with_batchnorm() -> None:
    torch.manual_seed(0)
    learner = MAML(Conv4(n_way=3, channels=4).double(), inner_lr=0.3, inner_steps=2)
    params = learner.init_params()
    batch = _image_batch()
    ours = learner.meta_update(params, batch).direction
    ref = _reference_maml_grad(_conv4_forward, params, batch, 0.3, 2, F.cross_entropy)
    _assert_close(ours, ref, 1e-6)


def test_maml_matches_finite_differences() -> None:
    torch.manual_seed(1)
    learner = MAML(MLP(1, (8, 8), 1).double(), inner_lr=0.05, inner_steps=2)
    params = learner.init_params()
    batch = _regression_batch(n_tasks=2)
    ours = learner.meta_update(params, batch).direction

    def objective(p: dict) -> float:
        return learner.meta_update(p, batch).metrics["query_loss"]

    eps = 1e-6
    for name in ("body.0.weight", "head.bias"):
        for idx in [(0,) * params[name].dim(), tuple(s - 1 for s in params[name].shape)]:
            plus, minus = copy.deepcopy(params), copy.deepcopy(params)
            plus[name][idx] += eps
            minus[name][idx] -= eps
            fd = (objective(plus) - objective(minus)) / (2 * eps)
            assert ours[name][idx].item() == pytest.approx(fd, rel=1e-5, abs=1e-8)


def _scalar_case():
    """y = w x + b, one support point (xs, ys), one query point (xq, yq), MSE."""
    model = MLP(1, (), 1).double()
    w, b, xs, ys, xq, yq, lr = 0.7, -0.2, 1.5, 2.0, -1.0, 0.5, 0.1
    with torch.no_grad():
        model.head.weight.fill_(w)
        model.head.bias.fill_(b)
    t = lambda v: torch.tensor([[v]], dtype=torch.float64)  # noqa: E731
    batch = stack_episodes([Episode(t(xs), t(ys), t(xq), t(yq), None)])
    # one SGD step on the support point
    rs = w * xs + b - ys
    w1, b1 = w - lr * 2 * rs * xs, b - lr * 2 * rs
    rq = w1 * xq + b1 - yq
    return model, lr, batch, (w, b, xs, w1, b1, rq, xq)


def test_first_order_maml_by_hand() -> None:
    model, lr, batch, (w, b, xs, w1, b1, rq, xq) = _scalar_case()
    learner = FirstOrderMAML(model, inner_lr=lr, inner_steps=1)
    d = learner.meta_update(learner.init_params(), batch).direction
    # gradient of the query loss at the adapted weights, nothing through the inner step
    assert d["head.weight"].item() == pytest.approx(2 * rq * xq, rel=1e-12)
    assert d["head.bias"].item() == pytest.approx(2 * rq, rel=1e-12)


def test_second_order_differs_from_first_order_by_the_jacobian_by_hand() -> None:
    model, lr, batch, (w, b, xs, w1, b1, rq, xq) = _scalar_case()
    learner = MAML(model, inner_lr=lr, inner_steps=1)
    d = learner.meta_update(learner.init_params(), batch).direction
    # d(w1, b1)/d(w, b) = I - 2 lr [[xs^2, xs], [xs, 1]]
    gw, gb = 2 * rq * xq, 2 * rq
    assert d["head.weight"].item() == pytest.approx(
        gw * (1 - 2 * lr * xs * xs) + gb * (-2 * lr * xs), rel=1e-12)
    assert d["head.bias"].item() == pytest.approx(
        gw * (-2 * lr * xs) + gb * (1 - 2 * lr), rel=1e-12)


def test_reptile_by_hand() -> None:
    model, lr, batch, (w, b, xs, w1, b1, rq, xq) = _scalar_case()
    learner = Reptile(model, inner_lr=lr, inner_steps=1)
    d = learner.meta_update(learner.init_params(), batch).direction
    assert d["head.weight"].item() == pytest.approx(w - w1, rel=1e-12)
    assert d["head.bias"].item() == pytest.approx(b - b1, rel=1e-12)


def test_reptile_direction_is_mean_over_tasks_and_sgd_step_moves_toward_it() -> None:
    torch.manual_seed(0)
    learner = Reptile(MLP(1, (8,), 1).double(), inner_lr=0.02, inner_steps=4)
    params = learner.init_params()
    batch = _regression_batch(n_tasks=3)
    d = learner.meta_update(params, batch).direction
    fast = [learner.adapt(params, batch.support_x[i], batch.support_y[i]) for i in range(3)]
    for k in params:
        expected = params[k] - torch.stack([f[k] for f in fast]).mean(0)
        torch.testing.assert_close(d[k], expected)


def test_metasgd_learning_rates_match_double_backward() -> None:
    torch.manual_seed(0)
    learner = MetaSGD(MLP(1, (8,), 1).double(), inner_lr=0.05, inner_steps=1)
    params = learner.init_params()
    with torch.no_grad():  # make the learned rates differ per entry
        for k in params:
            if k.startswith("inner_lr."):
                params[k].uniform_(0.01, 0.1)
    batch = _regression_batch(n_tasks=2)
    ours = learner.meta_update(params, batch).direction

    theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    weights = {k: v for k, v in theta.items() if not k.startswith("inner_lr.")}

    def fwd(p, x):
        h = torch.relu(x @ p["body.0.weight"].T + p["body.0.bias"])
        return h @ p["head.weight"].T + p["head.bias"]

    total = 0.0
    for i in range(2):
        loss = F.mse_loss(fwd(weights, batch.support_x[i]), batch.support_y[i])
        g = torch.autograd.grad(loss, list(weights.values()), create_graph=True)
        fast = {k: v - theta["inner_lr." + k] * gk for (k, v), gk in zip(weights.items(), g)}
        total = total + F.mse_loss(fwd(fast, batch.query_x[i]), batch.query_y[i])
    ref = dict(zip(theta, torch.autograd.grad(total / 2, list(theta.values()))))
    _assert_close(ours, ref, 1e-6)
    assert ours["inner_lr.head.weight"].abs().sum() > 0


def test_anil_adapts_only_the_head_and_matches_reference() -> None:
    torch.manual_seed(0)
    learner = ANIL(Conv4(n_way=3, channels=4).double(), inner_lr=0.3, inner_steps=2)
    params = learner.init_params()
    batch = _image_batch()
    fast = learner.adapt(params, batch.support_x[0], batch.support_y[0])
    for k in params:
        changed = not torch.equal(fast[k], params[k])
        assert changed == k.startswith("head."), k

    theta = {k: v.clone().requires_grad_(True) for k, v in params.items()}
    total = 0.0
    for i in range(len(batch)):
        head = {k: theta[k] for k in ("head.weight", "head.bias")}
        for _ in range(2):
            full = theta | head
            loss = F.cross_entropy(_conv4_forward(full, batch.support_x[i]), batch.support_y[i])
            g = torch.autograd.grad(loss, list(head.values()), create_graph=True)
            head = {k: v - 0.3 * gk for (k, v), gk in zip(head.items(), g)}
        total = total + F.cross_entropy(_conv4_forward(theta | head, batch.query_x[i]),
                                        batch.query_y[i])
    ref = dict(zip(theta, torch.autograd.grad(total / len(batch), list(theta.values()))))
    _assert_close(learner.meta_update(params, batch).direction, ref, 1e-6)


def test_protonet_scores_by_distance_to_support_means() -> None:
    torch.manual_seed(0)
    learner = ProtoNet(Conv4(n_way=3, channels=4).double())
    params = learner.init_params()
    assert all(k.startswith("body.") for k in params)
    batch = _image_batch(n_tasks=1, k=2)
    sx, sy, qx = batch.support_x[0], batch.support_y[0], batch.query_x[0]
    logits = learner.classify(params, sx, sy, qx, 3)
    emb_s, emb_q = learner.embed(params, sx), learner.embed(params, qx)
    protos = torch.stack([emb_s[sy == c].mean(0) for c in range(3)])
    expected = -((emb_q[:, None, :] - protos[None]) ** 2).sum(-1)
    torch.testing.assert_close(logits, expected)


def test_joint_training_is_the_pooled_loss_gradient_by_hand() -> None:
    model, lr, batch, (w, b, *_rest) = _scalar_case()
    learner = JointTraining(model, inner_lr=lr)
    d = learner.meta_update(learner.init_params(), batch).direction
    xs, ys = batch.support_x[0, 0, 0].item(), batch.support_y[0, 0, 0].item()
    xq, yq = batch.query_x[0, 0, 0].item(), batch.query_y[0, 0, 0].item()
    rs, rq = w * xs + b - ys, w * xq + b - yq  # mean of two squared errors
    assert d["head.weight"].item() == pytest.approx(rs * xs + rq * xq, rel=1e-12)
    assert d["head.bias"].item() == pytest.approx(rs + rq, rel=1e-12)


def test_perfedavg_fo_equals_fomaml_with_one_step() -> None:
    torch.manual_seed(0)
    model = MLP(1, (8,), 1).double()
    batch = _regression_batch()
    fo = PerFedAvgFO(model, inner_lr=0.05, inner_steps=1)
    params = fo.init_params()
    ref = FirstOrderMAML(model, inner_lr=0.05, inner_steps=1).meta_update(params, batch)
    _assert_close(fo.meta_update(params, batch).direction, ref.direction, 1e-12)


def test_perfedavg_hf_approximates_the_exact_hessian_vector_product() -> None:
    torch.manual_seed(0)
    model = MLP(1, (8,), 1).double()
    batch = _regression_batch(n_tasks=1)
    hf = PerFedAvgHF(model, inner_lr=0.05, inner_steps=1)
    params = hf.init_params()
    ours = hf.meta_update(params, batch).direction
    # exact: (I - a H_S(theta)) v with v the FO direction, H by double backward
    v = PerFedAvgFO(model, inner_lr=0.05).meta_update(params, batch).direction
    theta = {k: p.clone().requires_grad_(True) for k, p in params.items()}
    loss = F.mse_loss(_mlp_forward_1(theta, batch.support_x[0]), batch.support_y[0])
    g = torch.autograd.grad(loss, list(theta.values()), create_graph=True)
    hv = torch.autograd.grad(sum((gi * v[k]).sum() for gi, k in zip(g, theta)),
                             list(theta.values()))
    exact = {k: v[k] - 0.05 * h for k, h in zip(theta, hv)}
    _assert_close(ours, exact, 1e-6)
    assert not torch.allclose(exact["head.weight"], v["head.weight"])


def _mlp_forward_1(p: dict, x: torch.Tensor) -> torch.Tensor:
    h = torch.relu(x @ p["body.0.weight"].T + p["body.0.bias"])
    return h @ p["head.weight"].T + p["head.bias"]
