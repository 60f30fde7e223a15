"""Batched meta-batches against the per-episode loop: float64, equal to 1e-10, second
derivatives included (second-order MAML, Meta-SGD and ANIL differentiate through the inner
gradients)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call

from fedmeta.errors import ConfigError
from fedmeta.meta import ALGORITHMS, build_learner
from fedmeta.meta import base
from fedmeta.models import MLP, Conv4
from fedmeta.models.batched import batched_call, expand_params, supports_batching
from fedmeta.tasks.episode import Episode, stack_episodes

from test_meta_gradients import _image_batch, _regression_batch

TOL = 1e-10


def _per_task(params: dict, tasks: int, seed: int = 0) -> dict:
    """Different parameters for every task: ``params`` plus noise, stacked."""
    g = torch.Generator().manual_seed(seed)
    return {k: torch.stack([v + 0.3 * torch.randn(v.shape, generator=g, dtype=v.dtype)
                            for _ in range(tasks)]) for k, v in params.items()}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


def _scaled_images(tasks: int = 3, n: int = 4) -> torch.Tensor:
    """Tasks whose images differ in scale by 10x: shared batch-norm statistics would show."""
    g = torch.Generator().manual_seed(1)
    return torch.stack([torch.randn(n, 1, 28, 28, generator=g, dtype=torch.float64) * 10 ** t
                        + t for t in range(tasks)])


@pytest.mark.parametrize("module", ["conv4", "conv4.body", "mlp", "mlp.head"])
def test_batched_call_equals_per_task_calls(module: str) -> None:
    torch.manual_seed(0)
    model = (Conv4(n_way=3, channels=4) if module.startswith("conv4") else MLP()).double()
    part = getattr(model, module.split(".")[1]) if "." in module else model
    params = _per_task(dict(part.named_parameters()), 3)
    if module.startswith("conv4"):
        x = _scaled_images()
    else:
        x = torch.randn(3, 5, part.in_features if module == "mlp.head" else 1,
                        dtype=torch.float64)
    ours = batched_call(part, params, x)
    ref = torch.stack([functional_call(part, {k: v[t] for k, v in params.items()}, (x[t],))
                       for t in range(3)])
    assert ours.shape == ref.shape
    assert _rel(ours, ref) < 1e-12


def test_batchnorm_statistics_are_per_task() -> None:
    """Every task's block output is normalised by its own images only."""
    block = Conv4(channels=4).double().body[0]
    params = expand_params(dict(block.named_parameters()), 3)
    out = batched_call(nn.Sequential(block[0], block[1]), params, _scaled_images())
    # weight 1, bias 0: each task's channels have mean 0 and (biased) variance 1
    mean = out.mean(dim=(1, 3, 4))
    var = out.var(dim=(1, 3, 4), unbiased=False)
    torch.testing.assert_close(mean, torch.zeros_like(mean), atol=1e-10, rtol=0)
    torch.testing.assert_close(var, torch.ones_like(var), atol=1e-4, rtol=0)


def test_unsupported_models_fall_back_to_the_loop_and_refuse_batched_true() -> None:
    model = nn.Sequential(nn.Linear(1, 4), nn.Tanh(), nn.Linear(4, 1)).double()
    assert not supports_batching(model)
    with pytest.raises(ConfigError, match="train.batched.*Sequential"):
        build_learner("maml", model, inner_lr=0.05, batched=True)
    learner = build_learner("maml", model, inner_lr=0.05)  # auto: the loop, on any device
    batch = _regression_batch()
    meta = torch.device("meta")  # where auto would batch a model it can batch
    on_device = type(batch)(*(getattr(batch, f).to(meta) for f in
                              ("support_x", "support_y", "query_x", "query_y")), batch.n_way)
    assert not learner.batches(on_device)
    update = learner.meta_update(learner.init_params(), batch)
    assert torch.isfinite(update.direction["0.weight"]).all()
    assert supports_batching(Conv4()) and supports_batching(MLP())


def _pair(name: str, model: nn.Module, **kwargs):
    batched = build_learner(name, copy.deepcopy(model), batched=True, **kwargs)
    loop = build_learner(name, copy.deepcopy(model), batched=False, **kwargs)
    return batched, loop


