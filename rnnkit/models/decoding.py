"""Decoding: greedy search, sampling (temperature, top-k, top-p), beam search, streaming; CTC decoders.

Every generative model exposes the same small interface, so one implementation
of each algorithm serves them all:

* ``decode_step(tokens (N,), state) -> (logits (N, V), state)``: one step, O(1)
  in the length generated so far, since the recurrent state carries the past;
* ``reorder_state(state, index (M,)) -> state``: pick (and repeat) batch rows,
  which beam search needs when hypotheses are expanded and pruned.

A model's own ``decode_start(...)`` returns the logits of the first token and
the state after the prompt (a language model's priming text, an encoder's
summary, a conditioning vector). Every function here takes those.

Beam search keeps ``beam_size`` hypotheses per example, ranked by their summed
log-probability. A hypothesis that emits EOS is frozen: it can only extend
with EOS at no cost, so it keeps its score and its slot. At the end each is
scored by ``sum_log_prob / length ** length_penalty`` (Wu et al., 2016, use a
smoother penalty; this one is the common plain form), and the best is returned.
With ``beam_size=1`` it reduces exactly to greedy search.

CTC models (:mod:`rnnkit.models.ctc`) emit all their frames at once instead:
:func:`ctc_greedy` and :func:`ctc_prefix_beam_search` read those frames.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch import Tensor

from rnnkit import errors


def greedy_search(decoder, logits: Tensor, state, max_length: int, eos: int | None = None) -> Tensor:
    """The most probable token at each step. Returns (N, T) tokens, EOS-padded after EOS."""
    return torch.stack(list(stream(decoder, logits, state, max_length, eos=eos)), dim=1)


def sample(decoder, logits: Tensor, state, max_length: int, *, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, eos: int | None = None, generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
    """Sample each token from the (tempered, truncated) distribution. Returns (N, T) tokens."""
    tokens = stream(decoder, logits, state, max_length, temperature=temperature, top_k=top_k, top_p=top_p, eos=eos, generator=generator, greedy=False)
    return torch.stack(list(tokens), dim=1)


def stream(decoder, logits: Tensor, state, max_length: int, *, greedy: bool = True, temperature: float = 1.0,
           top_k: int | None = None, top_p: float | None = None, eos: int | None = None,
           generator: torch.Generator | None = None) -> Iterator[Tensor]:  # fmt: skip
    """Yield (N,) tokens one at a time, carrying the state: constant cost per token.

    Stops after ``max_length`` tokens, or once every sequence has emitted EOS.
    """
    errors.check_positive_int("max_length", max_length)
    if temperature <= 0:
        raise errors.fail("temperature", "a positive number", temperature)
    done = torch.zeros(logits.shape[0], dtype=torch.bool, device=logits.device)
    for t in range(max_length):
        token = logits.argmax(-1) if greedy else _draw(logits, temperature, top_k, top_p, generator)
        if eos is not None:
            token = torch.where(done, torch.full_like(token, eos), token)
            done = done | (token == eos)
        yield token
        if (eos is not None and bool(done.all())) or t == max_length - 1:
            return
        logits, state = decoder.decode_step(token, state)


def _draw(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, generator) -> Tensor:
    logits = logits.float() / temperature
    if top_k is not None:
        errors.check_positive_int("top_k", top_k)
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None:
        if not 0 < top_p <= 1:
            raise errors.fail("top_p", "a probability in (0, 1]", top_p)
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # keep the smallest prefix whose mass reaches top_p: drop a token if the mass before it already does
        drop = (probs.cumsum(-1) - probs) >= top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def beam_search(decoder, logits: Tensor, state, beam_size: int, max_length: int, eos: int | None = None,
                length_penalty: float = 1.0) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Batched beam search. Returns ``(tokens (N, T), normalised log-probability (N,))``."""
    errors.check_positive_int("beam_size", beam_size)
    errors.check_positive_int("max_length", max_length)
    batch, vocab = logits.shape
    device = logits.device
    scores, first = logits.float().log_softmax(-1).topk(min(beam_size, vocab), dim=-1)
    beams = scores.shape[1]
    origin = torch.arange(batch, device=device).repeat_interleave(beams)
    state = decoder.reorder_state(state, origin)
    sequences = first.reshape(-1, 1)
    scores = scores.reshape(-1)
    finished = sequences[:, 0] == eos if eos is not None else torch.zeros_like(scores, dtype=torch.bool)
    lengths = torch.ones_like(scores)
    if eos is not None:
        frozen = torch.full((vocab,), float("-inf"), device=device)
        frozen[eos] = 0.0
    for _ in range(1, max_length):
        if bool(finished.all()):
            break
        logits, state = decoder.decode_step(sequences[:, -1], state)
        log_probs = logits.float().log_softmax(-1)
        if eos is not None:
            log_probs = torch.where(finished.unsqueeze(1), frozen, log_probs)
        total = (scores.unsqueeze(1) + log_probs).view(batch, beams * vocab)
        top_scores, top_index = total.topk(beams, dim=-1)
        origin = (torch.arange(batch, device=device).unsqueeze(1) * beams + top_index // vocab).reshape(-1)
        token = (top_index % vocab).reshape(-1)
        sequences = torch.cat([sequences[origin], token.unsqueeze(1)], dim=1)
        state = decoder.reorder_state(state, origin)
        lengths = lengths[origin] + (~finished[origin]).float()
        finished = finished[origin] | (token == eos) if eos is not None else finished
        scores = top_scores.reshape(-1)
    normalized = (scores / lengths**length_penalty).view(batch, beams)
    best = normalized.argmax(-1)
    pick = torch.arange(batch, device=device) * beams + best
    return sequences[pick], normalized[torch.arange(batch, device=device), best]


def select_rows(state, index: Tensor, batch_dim: int = 0):
    """``reorder_state`` for states made of tensors with the batch along ``batch_dim`` (nested tuples allowed)."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.index_select(batch_dim, index)
    return type(state)(select_rows(s, index, batch_dim) for s in state)


# -- CTC: per-frame distributions over labels and a blank ------------------------------
#
# A CTC model emits, for each of T frames, log-probabilities over C symbols
# where one (``blank``) means "no label". A path of T symbols maps to a label
# sequence by B: merge repeats, then drop blanks ("aa-ab" and "a-abb" both give
# "aab"). p(l | x) sums over every path with B(path) = l; see rnnkit.models.ctc.


def ctc_greedy(log_probs: Tensor, lengths: Tensor | None = None, blank: int = 0) -> list[list[int]]:
    """Best-path decoding: B(the most probable symbol per frame).

    ``log_probs`` (N, T, C); only the first ``lengths[i]`` frames of row i count.
    Not the most probable label sequence in general (that sums over paths), but
    close when the model is confident, and cheap.
    """
    best = log_probs.argmax(-1).tolist()
    counts = [len(row) for row in best] if lengths is None else torch.as_tensor(lengths).tolist()
    return [_collapse(row[:n], blank) for row, n in zip(best, counts)]


def _collapse(path: list[int], blank: int) -> list[int]:
    return [s for i, s in enumerate(path) if s != blank and (i == 0 or s != path[i - 1])]


def ctc_prefix_beam_search(log_probs: Tensor, beam_size: int, blank: int = 0, prune: float | None = None) -> list[tuple[list[int], float]]:
    """CTC prefix beam search, no language model (Graves, 2012, chapter 7; Hannun et al., 2014, algorithm 1).

    ``log_probs`` (T, C) for one utterance. Each kept prefix l carries two
    log-probabilities over the frames read so far: of the paths that map to l
    and end in a blank, p_b(l), and of those that end in l's last label,
    p_nb(l). At each frame every prefix either stays (a blank, or a repeat of
    its last label with no blank between) or grows by one label c; growing by
    its own last label needs a blank between, so it draws on p_b only:

        p_b'(l)    += y(blank) (p_b(l) + p_nb(l))
        p_nb'(l)   += y(last)  p_nb(l)
        p_nb'(l+c) += y(c) (p_b(l) + p_nb(l))    c != last
        p_nb'(l+c) += y(c) p_b(l)                c == last

    The ``beam_size`` prefixes with the largest p_b + p_nb survive. With a
    beam as large as the number of distinct prefixes the result is exact: the
    label sequence of highest total probability. ``prune`` skips, at each frame,
    labels whose probability is below it (never the frame's best label).

    Returns up to ``beam_size`` pairs ``(labels, log p(labels))``, best first.
    """
    errors.check_positive_int("beam_size", beam_size)
    if log_probs.dim() != 2:
        raise errors.fail("log_probs", "shape (T, C) for one utterance", tuple(log_probs.shape))
    floor = math.log(prune) if prune else -math.inf
    beams: dict[tuple[int, ...], tuple[float, float]] = {(): (0.0, -math.inf)}
    for frame in log_probs.double().tolist():
        top = max(range(len(frame)), key=frame.__getitem__)
        labels = [c for c, p in enumerate(frame) if c != blank and (p >= floor or c == top)]
        grown: dict[tuple[int, ...], list[float]] = {}
        for prefix, (p_b, p_nb) in beams.items():
            total = _logadd(p_b, p_nb)
            _accumulate(grown, prefix, 0, frame[blank] + total)
            last = prefix[-1] if prefix else None
            for c in labels:
                if c == last:
                    _accumulate(grown, prefix, 1, frame[c] + p_nb)
                    _accumulate(grown, prefix + (c,), 1, frame[c] + p_b)
                else:
                    _accumulate(grown, prefix + (c,), 1, frame[c] + total)
        ranked = sorted(grown.items(), key=lambda item: _logadd(*item[1]), reverse=True)[:beam_size]
        beams = {prefix: (p_b, p_nb) for prefix, (p_b, p_nb) in ranked}
    return [(list(prefix), _logadd(p_b, p_nb)) for prefix, (p_b, p_nb) in beams.items()]


def _accumulate(table: dict, prefix: tuple[int, ...], which: int, value: float) -> None:
    """table[prefix][which] (0: p_b, 1: p_nb) += exp(value), in log space."""
    if value == -math.inf:
        return  # e.g. a repeat drawn from an empty p_b: no path, so no prefix
    entry = table.setdefault(prefix, [-math.inf, -math.inf])
    entry[which] = _logadd(entry[which], value)


def _logadd(a: float, b: float) -> float:
    if a < b:
        a, b = b, a
    return a if b == -math.inf else a + math.log1p(math.exp(b - a))
