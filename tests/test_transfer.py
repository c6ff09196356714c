"""Embedding dropout and the transfer-learning pieces: loading an LM's encoder, layer groups, freezing, rates, schedules."""

import pytest
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import InputConfig, LanguageModel, LanguageModelConfig, ManyToOneConfig, RecurrentConfig, SequenceClassifier
from rnnkit.models.common import InputEncoder
from rnnkit.training import Trainer, TrainerConfig
from rnnkit.training.transfer import (GradualUnfreezing, discriminative_param_groups, freeze, layer_groups, load_encoder, one_cycle,
                                      slanted_triangular, trainable_groups)  # fmt: skip

VOCAB = 23


def lm(hidden=16, layers=2, embedding=8, vocab=VOCAB):
    return LanguageModel(LanguageModelConfig(vocab, embedding, RecurrentConfig(cell="lstm", hidden_size=hidden, num_layers=layers)))


def classifier(hidden=16, layers=2, embedding=8, bidirectional=False, vocab=VOCAB):
    rnn = RecurrentConfig(cell="lstm", hidden_size=hidden, num_layers=layers, bidirectional=bidirectional)
    return SequenceClassifier(ManyToOneConfig(InputConfig(vocab_size=vocab, embedding_dim=embedding), 2, rnn, "max"))


# -- embedding dropout ------------------------------------------------------------------


def test_embedding_dropout_drops_whole_words_and_keeps_the_expectation():
    torch.manual_seed(0)
    encoder = InputEncoder(InputConfig(vocab_size=7, embedding_dim=5, padding_idx=None, embedding_dropout=0.5)).train()
    x = torch.tensor([[1, 2, 1, 3, 1, 2]] * 4)
    out = encoder(x)
    weight = encoder.embedding.weight
    for row in out.reshape(-1, 5):  # each position is either the row scaled by 2 or all zeros
        assert torch.allclose(row, torch.zeros(5)) or any(torch.allclose(row, 2 * weight[w]) for w in (1, 2, 3))
    for word in (1, 2, 3):  # a word is dropped everywhere in the batch or nowhere
        rows = out[x == word]
        assert torch.allclose(rows, rows[:1].expand_as(rows))
    mean = torch.stack([encoder(torch.tensor([[4]]))[0, 0] for _ in range(4000)]).mean(0)
    assert torch.allclose(mean, weight[4], atol=0.1)
    encoder.eval()
    assert torch.equal(encoder(x), weight[x])


def test_embedding_dropout_is_seeded_and_validated():
    config = LanguageModelConfig(VOCAB, 8, RecurrentConfig(hidden_size=8), embedding_dropout=0.3)
    torch.manual_seed(3)
    model = LanguageModel(config).train()
    tokens = torch.randint(0, VOCAB, (2, 11))
    torch.manual_seed(5)
    a = model(tokens)[0]
    torch.manual_seed(5)
    assert torch.equal(a, model(tokens)[0])
    with pytest.raises(ValueError, match="embedding_dropout: expected a probability in \\[0, 1\\), got 1.0"):
        InputConfig(vocab_size=5, embedding_dropout=1.0)
    with pytest.raises(ValueError, match="embedding_dropout: expected 0 for continuous features"):
        InputConfig(feature_size=3, embedding_dropout=0.2)


# -- loading an LM's encoder into a classifier ----------------------------------------------


def test_load_encoder_copies_the_embedding_and_layers_so_the_states_match():
    torch.manual_seed(0)
    source, target = lm(), classifier()
    names = load_encoder(target, source)
    assert "encoder.embedding.weight" in names and "rnn.weight_hh_l1" in names
    tokens = torch.randint(1, VOCAB, (3, 13))
    source.eval(), target.eval()
    expected, _ = source.rnn(source.encoder(tokens))
    got, _ = target.rnn(target.encoder(tokens))
    assert torch.allclose(got, expected)