CASES = [(name, kind) for name in sorted(ALGORITHMS) for kind in ("conv4", "mlp")
         if ALGORITHMS[name].runs_episodes_together  # the others refuse batched=True
         and not (ALGORITHMS[name].few_shot_only and kind == "mlp")]


def _case(kind: str):
    torch.manual_seed(0)
    if kind == "conv4":
        return Conv4(n_way=3, channels=4).double(), _image_batch(n_tasks=3), 0.3
    return MLP(1, (8, 8), 1).double(), _regression_batch(n_tasks=4), 0.05


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_batched_meta_update_equals_the_loop(name: str, kind: str) -> None:
    model, batch, lr = _case(kind)
    batched, loop = _pair(name, model, inner_lr=lr, inner_steps=2)
    params = batched.init_params()
    if name == "metasgd":  # per-entry learning rates that differ
        g = torch.Generator().manual_seed(2)
        params = {k: v * (0.5 + torch.rand(v.shape, generator=g, dtype=v.dtype))
                  if k.startswith("inner_lr.") else v for k, v in params.items()}
    ours, ref = batched.meta_update(params, batch), loop.meta_update(params, batch)
    flat = lambda d: torch.cat([d[k].flatten() for k in params])  # noqa: E731
    assert ours.direction.keys() == ref.direction.keys()
    assert _rel(flat(ours.direction), flat(ref.direction)) < TOL
    assert ours.metrics.keys() == ref.metrics.keys()
    for key, value in ref.metrics.items():
        assert ours.metrics[key] == pytest.approx(value, rel=TOL, abs=TOL)


