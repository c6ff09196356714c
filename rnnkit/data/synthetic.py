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


# -- the seeds' claims: future context, memory over a gap, order --------------------------------------


def selective_copy_task(num_examples: int, region_len: int, *, num_tokens: int = 8, num_colors: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""Selective copying (Gu & Dao, 2023, "Mamba", §4.1; Feng et al., 2024, §4): copy the colours, skip the noise.

    Tokens: 0 is noise, 1..C the colours (C = ``num_colors``), C + 1 the marker. An input is a
    region of ``region_len`` steps with K = ``num_tokens`` random colours at random distinct
    positions (in their order of appearance) and noise elsewhere, then K markers. The target is
    ignored (-100) over the region and is the K colours, in order, at the markers: the model must
    skip an unknown amount of noise between colours, which a fixed delay (the copy task) does
    not ask. Chance token accuracy is 1/C.

    Returns:
        inputs, targets: (N, region_len + K) int64, batch-first.
    """
    for name, value in (("num_examples", num_examples), ("num_tokens", num_tokens), ("num_colors", num_colors)):
        errors.check_positive_int(name, value)
    if isinstance(region_len, bool) or not isinstance(region_len, int) or region_len < num_tokens:
        raise errors.fail("region_len", f"an int >= num_tokens ({num_tokens}): room for every colour", repr(region_len))
    g = torch.Generator().manual_seed(seed)
    colors = torch.randint(1, num_colors + 1, (num_examples, num_tokens), generator=g)
    positions = torch.rand(num_examples, region_len, generator=g).argsort(dim=1)[:, :num_tokens].sort(dim=1).values
    region = torch.zeros(num_examples, region_len, dtype=torch.long)
    region.scatter_(1, positions, colors)
    markers = torch.full((num_examples, num_tokens), num_colors + 1, dtype=torch.long)
    ignored = torch.full((num_examples, region_len), -100, dtype=torch.long)
    return torch.cat([region, markers], dim=1), torch.cat([ignored, colors], dim=1)


def future_token_task(num_examples: int, seq_len: int, offset: int, *, vocab_size: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""Tag each token with the token ``offset`` steps later: ``y_t = x_{t+k}``, k = ``offset``.

    Tokens are i.i.d. uniform over ``0..V-1`` (V = ``vocab_size``). The last k
    positions have no token k steps later; their target is -100, the ignore
    index of :class:`~rnnkit.models.SequenceTagger`. For k > 0, ``x_{t+k}`` is
    independent of ``x_1..x_t``, so a model that reads only the past scores
    1/V in expectation on held-out data, whatever it learned; a model that
    reads the future needs to hold one token for k steps.

    Returns:
        inputs, targets: (N, T) int64, batch-first.
    """
    for name, value in (("num_examples", num_examples), ("seq_len", seq_len), ("vocab_size", vocab_size)):
        errors.check_positive_int(name, value)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 0 <= offset < seq_len:
        raise errors.fail("offset", f"an int in [0, seq_len={seq_len})", repr(offset))
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab_size, (num_examples, seq_len), generator=g)
    targets = torch.full_like(tokens, -100)
    targets[:, : seq_len - offset] = tokens[:, offset:]
    return tokens, targets


# The seeds' long-range example, "I have been staying in Germany for the last 10 years. I can speak
# fluently ___", as word lists: a country, `gap` filler words, the query; the answer is the language.
COUNTRIES = ("France", "Germany", "Spain", "Italy", "Japan", "China", "Russia", "Greece")
LANGUAGES = ("French", "German", "Spanish", "Italian", "Japanese", "Chinese", "Russian", "Greek")
FILLER = ("I", "have", "been", "staying", "for", "the", "last", "ten", "years", "and", "my", "friends", "there",
          "say", "that", "weather", "is", "often", "nice", "we")  # fmt: skip
QUERY = "speak"


def country_language_task(num_examples: int, gap: int, *, num_countries: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""A country, ``gap - 1`` filler words, then ``"speak"``; the label is the country's language.

    Token ids: ``0..C-1`` the countries (C = ``num_countries``, at most 8),
    ``C..C+19`` the filler words of :data:`FILLER`, ``C+20`` the query. The
    country is at step 1 and the query at step ``gap + 1``, so the answer must
    be carried ``gap`` steps, past fillers drawn i.i.d. and uniformly. The
    label is the country's index (the same index in :data:`LANGUAGES`);
    chance is 1/C. :func:`country_language_words` spells a sequence out.

    Returns:
        inputs: (N, gap + 1) int64; targets: (N,) int64.
    """
    for name, value in (("num_examples", num_examples), ("gap", gap)):
        errors.check_positive_int(name, value)
    if isinstance(num_countries, bool) or not isinstance(num_countries, int) or not 2 <= num_countries <= len(COUNTRIES):
        raise errors.fail("num_countries", f"an int in [2, {len(COUNTRIES)}]", repr(num_countries))
    g = torch.Generator().manual_seed(seed)
    countries = torch.randint(0, num_countries, (num_examples,), generator=g)
    filler = num_countries + torch.randint(0, len(FILLER), (num_examples, gap - 1), generator=g)
    query = torch.full((num_examples, 1), num_countries + len(FILLER))
    return torch.cat([countries.unsqueeze(1), filler, query], dim=1), countries


def country_language_words(tokens: Tensor, label: int, num_countries: int = 8) -> str:
    """One sequence of :func:`country_language_task` in words, with its answer."""
    words = list(COUNTRIES[:num_countries]) + list(FILLER) + [QUERY]
    return " ".join(words[int(t)] for t in tokens) + f" -> {LANGUAGES[label]}"


def marker_order_task(num_examples: int, seq_len: int, *, num_fillers: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    r"""Which of two markers comes first: the label depends on order alone.

    Token 0 is marker A, token 1 marker B, tokens ``2..F+1`` fillers (F =
    ``num_fillers``). Each sequence holds A and B once each, at two distinct
    random steps, and fillers elsewhere; the label is 1 when A comes before B.
    Examples come in mirror pairs: example 2i + 1 is example 2i with A and B
    swapped, so it has the opposite label and the same bag of tokens. A model
    that sees only the bag gives both the same answer and scores exactly 1/2
    on any even number of examples; ``num_examples`` must be even.

    Returns:
        inputs: (N, T) int64; targets: (N,) int64 in {0, 1}.
    """
    errors.check_positive_int("num_examples", num_examples)
    errors.check_positive_int("num_fillers", num_fillers)
    if num_examples % 2:
        raise errors.fail("num_examples", "an even number (mirror pairs)", num_examples)
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 2:
        raise errors.fail("seq_len", "an int >= 2 (room for both markers)", repr(seq_len))
    g = torch.Generator().manual_seed(seed)
    pairs = num_examples // 2
    tokens = 2 + torch.randint(0, num_fillers, (pairs, seq_len), generator=g)
    positions = torch.rand(pairs, seq_len, generator=g).argsort(dim=1)[:, :2]  # two distinct steps
    rows = torch.arange(pairs)
    tokens[rows, positions[:, 0]] = 0
    tokens[rows, positions[:, 1]] = 1
    mirrored = tokens.clone()
    mirrored[rows, positions[:, 0]] = 1
    mirrored[rows, positions[:, 1]] = 0
    a_first = (positions[:, 0] < positions[:, 1]).long()
    inputs = torch.stack([tokens, mirrored], dim=1).flatten(0, 1)
    return inputs, torch.stack([a_first, 1 - a_first], dim=1).flatten()
