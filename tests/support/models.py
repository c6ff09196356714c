"""Tiny models that follow the trainer's contract, for training tests."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

import rnnkit


class TinyLM(nn.Module):
    """Embedding -> rnnkit layer -> linear, over time-major token windows (T, B)."""

    def __init__(self, vocab: int = 11, hidden: int = 16, cell: str = "lstm", dropout: float = 0.0) -> None:
        super().__init__()
        layers = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}
        self.embed = nn.Embedding(vocab, 8)
        self.rnn = layers[cell](8, hidden, num_layers=2, dropout=dropout)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, tokens, state=None):
        out, state = self.rnn(self.embed(tokens), state)
        return self.head(out), state

    def loss(self, logits, targets):
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten())

    def metrics(self, logits, targets):
        return {"accuracy": (logits.argmax(-1) == targets).float().mean().item()}


class SignClassifier(nn.Module):
    """Many-to-one: is the sum of a sequence positive? Inputs (N, L, 1), batch-first."""

    def __init__(self, hidden: int = 12) -> None:
        super().__init__()
        self.rnn = rnnkit.GRU(1, hidden, batch_first=True)
        self.head = nn.Linear(hidden, 2)

    def forward(self, x, state=None):
        _, h = self.rnn(x)
        return self.head(h[-1]), None

    def loss(self, logits, targets):
        return F.cross_entropy(logits, targets)

    def metrics(self, logits, targets):
        return {"accuracy": (logits.argmax(-1) == targets).float().mean().item()}


def sign_data(n: int, length: int = 8, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, length, 1, generator=g)
    return x, (x.sum(dim=(1, 2)) > 0).long()


def periodic_tokens(n: int, vocab: int = 11, seed: int = 0) -> torch.Tensor:
    """A learnable stream: a repeating pattern with a little noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.arange(n) % 7
    noise = torch.randint(0, vocab, (n,), generator=g)
    return torch.where(torch.rand(n, generator=g) < 0.1, noise, base)