@pytest.mark.parametrize("kwargs, message", [
    (dict(bidirectional=True), "weight_ih_l0_reverse: not in the language model"),
    (dict(hidden=17), r"rnn.weight_ih_l0: shape \(64, 8\) in the language model, \(68, 8\) in the classifier"),
    (dict(vocab=29), r"encoder.embedding.weight: shape \(23, 8\) in the language model, \(29, 8\)"),
    (dict(layers=1), "rnn.weight_ih_l1: missing in the classifier"),
])  # fmt: skip
def test_load_encoder_names_the_mismatch_and_copies_nothing(kwargs, message):
    torch.manual_seed(0)
    source, target = lm(), classifier(**kwargs)
    before = {k: v.clone() for k, v in target.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        load_encoder(target, source)
    assert all(torch.equal(before[k], v) for k, v in target.state_dict().items())


# -- layer groups, freezing, discriminative rates ---------------------------------------------


def test_layer_groups_cover_every_parameter_once_from_the_bottom_up():
    model = classifier(bidirectional=True)
    groups = layer_groups(model)
    assert [name for name, _ in groups] == ["embedding", "rnn.l0", "rnn.l1", "head"]
    assert sorted(id(p) for _, ps in groups for p in ps) == sorted(id(p) for p in model.parameters())
    assert len(groups[1][1]) == 8  # both directions of depth 0: weights and biases
    with pytest.raises(ValueError, match="model: expected a model with an `encoder` and an `rnn`"):
        layer_groups(torch.nn.Linear(3, 2))


def test_freeze_and_discriminative_rates():
    groups = layer_groups(classifier())
    freeze(groups, keep_trainable=1)
    assert [any(p.requires_grad for p in ps) for _, ps in groups] == [False, False, False, True]
    assert trainable_groups(groups) == 1
    with pytest.raises(ValueError, match="keep_trainable: expected an int from 0 to 4"):
        freeze(groups, 5)
    rates = [g["lr"] for g in discriminative_param_groups(groups, lr=0.01, factor=2.0)]
    assert rates == pytest.approx([0.00125, 0.0025, 0.005, 0.01])


def test_gradual_unfreezing_trains_one_more_group_each_epoch_and_resumes_frozen_as_it_was(tmp_path):
    torch.manual_seed(0)
    model = classifier()
    groups = layer_groups(model)
    freeze(groups, 1)
    x, y = torch.randint(1, VOCAB, (16, 7)), torch.randint(0, 2, (16,))
    batches = TensorBatches(x, y, 8, shuffle=False)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    unfreezing = GradualUnfreezing(groups)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), 0.1), TrainerConfig(max_epochs=1, progress=False), callbacks=[unfreezing])
    trainer.fit(batches)
    changed = {k for k, v in model.state_dict().items() if not torch.equal(v, start[k])}
    assert changed == {"head.weight", "head.bias"}  # epoch 0 trained the head alone
    assert unfreezing.trainable == 2 and trainable_groups(groups) == 2
    path = trainer.save(tmp_path / "c.safetensors")
    freeze(groups, 4)
    again = GradualUnfreezing(groups)
    Trainer(model, torch.optim.SGD(model.parameters(), 0.1), TrainerConfig(max_epochs=2, progress=False), callbacks=[again]).resume(path)
    assert again.trainable == 2 and trainable_groups(groups) == 2


# -- schedules ------------------------------------------------------------------------------


def rates(make, steps, **kwargs):
    optimizer = torch.optim.SGD([{"params": [torch.zeros(1, requires_grad=True)], "lr": 1.0},
                                 {"params": [torch.zeros(1, requires_grad=True)], "lr": 0.5}])  # fmt: skip
    scheduler = make(optimizer, steps, **kwargs)
    out = []
    for _ in range(steps):
        out.append([g["lr"] for g in optimizer.param_groups])
        optimizer.step()
        scheduler.step()
    return torch.tensor(out)


def test_slanted_triangular_rises_for_cut_frac_then_falls_to_peak_over_ratio():
    lr = rates(slanted_triangular, 100, cut_frac=0.1, ratio=32)
    assert lr[0, 0] == pytest.approx(1 / 32)
    assert lr[:, 0].argmax() == 10 and lr[10, 0] == pytest.approx(1.0)
    assert torch.all(lr[1:11, 0] > lr[:10, 0]) and torch.all(lr[11:, 0] < lr[10:-1, 0])
    assert lr[99, 0] == pytest.approx((1 + (1 - 89 / 90) * 31) / 32)
    assert torch.allclose(lr[:, 1], lr[:, 0] / 2)  # each group keeps its own (discriminative) rate
    with pytest.raises(ValueError, match="cut_frac: expected a fraction in \\(0, 1\\), got 1.5"):
        rates(slanted_triangular, 10, cut_frac=1.5)


def test_one_cycle_warms_up_then_anneals():
    lr = rates(one_cycle, 50, warmup_frac=0.2, ratio=10, final_ratio=100)
    assert lr[0, 0] == pytest.approx(0.1) and lr[:, 0].argmax() == 10 and lr[10, 0] == pytest.approx(1.0)
    assert lr[-1, 0] < 0.02 and torch.allclose(lr[:, 1], lr[:, 0] / 2)
