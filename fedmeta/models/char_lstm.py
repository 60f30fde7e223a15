"""The character LSTM of LEAF Shakespeare and the FedMeta paper (Chen et al. 2018): an
8-dim embedding of each of the 80 vocabulary characters, two LSTM layers of 256 units over
the 80-character window, and a linear head from the last hidden state to the vocabulary.

The LSTM cell is written out (matmuls and gates, PyTorch's ``nn.LSTM`` equations, gate
order i, f, g, o, its parameter names and shapes) rather than calling ``nn.LSTM``:
second-order MAML differentiates the adapted weights' query loss through the inner
gradient, and while ``nn.LSTM``'s CPU path was measured twice differentiable (torch 2.13),
its cuDNN kernel's backward (``_cudnn_rnn_backward``) has no derivative of its own in
PyTorch, so a run moved to a GPU would fail there (known, not checked on these GPU-less
machines). Written out, only ops with ordinary double backward are used, on every device.
Its parameter count equals ``nn.LSTM``'s (two biases per layer): 819,920 at the paper's
size.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

VOCAB_SIZE = 80  # LEAF's ALL_LETTERS (fedmeta.tasks.hf_text.ALL_LETTERS)


class LSTMLayers(nn.Module):
    """``num_layers`` stacked LSTM layers, batch first; returns the last step's hidden
    state of the top layer, ``(n, hidden)``. Parameters as ``nn.LSTM``'s, initialised as
    it does (uniform in +-1/sqrt(hidden))."""

    def __init__(self, input_size: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        self.hidden, self.num_layers = hidden, num_layers
        bound = 1.0 / math.sqrt(hidden)
        for layer in range(num_layers):
            inputs = input_size if layer == 0 else hidden
            for name, shape in (("weight_ih", (4 * hidden, inputs)),
                                ("weight_hh", (4 * hidden, hidden)),
                                ("bias_ih", (4 * hidden,)), ("bias_hh", (4 * hidden,))):
                self.register_parameter(f"{name}_l{layer}", nn.Parameter(
                    torch.empty(shape).uniform_(-bound, bound)))

    def forward(self, x: Tensor) -> Tensor:
        seq = x  # (n, T, features)
        for layer in range(self.num_layers):
            w_ih, w_hh = getattr(self, f"weight_ih_l{layer}"), getattr(self, f"weight_hh_l{layer}")
            bias = getattr(self, f"bias_ih_l{layer}") + getattr(self, f"bias_hh_l{layer}")
            projected = seq @ w_ih.T + bias  # every step's input term in one matmul
            h = seq.new_zeros(seq.shape[0], self.hidden)
            c = h
            outputs = []
            for t in range(seq.shape[1]):
                i, f, g, o = (projected[:, t] + h @ w_hh.T).chunk(4, dim=-1)
                c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
                h = torch.sigmoid(o) * torch.tanh(c)
                outputs.append(h)
            seq = torch.stack(outputs, dim=1)
        return seq[:, -1]


class CharEmbedding(nn.Module):
    """Character ids ``(n, T)`` int64 -> ``(n, T, dim)``, as a one-hot matmul (its double
    backward is plain matmuls)."""

    def __init__(self, vocab_size: int, dim: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(vocab_size, dim))

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.one_hot(x, self.weight.shape[0]).to(self.weight.dtype) @ self.weight


class CharLSTM(nn.Module):
    """``(n, T)`` character ids -> ``(n, vocab_size)`` next-character logits; ``body``
    (embedding, LSTM, last hidden state) then ``head``."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, embedding_dim: int = 8,
                 hidden: int = 256, num_layers: int = 2) -> None:
        super().__init__()
        self.body = nn.Sequential(CharEmbedding(vocab_size, embedding_dim),
                                  LSTMLayers(embedding_dim, hidden, num_layers))
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))
