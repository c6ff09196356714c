"""Synthetic long-range tasks that make vanishing gradients visible.

Both are classics from Hochreiter & Schmidhuber (1997): the answer depends on
inputs far in the past, so a model learns them only if its gradient reaches
that far. Generated from a seed, never from the global RNG.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rnnkit import errors


def adding_problem(num_examples: int, seq_len: int, *, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""The adding problem (Hochreiter & Schmidhuber, 1997, §5.4; the form of Le et al., 2015).

    Each sequence has T = ``seq_len`` steps of two channels: a value
    ``u_t ~ U(0, 1)`` and a marker ``m_t`` that is 1 at exactly two steps, one
    in the first half ``[0, T/2)`` and one in the second ``[T/2, T)``, and 0
    elsewhere. The target is the sum of the two marked values,
    ``y = Σ_t m_t u_t ∈ [0, 2]``. Reading it at step T needs the first value
    held for at least T/2 steps. Predicting the mean 1.0 gives an MSE of
    Var(u + u') = 1/6 ≈ 0.167; Hochreiter & Schmidhuber count a sequence solved
    when the absolute error is below 0.04.

    Returns:
        inputs: (N, T, 2) float32, batch-first, channels (value, marker);
        targets: (N,) float32. A deterministic function of ``seed``.
    """
    errors.check_positive_int("num_examples", num_examples)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise errors.fail("seq_len", "an int >= 2 (one marker in each half)", repr(seq_len))
    g = torch.Generator().manual_seed(seed)
    values = torch.rand(num_examples, seq_len, generator=g)
    half = seq_len // 2
    first = torch.randint(0, half, (num_examples,), generator=g)
    second = torch.randint(half, seq_len, (num_examples,), generator=g)
    rows = torch.arange(num_examples)
    markers = torch.zeros(num_examples, seq_len)
    markers[rows, first] = 1.0
    markers[rows, second] = 1.0
    return torch.stack([values, markers], dim=-1), values[rows, first] + values[rows, second]


def copy_task(num_examples: int, delay: int, *, num_symbols: int = 8, copy_length: int = 10, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""The copy task (Hochreiter & Schmidhuber, 1997, §5.2; the form of Arjovsky et al., 2016, §4.1).

    Tokens: 0 is the blank, 1..K the symbols (K = ``num_symbols``), K + 1 the
    delimiter. An input is S = ``copy_length`` random symbols, ``delay - 1``
    blanks, the delimiter and S blanks, T = delay + 2S steps in all. The target
    is blank for the first delay + S steps and then the S symbols, which must
    be recalled ``delay + S`` steps after they were seen. Predicting blanks and
    then a uniform guess costs a cross-entropy of ``S log K / T``.

    Returns:
        inputs, targets: (N, delay + 2S) int64, batch-first.
    """
    for name, value in (("num_examples", num_examples), ("delay", delay), ("num_symbols", num_symbols), ("copy_length", copy_length)):
        errors.check_positive_int(name, value)
    g = torch.Generator().manual_seed(seed)
    symbols = torch.randint(1, num_symbols + 1, (num_examples, copy_length), generator=g)
    blanks = torch.zeros(num_examples, delay - 1, dtype=torch.long)
    delimiter = torch.full((num_examples, 1), num_symbols + 1, dtype=torch.long)
    tail = torch.zeros(num_examples, copy_length, dtype=torch.long)
    inputs = torch.cat([symbols, blanks, delimiter, tail], dim=1)
    targets = torch.cat([torch.zeros(num_examples, delay + copy_length, dtype=torch.long), symbols], dim=1)
    return inputs, targets
