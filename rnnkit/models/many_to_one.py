"""Many-to-one: a sequence in, one label or value out.

    h_1..h_L = RNN(x_1..x_L)              (N, L, D), D = H * directions
    s = pool(h, lengths)                  (N, D)
    y = W s + b                           (N, C) logits, or (N, K) values

Pooling, always over valid positions only:

* ``last``: the final state of the top layer, taken at each sequence's last
  valid step (forward direction) and at its first (backward direction);
* ``mean`` and ``max`` over time;
* ``attention``: a_t = softmax_t(v^T tanh(W h_t)), s = sum_t a_t h_t
  (Yang et al., 2016); padding gets weight 0.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.models.common import ClassifierMixin, InputConfig, InputEncoder, RecurrentConfig, make_layer, register, split_inputs, valid_mask


class Pooling(nn.Module):
    def __init__(self, kind: str, size: int) -> None:
        super().__init__()
        self.kind = kind
        if kind == "attention":
            self.score = nn.Sequential(nn.Linear(size, size), nn.Tanh(), nn.Linear(size, 1, bias=False))

    def forward(self, outputs: Tensor, final_h: Tensor, mask: Tensor, directions: int) -> tuple[Tensor, Tensor | None]:
        """Returns the pooled (N, D) vector and, for attention, the (N, L) weights."""
        if self.kind == "last":
            return torch.cat(list(final_h[-directions:]), dim=-1), None
        if self.kind == "mean":
            m = mask.unsqueeze(-1).to(outputs.dtype)
            return (outputs * m).sum(1) / m.sum(1).clamp(min=1), None
        if self.kind == "max":
            return outputs.masked_fill(~mask.unsqueeze(-1), float("-inf")).amax(1), None
        scores = self.score(outputs).squeeze(-1).masked_fill(~mask, float("-inf"))
        weights = scores.softmax(-1)
        return (weights.unsqueeze(-1) * outputs).sum(1), weights


@dataclass
class ManyToOneConfig:
    input: InputConfig
    output_size: int = 2  # classes for a classifier, values for a regressor
    rnn: RecurrentConfig = field(default_factory=RecurrentConfig)
    pooling: Literal["last", "mean", "max", "attention"] = "last"
    dropout: float = 0.0


class _ManyToOne(nn.Module):
    config_class = ManyToOneConfig

    def __init__(self, config: ManyToOneConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = InputEncoder(config.input, config.dropout)
        self.rnn = make_layer(config.rnn, config.input.output_size)
        size = config.rnn.hidden_size * (2 if config.rnn.bidirectional else 1)
        self.pool = Pooling(config.pooling, size)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(size, config.output_size)
        self.last_attention: Tensor | None = None  # for inspection after a forward pass

    def forward(self, inputs, state=None):
        x, lengths = split_inputs(inputs)
        outputs, final = self.rnn(self.encoder(x), lengths=lengths)
        final_h = final[0] if isinstance(final, tuple) else final
        mask = valid_mask(lengths, x.shape[0], x.shape[1], x.device)
        pooled, self.last_attention = self.pool(outputs, final_h, mask, 2 if self.config.rnn.bidirectional else 1)
        return self.head(self.dropout(pooled)), None


@register
class SequenceClassifier(ClassifierMixin, _ManyToOne):
    """Sequence -> class logits (N, C). Targets: class indices (N,)."""


@register
class SequenceRegressor(_ManyToOne):
    """Sequence -> values (N, K). Targets: (N, K), or (N,) when K == 1."""

    def loss(self, values: Tensor, targets: Tensor) -> Tensor:
        return F.mse_loss(values, targets.reshape(values.shape))

    def metrics(self, values: Tensor, targets: Tensor) -> dict[str, float]:
        return {"mae": (values - targets.reshape(values.shape)).abs().mean().item()}
