"""Decoding: greedy, sampling, beam search, priming and streaming."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

import rnnkit.models as M
from rnnkit.models import decoding

EOS = 0


class TableDecoder:
    """A decoder whose next-token distribution depends only on the last token: p = table[last]."""

    def __init__(self, table: list[list[float]]) -> None:
        self.log_table = torch.tensor(table).log()

    def decode_step(self, tokens, state):
        return self.log_table[tokens], tokens

    def reorder_state(self, state, index):
        return state.index_select(0, index)

    def start(self, batch: int = 1):
        first = torch.full((batch,), 1)  # every sequence starts after token 1, "BOS"
        return self.decode_step(first, first)


# tokens: 0 EOS, 1 BOS, 2 A, 3 B, 4..7 C..F
TRAP = [
    [1, 0, 0, 0, 0, 0, 0, 0],  # after EOS: EOS
    [0, 0, 0.55, 0.45, 0, 0, 0, 0],  # after BOS: A is likelier than B
    [0, 0, 0, 0, 0.25, 0.25, 0.25, 0.25],  # after A: four equally likely continuations
    [0.9, 0, 0, 0.1, 0, 0, 0, 0],  # after B: almost surely EOS
    *[[1, 0, 0, 0, 0, 0, 0, 0]] * 4,  # after C..F: EOS
]


def _exhaustive_best(decoder: TableDecoder, max_length: int):
    table = decoder.log_table.exp()
    best, best_p = None, -1.0
    for length in range(1, max_length + 1):
        for sequence in itertools.product(range(8), repeat=length):
            if sequence[-1] != EOS or EOS in sequence[:-1]:
                continue
            p, last = 1.0, 1
            for token in sequence:
                p, last = p * table[last, token].item(), token
            if p > best_p:
                best, best_p = sequence, p
    return list(best), best_p


def test_beam_search_finds_the_sequence_greedy_misses():
    decoder = TableDecoder(TRAP)
    best, best_p = _exhaustive_best(decoder, 3)
    assert best == [3, EOS] and best_p == pytest.approx(0.405)

    greedy = decoding.greedy_search(decoder, *decoder.start(), max_length=3, eos=EOS)
    assert greedy[0].tolist()[:3] == [2, 4, EOS]  # A C EOS: p = 0.1375
    tokens, score = decoding.beam_search(decoder, *decoder.start(), beam_size=2, max_length=3, eos=EOS, length_penalty=0.0)
    assert tokens[0].tolist()[:2] == best
    assert score.item() == pytest.approx(math.log(best_p), abs=1e-6)


def test_length_penalty_prefers_longer_hypotheses_when_raised():
    # after BOS: EOS now (0.4) or X (0.6), then X -> EOS with 0.6: raw 0.36 < 0.4, per-token (0.36)^(1/2) = 0.6 > 0.4
    table = [[1, 0, 0], [0.4, 0, 0.6], [0.6, 0, 0.4]]
    decoder = TableDecoder(table)
    short, _ = decoding.beam_search(decoder, *decoder.start(), beam_size=2, max_length=2, eos=EOS, length_penalty=0.0)
    long, _ = decoding.beam_search(decoder, *decoder.start(), beam_size=2, max_length=2, eos=EOS, length_penalty=1.0)
    assert short[0].tolist() == [EOS, EOS] and long[0].tolist() == [2, EOS]


def _language_model(seed=0):
    torch.manual_seed(seed)
    return M.LanguageModel(M.LanguageModelConfig(9, 8, M.RecurrentConfig(cell="lstm", hidden_size=12, num_layers=2))).eval()


@torch.no_grad()
def test_beam_of_one_equals_greedy():
    model = _language_model()
    prompt = torch.randint(1, 9, (5, 4))
    greedy = decoding.greedy_search(model, *model.decode_start(prompt), max_length=12, eos=3)
    beam, _ = decoding.beam_search(model, *model.decode_start(prompt), beam_size=1, max_length=12, eos=3)
    assert torch.equal(beam[:, : greedy.shape[1]], greedy)
    seq2seq = M.Seq2Seq(M.Seq2SeqConfig(9, 9, 8, M.RecurrentConfig(cell="gru", hidden_size=12))).eval()
    source, lengths = torch.randint(3, 9, (4, 5)), [5, 2, 4, 3]
    assert torch.equal(seq2seq.translate(source, lengths, 9, beam_size=1), seq2seq.translate(source, lengths, 9)[:, :9])


@torch.no_grad()
def test_batched_beam_search_equals_one_example_at_a_time():
    model = _language_model(1)
    prompt = torch.randint(1, 9, (4, 3))
    batched, scores = decoding.beam_search(model, *model.decode_start(prompt), beam_size=3, max_length=8, eos=2)
    for i in range(4):
        alone, score = decoding.beam_search(model, *model.decode_start(prompt[i : i + 1]), beam_size=3, max_length=8, eos=2)
        length = alone.shape[1]
        assert torch.equal(alone[0], batched[i, :length])
        assert (batched[i, length:] == 2).all()  # the batch ran longer: EOS padding
        assert score.item() == pytest.approx(scores[i].item(), abs=1e-5)


@torch.no_grad()
def test_sampling_with_top_k_one_or_tiny_top_p_is_greedy():
    model = _language_model(2)
    prompt = torch.randint(1, 9, (3, 2))
    greedy = model.generate(prompt, 10, greedy=True)
    g = torch.Generator().manual_seed(0)
    assert torch.equal(model.generate(prompt, 10, top_k=1, generator=g), greedy)
    assert torch.equal(model.generate(prompt, 10, top_p=1e-6, generator=g), greedy)


class FixedDistribution:
    def __init__(self, probs):
        self.logits = torch.tensor(probs).log().unsqueeze(0).expand(4000, -1)

    def decode_step(self, tokens, state):
        return self.logits, state


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"temperature": 1.0}, [0.5, 0.3, 0.15, 0.05]),
        ({"temperature": 0.5}, [p**2 / 0.365 for p in (0.5, 0.3, 0.15, 0.05)]),  # p^(1/T), renormalised
        ({"top_k": 2}, [0.625, 0.375, 0, 0]),
        ({"top_p": 0.7}, [0.625, 0.375, 0, 0]),  # 0.5 < 0.7 <= 0.8: the nucleus is the first two
        ({"top_p": 0.5}, [1, 0, 0, 0]),
    ],
)
def test_sampling_frequencies_follow_the_truncated_distribution(kwargs, expected):
    decoder = FixedDistribution([0.5, 0.3, 0.15, 0.05])
    tokens = decoding.sample(decoder, decoder.logits, None, max_length=1, generator=torch.Generator().manual_seed(0), **kwargs)
    frequencies = torch.bincount(tokens.flatten(), minlength=4).float() / tokens.numel()
    torch.testing.assert_close(frequencies, torch.tensor(expected, dtype=torch.float32), atol=0.025, rtol=0)


@torch.no_grad()
def test_streaming_generation_carries_state_at_constant_cost():
    model = _language_model(3)
    prompt = torch.randint(1, 9, (2, 5))
    seen_lengths = []
    original = model.rnn.forward
    model.rnn.forward = lambda x, state=None, **kw: (seen_lengths.append(x.shape[1]), original(x, state, **kw))[1]
    logits, state = model.decode_start(prompt)
    generated = []
    for token in decoding.stream(model, logits, state, max_length=15):
        generated.append(token)
    model.rnn.forward = original
    assert seen_lengths == [5] + [1] * 14  # the prompt once, then one step per token

    # the carried state gives what a full forward pass over prompt + generated text gives
    full = torch.cat([prompt, torch.stack(generated, 1)], 1)
    logits_full, _ = model(full)
    assert torch.equal(logits_full[:, 4:-1].argmax(-1), torch.stack(generated, 1))


@torch.no_grad()
def test_eos_stops_generation_and_pads():
    decoder = TableDecoder(TRAP)
    out = decoding.greedy_search(decoder, *decoder.start(3), max_length=10, eos=EOS)
    assert out.shape == (3, 3)  # stopped once all sequences ended, not at max_length
    assert (out[:, -1] == EOS).all()


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda d: decoding.beam_search(d, *d.start(), beam_size=0, max_length=3), "beam_size: expected a positive int, got 0"),
        (lambda d: decoding.sample(d, *d.start(), max_length=3, temperature=0.0), "temperature: expected a positive number, got 0.0"),
        (lambda d: decoding.sample(d, *d.start(), max_length=3, top_p=1.5), r"top_p: expected a probability in \(0, 1\], got 1.5"),
        (lambda d: decoding.greedy_search(d, *d.start(), max_length=0), "max_length: expected a positive int, got 0"),
    ],
)
def test_decoding_argument_errors(call, message):
    with pytest.raises(ValueError, match=message):
        call(TableDecoder(TRAP))
