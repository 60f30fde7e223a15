"""``precision="bfloat16"``: evaluation and first-order meta-updates under bfloat16 autocast,
second-order meta-updates untouched, results and gradients in float32."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from fedmeta import config
from fedmeta.errors import ConfigError
from fedmeta.meta import build_learner
from fedmeta.models import Conv4
from fedmeta.tasks.episode import Episode, stack_episodes


class ConvDtypes(TorchDispatchMode):
    """Records the dtype of every convolution's output (both the loop and batched paths)."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func is torch.ops.aten.convolution.default:
            self.dtypes.add(out.dtype)
        return out


class MatmulDtypes(ConvDtypes):
    """Records the dtype of every matrix product's output."""

    OPS = (torch.ops.aten.mm.default, torch.ops.aten.addmm.default,
           torch.ops.aten.bmm.default, torch.ops.aten.baddbmm.default)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.OPS:
            self.dtypes.add(out.dtype)
        return out


def _batch(tasks: int = 3, n_way: int = 5, queries: int = 3):
    g = torch.Generator().manual_seed(0)
    return stack_episodes([
        Episode(torch.randn(n_way, 1, 28, 28, generator=g), torch.arange(n_way),
                torch.randn(n_way * queries, 1, 28, 28, generator=g),
                torch.arange(n_way).repeat(queries), n_way) for _ in range(tasks)])


def _flat(d: dict) -> torch.Tensor:
    return torch.cat([v.flatten() for v in d.values()])


def test_precision_is_validated() -> None:
    assert config.load(overrides=[]).train.precision == "float32"
    assert config.load(overrides=["train.precision=bfloat16"]).train.precision == "bfloat16"
    with pytest.raises(ConfigError, match="train.precision.*float16.*float32.*bfloat16"):
        config.load(overrides=["train.precision=float16"])
    with pytest.raises(ConfigError, match="precision"):
        build_learner("fomaml", Conv4(), precision="half")


@pytest.mark.parametrize("name", ["fomaml", "reptile", "protonet"])
@pytest.mark.parametrize("batched", [False, True])
def test_first_order_meta_updates_run_in_bfloat16(name: str, batched: bool) -> None:
    torch.manual_seed(0)
    model, batch = Conv4(n_way=5, channels=8), _batch()
    half = build_learner(name, model, inner_lr=0.4, batched=batched, precision="bfloat16")
    full = build_learner(name, model, inner_lr=0.4, batched=batched)
    params = full.init_params()
    with ConvDtypes() as seen:
        ours = half.meta_update(params, batch)
    assert seen.dtypes == {torch.bfloat16}
    with ConvDtypes() as seen:
        ref = full.meta_update(params, batch)
    assert seen.dtypes == {torch.float32}
    assert all(v.dtype == torch.float32 for v in ours.direction.values())
    a, b = _flat(ours.direction), _flat(ref.direction)
    assert not torch.equal(a, b)  # bfloat16 changed the numbers...
    # ...but not the direction much: at a random init on noise images the body's gradients
    # are small and bfloat16's rounding (8-bit mantissa) is 20-80% of them per tensor
    assert float(torch.nn.functional.cosine_similarity(a, b, dim=0)) > 0.7


def test_second_order_meta_updates_stay_float32_and_evaluation_is_bfloat16() -> None:
    torch.manual_seed(0)
    model, batch = Conv4(n_way=5, channels=8), _batch()
    maml = build_learner("maml", model, inner_lr=0.4, eval_steps=2, precision="bfloat16")
    full = build_learner("maml", model, inner_lr=0.4, eval_steps=2)
    params = full.init_params()
    with ConvDtypes() as seen:
        ours = maml.meta_update(params, batch)
    assert seen.dtypes == {torch.float32}
    torch.testing.assert_close(_flat(ours.direction),
                               _flat(full.meta_update(params, batch).direction))
    with ConvDtypes() as seen:
        scores = maml.evaluate(params, batch)
    assert seen.dtypes == {torch.bfloat16}
    ref = full.evaluate(params, batch)
    queries = batch.query_x.shape[1]
    for metric, values in scores.items():
        assert values.dtype == torch.float32
        if metric.endswith("acc"):  # a count of correct queries, not rounded to bfloat16
            torch.testing.assert_close(values * queries, (values * queries).round())
        else:
            torch.testing.assert_close(values, ref[metric], rtol=0.05, atol=0.05)


def test_central_training_honours_train_precision() -> None:
    """``fedmeta train``'s path builds its learner with ``train.precision``: a short
    sinusoid run under bfloat16 runs every matrix product in bfloat16 and still learns."""
    from fedmeta.central import train_and_evaluate

    cfg = config.load(overrides=["meta.algorithm=fomaml", "train.iterations=60",
                                 "train.meta_batch=5", "train.eval_episodes=20",
                                 "train.precision=bfloat16", "train.device=cpu"])
    with MatmulDtypes() as seen:
        summary = train_and_evaluate(cfg, progress=False)
    assert seen.dtypes == {torch.bfloat16}
    assert summary["post_loss"] < summary["pre_loss"]
