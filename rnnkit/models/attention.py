"""Attention over a padded memory (encoder outputs).

For a query q (N, D) and memory m_1..m_S (N, S, D), with padding masked out::

    bahdanau (additive; Bahdanau et al., 2015):  score_j = v^T tanh(W_q q + W_m m_j)
    dot (Luong et al., 2015):                    score_j = q . m_j
    general (Luong et al., 2015):                score_j = q^T W m_j
    a = softmax_j(score)  over valid j only (padding gets exactly 0)
    context = sum_j a_j m_j

The query-independent part of each score (W_m m for additive, W m for
general) depends on the memory only, so :meth:`Attention.prepare` computes it
once per source sentence, not once per decoding step.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor, nn

from rnnkit import errors

KINDS = ("bahdanau", "dot", "general")


class Attention(nn.Module):
    def __init__(self, kind: Literal["bahdanau", "dot", "general"], size: int) -> None:
        super().__init__()
        if kind not in KINDS:
            raise errors.fail("attention", f"one of {list(KINDS)}", repr(kind))
        self.kind = kind
        if kind == "bahdanau":
            self.query = nn.Linear(size, size, bias=False)
            self.memory = nn.Linear(size, size)
            self.v = nn.Linear(size, 1, bias=False)
        elif kind == "general":
            self.memory = nn.Linear(size, size, bias=False)

    def prepare(self, memory: Tensor) -> Tensor:
        """The query-independent keys, (N, S, D)."""
        return memory if self.kind == "dot" else self.memory(memory)

    def forward(self, query: Tensor, keys: Tensor, memory: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        """``(context (N, D), weights (N, S))`` for query (N, D), prepared keys, memory (N, S, D), mask (N, S)."""
        if self.kind == "bahdanau":
            scores = self.v(torch.tanh(self.query(query).unsqueeze(1) + keys)).squeeze(-1)
        else:
            scores = torch.bmm(keys, query.unsqueeze(-1)).squeeze(-1)
        weights = scores.masked_fill(~mask, float("-inf")).softmax(-1)
        return torch.bmm(weights.unsqueeze(1), memory).squeeze(1), weights