@pytest.mark.parametrize(("name", "kind"), CASES)
def test_batched_evaluation_equals_the_loop_in_chunks(name: str, kind: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    model, batch, lr = _case(kind)
    batched, loop = _pair(name, model, inner_lr=lr, inner_steps=1)
    params = batched.init_params()
    ref = loop.evaluate(params, batch, steps=3)
    whole = batched.evaluate(params, batch, steps=3)
    per_task = batch.support_x.shape[1] + batch.query_x.shape[1]
    monkeypatch.setattr(base, "EVAL_IMAGES", 2 * per_task)  # chunks of 2 tasks, one of 1
    chunked = batched.evaluate(params, batch, steps=3)
    for metric, values in ref.items():
        assert values.shape == (len(batch),)
        for ours in (whole[metric], chunked[metric]):
            torch.testing.assert_close(ours, values, rtol=TOL, atol=TOL, equal_nan=True)


@pytest.mark.parametrize("batched", [False, True])
def test_anil_evaluation_runs_the_body_once_and_scores_as_the_whole_model(
        batched: bool) -> None:
    """ANIL scores the queries' body features once for before and after adapting; the
    reference is the generic scoring, which runs the whole model twice."""
    from fedmeta.meta.base import MetaLearner
    model, batch, lr = _case("conv4")
    anil = build_learner("anil", model, inner_lr=lr, inner_steps=1, batched=batched)
    params = _per_task(anil.init_params(), 1, seed=5)
    params = {k: v[0] for k, v in params.items()}  # not the template's: heads matter
    ours = anil.evaluate(params, batch, steps=3)
    for i in range(len(batch)):
        ref = MetaLearner._scores(anil, params, batch.support_x[i], batch.support_y[i],
                                  batch.query_x[i], batch.query_y[i], 3, batch.n_way)
        for metric, value in zip(("pre_loss", "pre_acc", "post_loss", "post_acc"), ref):
            assert float(ours[metric][i]) == pytest.approx(float(value), rel=TOL, abs=TOL)
    calls = []
    body_forward = model.body.forward
    model.body.forward = lambda x: calls.append(x.shape[0]) or body_forward(x)
    try:
        anil.evaluate(params, batch, steps=3)
    finally:
        del model.body.forward
    if not batched:  # one call per episode for the support set, one for the queries
        assert calls == [n for _ in range(len(batch))
                         for n in (batch.query_x.shape[1], batch.support_x.shape[1])]


def test_step_grad_without_grad_mode_is_func_grad_without_a_graph() -> None:
    """Under no_grad (first-order inner loops, evaluation) the inner-step gradient comes
    from torch.autograd: the same numbers as torch.func.grad, and nothing to differentiate;
    with grad mode on it is func.grad's, differentiable again."""
    from torch.func import grad

    model, batch, _ = _case("conv4")
    params = dict(model.named_parameters())
    x, y = batch.support_x[0], batch.support_y[0]

    def loss(p):
        return base.task_loss(functional_call(model, p, (x,)), y)

    ref = grad(loss)({k: v.detach() for k, v in params.items()})
    with torch.no_grad():
        ours = base.step_grad(loss, params)
    for k in params:
        assert torch.equal(ours[k], ref[k]) and not ours[k].requires_grad
    inner = base.step_grad(loss, params)
    second = torch.autograd.grad(sum(g.pow(2).sum() for g in inner.values()),
                                 params["body.0.0.weight"])[0]
    assert second.abs().sum() > 0


def test_second_order_terms_are_in_the_batched_gradient() -> None:
    """The batched MAML gradient is not the first-order one: the Hessian terms count."""
    model, batch, lr = _case("conv4")
    maml = build_learner("maml", copy.deepcopy(model), inner_lr=lr, inner_steps=2,
                         batched=True)
    fo = build_learner("fomaml", copy.deepcopy(model), inner_lr=lr, inner_steps=2,
                       batched=True)
    params = maml.init_params()
    second = maml.meta_update(params, batch).direction["body.0.0.weight"]
    first = fo.meta_update(params, batch).direction["body.0.0.weight"]
    assert _rel(first, second) > 1e-3


def test_single_precision_batched_stays_close_to_the_loop() -> None:
    torch.manual_seed(0)
    model = Conv4(n_way=5, channels=16)
    g = torch.Generator().manual_seed(3)
    episodes = [Episode(torch.randn(5, 1, 28, 28, generator=g), torch.arange(5),
                        torch.randn(15, 1, 28, 28, generator=g), torch.arange(5).repeat(3), 5)
                for _ in range(4)]
    batch = stack_episodes(episodes)
    batched, loop = _pair("maml", model, inner_lr=0.4, inner_steps=1)
    params = batched.init_params()
    ours, ref = batched.meta_update(params, batch), loop.meta_update(params, batch)
    flat = lambda d: torch.cat([d[k].flatten() for k in params])  # noqa: E731
    assert _rel(flat(ours.direction), flat(ref.direction)) < 1e-4


def test_episodes_of_mixed_shapes_are_scored_in_order_as_one_at_a_time() -> None:
    from fedmeta.evaluate_episodes import score_episodes

    torch.manual_seed(0)
    model = Conv4(n_way=3, channels=4).double()
    batched, loop = _pair("maml", model, inner_lr=0.3, inner_steps=1)
    params = batched.init_params()
    g = torch.Generator().manual_seed(4)

    def episode(shot: int, queries: int) -> Episode:
        return Episode(torch.randn(3 * shot, 1, 28, 28, generator=g, dtype=torch.float64),
                       torch.arange(3).repeat(shot),
                       torch.randn(3 * queries, 1, 28, 28, generator=g, dtype=torch.float64),
                       torch.arange(3).repeat(queries), 3)

    shapes = [(1, 2), (2, 1), (1, 2), (3, 3), (2, 1), (1, 2)]
    episodes = {f"ep{i}": episode(*s) for i, s in enumerate(shapes)}
    ours = score_episodes(batched, params, episodes, steps=2)
    for i, ep in enumerate(episodes.values()):
        ref = loop.evaluate(params, stack_episodes([ep]), steps=2)
        for metric, values in ref.items():
            assert ours[metric][i] == pytest.approx(float(values[0]), rel=TOL, abs=TOL)


def test_default_batches_on_accelerators_only() -> None:
    model, batch, lr = _case("conv4")
    auto = build_learner("maml", model, inner_lr=lr)
    threads = torch.get_num_threads()
    try:
        for count in (1, 2):  # the CPU loops whatever its thread count
            torch.set_num_threads(count)
            assert auto.batched is None and not auto.batches(batch)
            assert build_learner("maml", model, batched=True).batches(batch)
    finally:
        torch.set_num_threads(threads)
    meta = torch.device("meta")  # no data: only where the tensors live matters
    on_device = type(batch)(*(getattr(batch, f).to(meta) for f in
                              ("support_x", "support_y", "query_x", "query_y")), batch.n_way)
    assert auto.batches(on_device)
    assert not build_learner("maml", model, batched=False).batches(on_device)
    with pytest.raises(ConfigError, match="batched"):
        build_learner("maml", model, batched="yes")
