"""Does an exported meta-model fit each device profile, and how fast does it adapt there?

For each profile (``fedmeta.fleet.profiles``) and each way of running the model on the
device, analytically (``fedmeta.fleet.cost.ModelCost``: FLOPs of the convolutions and
linear maps; memory in float32 unless stated):

- ``head-only`` (the ONNX export, ``onnx_device``): adaptation = the body's forward on the
  support set once (cached features) + ``steps`` head steps (forward and weight gradient of
  the linear head, ``2 * 2 * features * outputs`` FLOPs per example and step); memory = the
  weights + one forward's activations on the larger of support and query + the cached
  features + three copies of the head (weights, gradient, update).
- ``full network`` (the TorchScript program): ``steps`` forward and backward passes on the
  support set; memory = weights, fast weights and gradient (three copies) + the
  activations of the support forward kept for the backward pass, or the query forward,
  whichever is larger.
- a query batch: one forward pass of the model.

Variants: ``float32`` (4 bytes per parameter) and ``int8`` (1 byte per weight entry of a
convolution or linear map, float32 for biases and batch-norm, plus a float32 scale and an
int32 zero point per output channel). With int8, head-only adaptation keeps the int8 model
and adapts a float32 copy of the head; full-network adaptation runs in float32 and then
holds the int8 model quantised from it as well (``fedmeta.export.quantize``). Latency is
FLOPs over the profile's sustained float32 rate for both: the profiles give no int8 rate,
so int8 latency here is an upper bound (x86 int8 ran a Conv4 query pass 6.5x faster,
benchmarks/results/edge_export.md).
The runtime library itself (onnxruntime, torch) is not counted in the memory.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..fleet.cost import FLOAT_BYTES, ModelCost
from ..fleet.profiles import DeviceProfile

VARIANTS = ("float32", "int8")
ADAPTATIONS = ("head-only", "full network")


@dataclass(frozen=True)
class Need:
    """What running a model one way costs: bytes held at peak and FLOPs."""

    variant: str
    adaptation: str
    memory_bytes: float
    adapt_flops: float
    query_flops: float


@dataclass(frozen=True)
class Fit:
    """One ``Need`` on one profile."""

    profile: str
    need: Need
    memory_gb: float  # the profile's
    adapt_s: float
    query_s: float

    @property
    def fits(self) -> bool:
        return self.need.memory_bytes <= self.memory_gb * 1e9


def weight_bytes(model: nn.Module, variant: str) -> int:
    """Bytes of ``model``'s parameters stored as ``variant`` (see the module docstring)."""
    if variant == "float32":
        return FLOAT_BYTES * sum(p.numel() for p in model.parameters())
    if variant != "int8":
        raise ValueError(f"variant {variant!r}: one of {VARIANTS}")
    total = 0
    for module in model.modules():
        own = list(module.parameters(recurse=False))
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            total += module.weight.numel() + 8 * module.weight.shape[0]
            own = [p for p in own if p is not module.weight]
        total += FLOAT_BYTES * sum(p.numel() for p in own)
    return total


def needs(model: nn.Module, example_shape: tuple[int, ...], support: int, query: int,
          steps: int) -> list[Need]:
    """The ``Need`` of every variant and adaptation of ``model`` (with a linear
    ``model.head``) on episodes of ``support`` and ``query`` examples."""
    cost = ModelCost.of(model, example_shape)
    head = model.head
    head_flops = 2.0 * head.weight.numel()  # one example's forward through the head
    body_flops = cost.forward - head_flops
    float_weights = weight_bytes(model, "float32")
    acts = FLOAT_BYTES * cost.activations * max(support, query)
    full = 3 * float_weights + acts
    out = []
    for variant in VARIANTS:
        weights = weight_bytes(model, variant)
        cached = FLOAT_BYTES * (head.in_features * support
                                + 3 * (head.weight.numel() + head.out_features))
        out.append(Need(variant, "head-only", weights + acts + cached,
                        body_flops * support + steps * 2 * head_flops * support,
                        cost.fwd(query)))
        out.append(Need(variant, "full network",
                        full + (weights if variant == "int8" else 0),
                        steps * cost.step(support), cost.fwd(query)))
    return out


def fit_table(model: nn.Module, example_shape: tuple[int, ...], support: int, query: int,
              steps: int, profiles: dict[str, DeviceProfile]) -> list[Fit]:
    """Every ``needs`` row on every profile: fits in memory, and seconds at its rate."""
    return [Fit(p.name, n, p.memory_gb, n.adapt_flops / p.flops, n.query_flops / p.flops)
            for p in profiles.values() for n in needs(model, example_shape, support, query,
                                                      steps)]


def markdown(fits: list[Fit]) -> str:
    """``fit_table`` as a markdown table."""
    rows = [("| profile | variant | adaptation | memory needed | profile memory | fits | "
             "adaptation | query batch |"), "|---|---|---|---|---|---|---|---|"]
    for f in fits:
        rows.append(f"| {f.profile} | {f.need.variant} | {f.need.adaptation} | "
                    f"{f.need.memory_bytes / 2**20:.2f} MiB | {f.memory_gb:g} GB | "
                    f"{'yes' if f.fits else 'NO'} | {1e3 * f.adapt_s:.3f} ms | "
                    f"{1e3 * f.query_s:.3f} ms |")
    return "\n".join(rows) + "\n"
