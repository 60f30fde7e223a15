"""Adapt a LiteRT-exported meta-model's head on a device and predict, with numpy and the
LiteRT interpreter alone (``pip install ai-edge-litert``; no torch, no fedmeta).

    python adapt_tflite.py EDGE_DIR episode.npz predictions.npy [--steps K]

``EDGE_DIR`` holds ``body.tflite`` (features; batch-norm on each batch's own statistics) with
two signatures of static batch, ``support`` and ``query``, and ``head.npz`` (the
meta-learned linear head, its learning rate and steps). ``episode.npz`` holds ``support_x``,
``support_y`` (int64 class indices, or float targets of shape ``(n, outputs)``) and
``query_x``, of the batch sizes exported; ``predictions.npy`` receives the query outputs
after adaptation.

Adaptation is ANIL's (head only), the same numpy maths as ``adapt_onnx.py``: the body's
features of the support set are computed once and cached, then ``steps`` SGD steps move
the linear head, with the closed-form gradients

- softmax cross-entropy (mean over n examples): ``G = (softmax(z) - onehot(y)) / n``;
- mean squared error (mean over all n * d entries): ``G = 2 (z - y) / (n d)``;

and ``dW = G.T @ features``, ``db = G.sum(0)``. Importable: ``HeadAdapter`` keeps the
cached features and adapted head for further queries.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from ai_edge_litert.interpreter import Interpreter

BODY, HEAD_WEIGHTS = "body.tflite", "head.npz"


def softmax(z: np.ndarray) -> np.ndarray:
    """Row-wise softmax, shifted by each row's maximum (no overflow for large logits)."""
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def head_gradient(features: np.ndarray, weight: np.ndarray, bias: np.ndarray,
                  y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gradients of the mean support loss with respect to a linear head's weight and bias:
    cross-entropy for integer labels, mean squared error for float targets."""
    z = features @ weight.T + bias
    if np.issubdtype(y.dtype, np.integer):
        g = softmax(z)
        g[np.arange(len(y)), y] -= 1.0
        g /= len(y)
    else:
        g = 2.0 * (z - y.reshape(z.shape)) / z.size
    return g.T @ features, g.sum(axis=0)


def adapt_head(features: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray,
               lr: float, steps: int) -> tuple[np.ndarray, np.ndarray]:
    """The head after ``steps`` SGD steps of rate ``lr`` on cached support features."""
    for _ in range(steps):
        dw, db = head_gradient(features, weight, bias, y)
        weight, bias = weight - lr * dw, bias - lr * db
    return weight, bias


def run_signature(runner: Any, x: np.ndarray) -> np.ndarray:
    """One signature of ``body.tflite`` on a batch of its exported size."""
    (name, detail), = runner.get_input_details().items()
    shape = tuple(int(n) for n in detail["shape"])
    if tuple(x.shape) != shape:
        raise ValueError(f"body.tflite takes batches of shape {shape} here "
                         f"(exported static), got {tuple(x.shape)}: re-export with "
                         f"fedmeta export --format tflite --support N --query N")
    outputs = runner(**{name: np.ascontiguousarray(x, dtype=np.float32)})
    return next(iter(outputs.values()))


class HeadAdapter:
    """The exported body in a LiteRT interpreter; ``adapt`` caches the support set's
    features and the adapted head, ``predict`` scores a query batch with it."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        self.interpreter = Interpreter(model_path=str(folder / BODY), num_threads=1)
        self.support = self.interpreter.get_signature_runner("support")
        self.query = self.interpreter.get_signature_runner("query")
        with np.load(folder / HEAD_WEIGHTS) as saved:
            self.meta_weight = saved["weight"].astype(np.float32)
            self.meta_bias = saved["bias"].astype(np.float32)
            self.lr = float(saved["lr"])
            self.steps = int(saved["steps"])
        self.weight, self.bias = self.meta_weight, self.meta_bias
        self.support_features: np.ndarray | None = None

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray,
              steps: int | None = None) -> None:
        """Compute and cache the support features once, then adapt the head from the
        meta-learned one."""
        self.support_features = run_signature(self.support, support_x)
        y = support_y.astype(np.int64) if np.issubdtype(support_y.dtype, np.integer) \
            else support_y.astype(np.float32)
        self.weight, self.bias = adapt_head(self.support_features, y, self.meta_weight,
                                            self.meta_bias, np.float32(self.lr),
                                            self.steps if steps is None else steps)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs on a query batch with the adapted head (the meta-learned one before
        ``adapt``)."""
        return run_signature(self.query, x) @ self.weight.T + self.bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder fedmeta export --format tflite wrote")
    parser.add_argument("episode", help="an .npz file: support_x, support_y, query_x")
    parser.add_argument("predictions", help="where to write the query outputs (.npy)")
    parser.add_argument("--steps", type=int, help="adaptation steps (default: the exported)")
    args = parser.parse_args()
    model = HeadAdapter(args.folder)
    with np.load(args.episode) as episode:
        model.adapt(episode["support_x"], episode["support_y"], args.steps)
        outputs = model.predict(episode["query_x"])
    np.save(args.predictions, outputs)
    print(f"adapted the head {model.steps if args.steps is None else args.steps} steps on "
          f"{len(model.support_features)} cached support features; wrote "
          f"{outputs.shape} outputs to {args.predictions}")


if __name__ == "__main__":
    main()
