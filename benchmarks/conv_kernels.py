"""Per-task 3x3 convolutions of Conv4's four blocks, four ways, forward and forward+backward.

T tasks, each with its own weights, on n images each (8 x 75: a meta-batch's query sets):

    loop     one oneDNN convolution per task, channels-last (the per-episode loop's kernels)
    grouped  one grouped convolution, tasks as groups, on (n, T*C, H, W) channels-last
             (``fedmeta.models.batched``)
    im2col   patches stacked from the zero-padded (T, C, n, H, W) activations (9 strided
             copies, no permute), then ``torch.bmm`` with the (T, Cout, Cin*9) weights
    shift9   nine ``torch.baddbmm`` over shifted views of the padded, flattened activations
             (no patch copies; the output on the padded grid, its border dropped)

Backward is the gradient of the output's sum with respect to the activations and the
weights. Medians of ``--reps`` calls after a warm-up, milliseconds, on ``--threads``
threads; the host's load average is printed. Run by hand:
``OMP_NUM_THREADS=1 python benchmarks/conv_kernels.py``.
"""

from __future__ import annotations

import argparse
import os

import torch
import torch.nn.functional as F
from torch import Tensor
from timing import median_ms  # noqa: E402  (benchmarks/timing.py)

BLOCKS = [(1, 64, 28), (64, 64, 14), (64, 64, 7), (64, 64, 3)]  # (in, out, side)


def loop(x: Tensor, w: Tensor) -> Tensor:
    return torch.stack([F.conv2d(x[t].contiguous(memory_format=torch.channels_last), w[t],
                                 padding=1) for t in range(x.shape[0])])


def grouped(x: Tensor, w: Tensor) -> Tensor:
    t, n, c, h, width = x.shape
    g = x.permute(1, 3, 4, 0, 2).reshape(n, h, width, t * c).permute(0, 3, 1, 2)
    return F.conv2d(g, w.flatten(0, 1), padding=1, groups=t)


def im2col(xc: Tensor, w: Tensor) -> Tensor:
    t, c, n, h, width = xc.shape
    xp = F.pad(xc, (1, 1, 1, 1))
    cols = torch.stack([xp[..., i:i + h, j:j + width] for i in range(3) for j in range(3)], 2)
    return torch.bmm(w.flatten(2), cols.view(t, c * 9, n * h * width))


def shift9(xc: Tensor, w: Tensor) -> Tensor:
    t, c, n, h, width = xc.shape
    rows, cols = h + 2, width + 2
    length = n * rows * cols
    xp = F.pad(F.pad(xc, (1, 1, 1, 1)).reshape(t, c, length), (cols + 1, cols + 1))
    out = None
    for i in range(3):
        for j in range(3):
            shifted = xp[:, :, i * cols + j:i * cols + j + length]
            out = (torch.bmm(w[..., i, j], shifted) if out is None
                   else torch.baddbmm(out, w[..., i, j], shifted))
    return out.view(t, -1, n, rows, cols)[..., 1:-1, 1:-1]




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=8)
    parser.add_argument("--images", type=int, default=75)
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tasks, n = args.tasks, args.images
    print(f"{tasks} tasks x {n} images, {args.threads} thread(s), load average "
          f"{os.getloadavg()[0]:.2f}; ms forward / forward+backward (GFLOP/s forward)")
    for c_in, c_out, side in BLOCKS:
        flops = 2 * tasks * n * side * side * c_out * c_in * 9
        w = torch.randn(tasks, c_out, c_in, 3, 3, requires_grad=True)
        x = torch.randn(tasks, n, c_in, side, side, requires_grad=True)
        xc = x.detach().permute(0, 2, 1, 3, 4).contiguous().requires_grad_(True)
        row = []
        for name, fn, inp in (("loop", loop, x), ("grouped", grouped, x),
                              ("im2col", im2col, xc), ("shift9", shift9, xc)):
            def call(fn=fn, inp=inp, w=w) -> Tensor:
                return fn(inp, w)

            def call_and_grad(fn=fn, inp=inp, w=w) -> tuple[Tensor, ...]:
                return torch.autograd.grad(fn(inp, w).sum(), [inp, w])

            forward = median_ms(call, args.reps)
            both = median_ms(call_and_grad, args.reps)
            row.append(f"{name} {forward:.1f} / {both:.1f} ({flops / forward / 1e6:.0f})")
        print(f"block {c_in}->{c_out} at {side}x{side}: " + ", ".join(row), flush=True)


if __name__ == "__main__":
    main()
