"""CTC: the decoders against brute-force enumeration of alignments, the loss against its definition, the models' shapes."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from rnnkit.models import CTCFrameMLP, CTCFrameMLPConfig, CTCRecognizer, CTCRecognizerConfig, RecurrentConfig, load_model, save_model
from rnnkit.models import decoding
from rnnkit.models.ctc import CTCOutput, edit_distance, stack_frames


def collapse(path) -> tuple[int, ...]:
    """B: merge repeats, then drop blanks (0)."""
    return tuple(s for i, s in enumerate(path) if s != 0 and (i == 0 or s != path[i - 1]))


def brute_force(log_probs: torch.Tensor) -> dict[tuple[int, ...], float]:
    """p(l | x) for every label sequence l, summing over all C^T paths."""
    probs = log_probs.double().exp()
    totals: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(probs.shape[1]), repeat=probs.shape[0]):
        p = math.prod(probs[t, s].item() for t, s in enumerate(path))
        totals[collapse(path)] = totals.get(collapse(path), 0.0) + p
    return totals


def frames(*rows) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64).log()


def test_greedy_merges_repeats_then_drops_blanks_within_each_length():
    one_hot = torch.eye(4)[[1, 1, 0, 1, 2, 2, 0, 3]].log()  # path a a - a b b - c
    log_probs = torch.stack([one_hot, one_hot])
    assert decoding.ctc_greedy(log_probs, torch.tensor([8, 5])) == [[1, 1, 2, 3], [1, 1, 2]]
    assert decoding.ctc_greedy(torch.eye(3)[[0, 0, 0]].log().unsqueeze(0)) == [[]]


def test_greedy_is_not_the_most_probable_labelling_but_beam_search_is():
    # Best path: blank, blank (0.36), so greedy says nothing; but "a" has 0.24 + 0.24 + 0.16 = 0.64.
    log_probs = frames([0.6, 0.4], [0.6, 0.4])
    assert decoding.ctc_greedy(log_probs.unsqueeze(0)) == [[]]
    (best, score), *rest = decoding.ctc_prefix_beam_search(log_probs, beam_size=4)
    assert best == [1] and score == pytest.approx(math.log(0.64))
    assert rest == [([], pytest.approx(math.log(0.36)))]


@pytest.mark.parametrize("seed", range(6))
def test_prefix_beam_search_matches_brute_force_enumeration(seed):
    generator = torch.Generator().manual_seed(seed)
    log_probs = (torch.randn(5, 3, generator=generator, dtype=torch.float64) * 2).log_softmax(-1)
    totals = brute_force(log_probs)
    ranked = sorted(totals.items(), key=lambda item: item[1], reverse=True)
    found = decoding.ctc_prefix_beam_search(log_probs, beam_size=len(totals))
    assert tuple(found[0][0]) == ranked[0][0]
    for labels, score in found:  # exact prefix probabilities, not just the right order
        assert score == pytest.approx(math.log(totals[tuple(labels)]), abs=1e-9)
    assert sum(math.exp(score) for _, score in found) == pytest.approx(1.0)  # every labelling, once
    narrow = decoding.ctc_prefix_beam_search(log_probs, beam_size=2)
    assert len(narrow) == 2 and narrow[0][1] <= math.log(ranked[0][1]) + 1e-9


def test_beam_search_pruning_keeps_the_frame_best_and_checks_its_input():
    log_probs = frames([0.98, 0.01, 0.01], [0.01, 0.98, 0.01], [0.98, 0.01, 0.01])
    assert decoding.ctc_prefix_beam_search(log_probs, beam_size=3, prune=0.5)[0][0] == [1]
    assert decoding.ctc_prefix_beam_search(frames([0.2, 0.4, 0.4]), 1, prune=0.9)[0][0] in ([1], [2])
    with pytest.raises(ValueError, match=r"log_probs: expected shape \(T, C\) for one utterance, got \(1, 3, 3\)"):
        decoding.ctc_prefix_beam_search(log_probs.unsqueeze(0), beam_size=3)
    with pytest.raises(ValueError, match=r"beam_size: expected a positive int, got 0"):
        decoding.ctc_prefix_beam_search(log_probs, beam_size=0)


def test_loss_is_the_negative_log_probability_of_the_labels_per_label():
    generator = torch.Generator().manual_seed(3)
    log_probs = torch.randn(2, 5, 3, generator=generator, dtype=torch.float64).log_softmax(-1)
    targets = torch.tensor([[1, 2], [2, 0]])  # second row: one label, padded with the blank
    outputs = CTCOutput(log_probs, torch.tensor([5, 4]))
    model = CTCRecognizer(CTCRecognizerConfig(feature_size=2, vocab_size=2))
    expected = (-math.log(brute_force(log_probs[0])[(1, 2)]) / 2 - math.log(brute_force(log_probs[1, :4])[(2,)]) / 1) / 2
    assert model.loss(outputs, targets).item() == pytest.approx(expected, rel=1e-5)
    torch_loss = torch.nn.CTCLoss(blank=0, zero_infinity=True)(log_probs.transpose(0, 1).float(), targets, torch.tensor([5, 4]), torch.tensor([2, 1]))
    assert model.loss(outputs, targets).item() == pytest.approx(torch_loss.item(), rel=1e-6)
    # "a a" needs a blank between: 2 frames cannot hold it, so p = 0, and that row counts as zero, not infinity
    impossible = model.loss(CTCOutput(log_probs[:1, :2], torch.tensor([2])), torch.tensor([[1, 1]]))
    assert impossible.item() == 0.0


def test_edit_distance():
    assert edit_distance([], []) == 0
    assert edit_distance(["one", "two"], []) == 2
    assert edit_distance([], ["one"]) == 1
    assert edit_distance("kitten", "sitting") == 3
    assert edit_distance([1, 2, 3], [1, 3]) == 1 and edit_distance([1, 2, 3], [3, 2, 1]) == 2


def test_stacking_frames_pads_the_tail_and_rounds_lengths_up():
    x = torch.arange(2 * 7 * 2, dtype=torch.float32).reshape(2, 7, 2)
    z, lengths = stack_frames(x, torch.tensor([7, 4]), 3)
    assert z.shape == (2, 3, 6) and lengths.tolist() == [3, 2]
    assert z[0, 0].tolist() == x[0, :3].flatten().tolist() and z[0, 2].tolist() == [12, 13, 0, 0, 0, 0]
    assert z[1, 1].tolist() == x[1, 3].tolist() + [0, 0, 0, 0]  # frames past the length are zeroed, not stacked
    assert stack_frames(x, None, 1)[1].tolist() == [7, 7]


@pytest.mark.parametrize("model", [
    CTCRecognizer(CTCRecognizerConfig(5, 4, RecurrentConfig(hidden_size=7, num_layers=2, bidirectional=True), subsample=3)),
    CTCFrameMLP(CTCFrameMLPConfig(5, 4, context=2, hidden_size=11, subsample=3)),
], ids=["bilstm", "mlp"])  # fmt: skip
def test_models_give_log_probabilities_per_subsampled_frame_independent_of_padding(model, tmp_path):
    model.eval()
    x = torch.randn(2, 13, 5)
    outputs, _ = model((x, torch.tensor([13, 8])))
    assert outputs.log_probs.shape == (2, 5, 5) and outputs.lengths.tolist() == [5, 3]
    assert torch.allclose(outputs.log_probs.exp().sum(-1), torch.ones(2, 5))
    alone, _ = model((x[1:, :8], torch.tensor([8])))  # the padding after a row's length changes nothing in it
    assert torch.allclose(alone.log_probs[0], outputs.log_probs[1, :3], atol=1e-6)
    loss = model.loss(outputs, torch.tensor([[1, 2, 0], [3, 0, 0]]))
    loss.backward()
    assert loss.item() > 0 and all(p.grad is not None for p in model.parameters())
    assert len(model.transcribe((x, torch.tensor([13, 8])), beam_size=4)) == 2
    save_model(model, tmp_path / "m.safetensors")
    again, _ = load_model(tmp_path / "m.safetensors")
    assert torch.equal(again.eval()((x, None))[0].log_probs, model((x, None))[0].log_probs)


def test_models_reject_features_of_the_wrong_size():
    model = CTCRecognizer(CTCRecognizerConfig(feature_size=13, vocab_size=11))
    with pytest.raises(ValueError, match=r"inputs: expected features of shape \(batch, time, 13\), got shape \(2, 9, 7\)"):
        model(torch.randn(2, 9, 7))
    with pytest.raises(ValueError, match=r"subsample: expected a positive int, got 0"):
        CTCRecognizerConfig(feature_size=13, vocab_size=11, subsample=0)
    with pytest.raises(ValueError, match=r"context: expected a non-negative int, got -1"):
        CTCFrameMLPConfig(feature_size=13, vocab_size=11, context=-1)
