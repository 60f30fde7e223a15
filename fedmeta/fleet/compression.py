"""Update compression on the uplink: float16, int8 quantisation, top-k sparsification.

``roundtrip`` is what the server reconstructs from the compressed update (the device
applies it to its pseudo-gradient, so its accuracy cost is real); ``encoded_bytes`` is what
the encoding would carry. Inside the simulator the update still travels as float32.

- ``float16``: 2 bytes per entry.
- ``int8``: symmetric per-tensor quantisation, ``q = round(x / s)``, ``s = max|x| / 127``;
  1 byte per entry and a float32 scale per tensor.
- ``topk``: per tensor, the ``ceil(fraction * n)`` entries of largest magnitude, as float32
  values and int32 indices (8 bytes each); the rest are zero (no error feedback).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

COMPRESSIONS = ("none", "float16", "int8", "topk")


def _kept(n: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * n))


def encoded_bytes(sizes: list[int], method: str, fraction: float = 0.01) -> int:
    """Bytes of tensors with ``sizes`` entries encoded by ``method``."""
    if method == "none":
        return 4 * sum(sizes)
    if method == "float16":
        return 2 * sum(sizes)
    if method == "int8":
        return sum(n + 4 for n in sizes)
    if method == "topk":
        return sum(8 * _kept(n, fraction) for n in sizes)
    raise ValueError(f"unknown compression {method!r}; known: {COMPRESSIONS}")


def _one(x: Tensor, method: str, fraction: float) -> Tensor:
    if method == "float16":
        return x.to(torch.float16).to(x.dtype)
    if method == "int8":
        scale = x.abs().max() / 127
        if scale == 0:
            return x.clone()
        return (x / scale).round().clamp(-127, 127) * scale
    if method == "topk":
        flat = x.flatten()
        keep = torch.topk(flat.abs(), _kept(flat.numel(), fraction), sorted=False).indices
        out = torch.zeros_like(flat)
        out[keep] = flat[keep]
        return out.view_as(x)
    raise ValueError(f"unknown compression {method!r}; known: {COMPRESSIONS}")


def roundtrip(update: dict[str, Tensor], method: str,
              fraction: float = 0.01) -> dict[str, Tensor]:
    """``update`` as the server decodes it after ``method`` (unchanged for ``none``)."""
    if method == "none":
        return update
    return {k: _one(v, method, fraction) for k, v in update.items()}
