"""Adapt an ONNX-exported meta-model's head on a device and predict, with numpy and
onnxruntime alone (no torch, no fedmeta).

    python adapt_onnx.py EDGE_DIR episode.npz predictions.npy [--steps K]

``EDGE_DIR`` holds ``body.onnx`` (features; batch-norm on each batch's own statistics),
``head.onnx`` (``features @ weight.T + bias`` with the weights as inputs) and ``head.npz``
(the meta-learned head, its learning rate and steps). ``episode.npz`` holds ``support_x``,
``support_y`` (int64 class indices, or float targets of shape ``(n, outputs)``) and
``query_x``; ``predictions.npy`` receives the query outputs after adaptation.

Adaptation is ANIL's (head only): the body's features of the support set are computed once
and cached, then ``steps`` SGD steps move the linear head, with the closed-form gradients

- softmax cross-entropy (mean over n examples): ``G = (softmax(z) - onehot(y)) / n``;
- mean squared error (mean over all n * d entries): ``G = 2 (z - y) / (n d)``;

and ``dW = G.T @ features``, ``db = G.sum(0)``. Importable: ``HeadAdapter`` keeps the
cached features and adapted head for further queries.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import onnxruntime as ort

BODY, HEAD, HEAD_WEIGHTS = "body.onnx", "head.onnx", "head.npz"


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


class HeadAdapter:
    """The exported body and head in onnxruntime sessions; ``adapt`` caches the support
    set's features and the adapted head, ``predict`` scores queries with it."""

    def __init__(self, folder: str | Path) -> None:
        folder = Path(folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        self.body = ort.InferenceSession(str(folder / BODY), options,
                                         providers=["CPUExecutionProvider"])
        self.head = ort.InferenceSession(str(folder / HEAD), options,
                                         providers=["CPUExecutionProvider"])
        with np.load(folder / HEAD_WEIGHTS) as saved:
            self.meta_weight = saved["weight"].astype(np.float32)
            self.meta_bias = saved["bias"].astype(np.float32)
            self.lr = float(saved["lr"])
            self.steps = int(saved["steps"])
        self.weight, self.bias = self.meta_weight, self.meta_bias
        self.support_features: np.ndarray | None = None

    def features(self, x: np.ndarray) -> np.ndarray:
        """The body's features of a batch (normalised by that batch's statistics)."""
        return self.body.run(None, {self.body.get_inputs()[0].name:
                                    np.ascontiguousarray(x, dtype=np.float32)})[0]

    def adapt(self, support_x: np.ndarray, support_y: np.ndarray,
              steps: int | None = None) -> None:
        """Compute and cache the support features once, then adapt the head from the
        meta-learned one."""
        self.support_features = self.features(support_x)
        y = support_y.astype(np.int64) if np.issubdtype(support_y.dtype, np.integer) \
            else support_y.astype(np.float32)
        self.weight, self.bias = adapt_head(self.support_features, y, self.meta_weight,
                                            self.meta_bias, np.float32(self.lr),
                                            self.steps if steps is None else steps)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Outputs on ``x`` with the adapted head (the meta-learned one before ``adapt``),
        the head run by onnxruntime."""
        inputs = [i.name for i in self.head.get_inputs()]
        return self.head.run(None, dict(zip(inputs, (self.features(x),
                                                      self.weight.astype(np.float32),
                                                      self.bias.astype(np.float32)))))[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="the folder fedmeta export --format onnx wrote")
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
