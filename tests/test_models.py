"""The four sequence shapes: shapes, masking, save/load, and each model learning a small task.

Every learning test states its bar next to chance level. Digits are tokens 3..12
(0 = pad, 1 = BOS, 2 = EOS), so a digit d is token d + 3.
"""

from __future__ import annotations

import pytest
import torch

import rnnkit.models as M
from rnnkit.data import StreamBatches, TensorBatches
from rnnkit.training import CheckpointError, Trainer, TrainerConfig
from tests.support.models import periodic_tokens

PAD, BOS, EOS, DIGIT0 = 0, 1, 2, 3
VOCAB = 13


def digits(n: int, min_len: int, max_len: int, seed: int):
    """Random digit sequences, right-padded: tokens (n, max_len) and lengths (n,)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=g)
    values = torch.randint(0, 10, (n, max_len), generator=g)
    valid = torch.arange(max_len) < lengths.unsqueeze(1)
    return torch.where(valid, values + DIGIT0, PAD), lengths, values, valid


def train(model, inputs, targets, epochs: int, lr: float = 1e-2, batch_size: int = 32, **config):
    torch.manual_seed(0)
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=lr), TrainerConfig(max_epochs=epochs, progress=False, clip_grad_norm=1.0, **config))
    trainer.fit(TensorBatches(inputs, targets, batch_size))
    return trainer


def tokens_in(rnn="gru", hidden=32, **kw):
    return M.InputConfig(vocab_size=VOCAB, embedding_dim=16), M.RecurrentConfig(cell=rnn, hidden_size=hidden, **kw)


def on_tokens(config_class, rnn="gru", hidden=32, **config):
    """A model config on digit tokens, with the recurrent core given by name."""
    inputs, core = tokens_in(rnn, hidden)
    return config_class(input=inputs, rnn=core, **config)


# -- many-to-one ----------------------------------------------------------------

def _first_greater_than_last(seed, n=1200):
    tokens, lengths, values, _ = digits(n, 3, 8, seed)
    last = values[torch.arange(n), lengths - 1]
    keep = values[:, 0] != last  # no ties, so chance is 50%
    return (tokens[keep], lengths[keep]), (values[:, 0] > last)[keep].long()


@pytest.mark.parametrize("pooling", ["last", "attention"])
def test_classifier_learns_an_order_task_that_the_mlp_cannot(pooling):
    (x, lengths), y = _first_greater_than_last(seed=1)
    (xv, lv), yv = _first_greater_than_last(seed=2, n=400)
    inputs, rnn = tokens_in(bidirectional=pooling == "attention")  # attention compares both ends: let it see both ways
    torch.manual_seed(0)
    rnn_model = M.SequenceClassifier(M.ManyToOneConfig(inputs, 2, rnn, pooling=pooling))
    train(rnn_model, (x, lengths), y, epochs=12)
    rnn_accuracy = (rnn_model.predict_proba((xv, lv)).argmax(-1) == yv).float().mean()
    assert rnn_accuracy >= 0.9  # chance: 0.5

    torch.manual_seed(0)
    mlp = M.BagOfFeaturesMLP(M.BagOfFeaturesConfig(inputs, 2))
    train(mlp, (x, lengths), y, epochs=12)
    mlp_accuracy = (mlp.predict_proba((xv, lv)).argmax(-1) == yv).float().mean()
    assert mlp_accuracy <= 0.7  # a bag of digits barely hints at which came first


def test_mlp_learns_an_order_free_task():
    tokens, lengths, values, valid = digits(1200, 3, 8, seed=3)
    y = ((values * valid).sum(1) > 4.5 * lengths).long()  # mean digit above 4.5
    torch.manual_seed(0)
    mlp = M.BagOfFeaturesMLP(M.BagOfFeaturesConfig(M.InputConfig(vocab_size=VOCAB, embedding_dim=16), 2))
    train(mlp, (tokens, lengths), y, epochs=15)
    t2, l2, v2, ok2 = digits(400, 3, 8, seed=4)
    assert (mlp.predict_proba((t2, l2)).argmax(-1) == ((v2 * ok2).sum(1) > 4.5 * l2).long()).float().mean() >= 0.85


def test_regressor_learns_the_mean_of_continuous_inputs():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(800, 10, 1, generator=g)
    lengths = torch.randint(2, 11, (800,), generator=g)
    y = torch.stack([x[i, : lengths[i]].mean() for i in range(800)])
    config = M.ManyToOneConfig(M.InputConfig(feature_size=1), 1, M.RecurrentConfig(cell="lstm", hidden_size=24), pooling="mean")
    torch.manual_seed(0)
    model = M.SequenceRegressor(config)
    train(model, (x, lengths), y, epochs=15)
    model.eval()
    mae = (model((x[:200], lengths[:200]))[0].squeeze(-1) - y[:200]).abs().mean()
    assert mae < 0.04  # predicting the global mean gives about 0.1


@pytest.mark.parametrize("pooling", ["last", "mean", "max", "attention"])
@pytest.mark.parametrize("bidirectional", [False, True], ids=["uni", "bi"])
def test_pooling_respects_lengths(pooling, bidirectional):
    inputs, rnn = tokens_in("lstm", 8, bidirectional=bidirectional, num_layers=2)
    model = M.SequenceClassifier(M.ManyToOneConfig(inputs, 3, rnn, pooling=pooling)).eval()
    tokens, lengths, _, _ = digits(4, 2, 6, seed=6)
    batched, _ = model((tokens, lengths))
    weights = model.last_attention
    noisy = tokens.clone()
    noisy[~(torch.arange(6) < lengths.unsqueeze(1))] = 7  # garbage in the padding
    assert torch.allclose(model((noisy, lengths))[0], batched, atol=1e-6)
    for i in range(4):
        alone, _ = model((tokens[i : i + 1, : lengths[i]], lengths[i : i + 1]))
        torch.testing.assert_close(alone, batched[i : i + 1], atol=1e-5, rtol=1e-5)
    if pooling == "attention":
        assert torch.allclose(weights.sum(-1), torch.ones(4))
        assert (weights[~(torch.arange(6) < lengths.unsqueeze(1))] == 0).all()


# -- many-to-many, aligned --------------------------------------------------------

def test_bidirectional_tagger_learns_to_tag_the_next_digit():
    tokens, lengths, values, valid = digits(1000, 3, 8, seed=7)
    next_digit = torch.roll(values, -1, dims=1)
    targets = torch.where(valid & (torch.arange(8) < (lengths - 1).unsqueeze(1)), next_digit, 10)  # 10: "end"
    inputs, rnn = tokens_in("gru", 32, bidirectional=True)
    torch.manual_seed(0)
    model = M.SequenceTagger(M.TaggerConfig(inputs, 11, rnn))
    trainer = train(model, (tokens, lengths), targets, epochs=10)
    t2, l2, v2, ok2 = digits(300, 3, 8, seed=8)
    target2 = torch.where(ok2 & (torch.arange(8) < (l2 - 1).unsqueeze(1)), torch.roll(v2, -1, dims=1), 10)
    assert trainer.evaluate(TensorBatches((t2, l2), target2, 100, shuffle=False))["accuracy"] >= 0.95  # chance ~0.1


def test_tagger_ignores_padding_targets():
    inputs, rnn = tokens_in("rnn", 8)
    model = M.SequenceTagger(M.TaggerConfig(inputs, 4, rnn))
    tokens, lengths, _, valid = digits(3, 2, 5, seed=9)
    outputs, _ = model((tokens, lengths))
    targets = torch.randint(0, 4, (3, 5))
    changed = targets.masked_fill(~valid, 3)
    assert model.loss(outputs, targets) == model.loss(outputs, changed)
    assert model.metrics(outputs, targets) == model.metrics(outputs, changed)


def test_language_model_with_tied_weights_learns_by_truncated_bptt():
    torch.manual_seed(0)
    config = M.LanguageModelConfig(vocab_size=11, embedding_dim=32, rnn=M.RecurrentConfig(cell="lstm", hidden_size=32), tie_weights=True)
    model = M.LanguageModel(config)
    assert model.head.weight is model.encoder.embedding.weight
    trainer = Trainer(model, torch.optim.Adam(model.parameters(), lr=1e-2), TrainerConfig(max_epochs=3, tbptt_k1=25, time_dim=1, progress=False))
    trainer.fit(StreamBatches(periodic_tokens(4000), 8, batch_first=True))
    assert trainer.evaluate(StreamBatches(periodic_tokens(800, seed=1), 4, batch_first=True))["accuracy"] >= 0.85  # 90% is predictable


@pytest.mark.parametrize("pad_id", [None, 0])
def test_language_model_accuracy_ignores_the_targets_its_loss_ignores(pad_id):
    model = M.LanguageModel(M.LanguageModelConfig(5, 4, M.RecurrentConfig(hidden_size=4), pad_id=pad_id))
    logits = torch.zeros(1, 4, 5)
    logits[0, :, 3] = 1.0  # predicts 3 everywhere
    ignored = -100 if pad_id is None else 0
    targets = torch.tensor([[3, 1, ignored, ignored]])
    assert model.metrics(logits, targets)["accuracy"] == 0.5


# -- one-to-many -------------------------------------------------------------------

def _counting(n, seed):
    """Condition: a one-hot digit d. Sequence: d, d+1, ..., d+4 (mod 10), EOS."""
    g = torch.Generator().manual_seed(seed)
    start = torch.randint(0, 10, (n,), generator=g)
    sequence = (start.unsqueeze(1) + torch.arange(5)) % 10 + DIGIT0
    target = torch.cat([sequence, torch.full((n, 1), EOS)], 1)
    tokens_in = torch.cat([torch.full((n, 1), BOS), sequence], 1)
    return torch.nn.functional.one_hot(start, 10).float(), tokens_in, target


@pytest.mark.parametrize("mode", ["init", "every_step"])
def test_conditional_generator_learns_to_count_from_its_condition(mode):
    condition, tokens_in, target = _counting(600, seed=10)
    config = M.ConditionalGeneratorConfig(10, VOCAB, 16, M.RecurrentConfig(cell="gru", hidden_size=32), condition_mode=mode)
    torch.manual_seed(0)
    model = M.ConditionalGenerator(config)
    train(model, (condition, tokens_in), target, epochs=10)
    test_condition, _, test_target = _counting(100, seed=11)
    generated = model.generate(test_condition, max_length=6)
    assert (generated == test_target).all(-1).float().mean() >= 0.95  # chance: 1e-5
    assert torch.equal(model.generate(test_condition, max_length=6, beam_size=3), generated)


# -- encoder-decoder ---------------------------------------------------------------

def _reversal(n, seed):
    tokens, lengths, values, valid = digits(n, 2, 6, seed)
    reversed_tokens = torch.stack([torch.cat([tokens[i, : lengths[i]].flip(0), torch.full((6 - lengths[i],), PAD)]) for i in range(n)])
    target = torch.cat([reversed_tokens, torch.full((n, 1), PAD)], 1)
    target[torch.arange(n), lengths] = EOS
    shifted = target[:, :-1]
    target_in = torch.cat([torch.full((n, 1), BOS), shifted.masked_fill(shifted == EOS, PAD)], 1)
    return (tokens, lengths, target_in), target


@pytest.mark.parametrize("attention,epochs", [("bahdanau", 12), ("dot", 8), ("general", 8)])
def test_seq2seq_learns_to_reverse_digits(attention, epochs):
    inputs, target = _reversal(1500, seed=12)
    config = M.Seq2SeqConfig(VOCAB, VOCAB, 16, M.RecurrentConfig(cell="gru", hidden_size=48), attention=attention)
    torch.manual_seed(0)
    model = M.Seq2Seq(config)
    train(model, inputs, target, epochs=epochs, batch_size=50)  # additive attention learns this more slowly
    (source, lengths, _), expected = _reversal(200, seed=13)
    greedy = model.translate(source, lengths, max_length=7)
    assert (greedy == expected.masked_fill(expected == PAD, EOS)).all(-1).float().mean() >= 0.85  # chance: ~1e-4


def test_seq2seq_attention_sums_to_one_and_ignores_padding():
    model = M.Seq2Seq(M.Seq2SeqConfig(VOCAB, VOCAB, 8, M.RecurrentConfig(cell="lstm", hidden_size=12, num_layers=2)))
    (source, lengths, target_in), _ = _reversal(5, seed=14)
    outputs, _ = model((source, lengths, target_in))
    assert outputs.logits.shape == (5, 7, VOCAB) and outputs.attention.shape == (5, 7, 6)
    torch.testing.assert_close(outputs.attention.sum(-1), torch.ones(5, 7))
    padding = ~(torch.arange(6) < lengths.unsqueeze(1))
    assert (outputs.attention.masked_select(padding.unsqueeze(1)) == 0).all()


def test_scheduled_sampling_feeds_predictions():
    model = M.Seq2Seq(M.Seq2SeqConfig(VOCAB, VOCAB, 8, M.RecurrentConfig(cell="gru", hidden_size=12), teacher_forcing=0.0))
    (source, lengths, target_in), _ = _reversal(6, seed=15)
    torch.manual_seed(0)
    free_running = model((source, lengths, target_in))[0].logits
    garbage = torch.full_like(target_in, 5)
    garbage[:, 0] = BOS
    torch.manual_seed(0)
    assert torch.allclose(model((source, lengths, garbage))[0].logits, free_running)  # ground truth never read
    model.teacher_forcing = 1.0
    assert not torch.allclose(model((source, lengths, garbage))[0].logits, free_running)


# -- save and load -----------------------------------------------------------------

MODELS = {
    "classifier": lambda: M.SequenceClassifier(on_tokens(M.ManyToOneConfig, "lstm", 8, pooling="attention")),
    "mlp": lambda: M.BagOfFeaturesMLP(M.BagOfFeaturesConfig(M.InputConfig(feature_size=3))),
    "tagger": lambda: M.SequenceTagger(on_tokens(M.TaggerConfig, "rnn", 8)),
    "lm": lambda: M.LanguageModel(M.LanguageModelConfig(VOCAB, 8, M.RecurrentConfig(cell="gru", hidden_size=8, layer_norm=True))),
    "generator": lambda: M.ConditionalGenerator(M.ConditionalGeneratorConfig(4, VOCAB, 8, M.RecurrentConfig(hidden_size=8))),
    "seq2seq": lambda: M.Seq2Seq(M.Seq2SeqConfig(VOCAB, VOCAB, 8, M.RecurrentConfig(hidden_size=8), attention="general")),
}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_save_and_load_round_trip(name, tmp_path):
    torch.manual_seed(0)
    model = MODELS[name]().eval()
    M.save_model(model, tmp_path / "m.safetensors", extra={"vocabulary": ["<pad>", "a"]})
    loaded, extra = M.load_model(tmp_path / "m.safetensors")
    assert type(loaded) is type(model) and loaded.config == model.config and extra == {"vocabulary": ["<pad>", "a"]}
    for (n, a), (_, b) in zip(model.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), n


def test_load_refuses_weights_that_do_not_fit_the_config(tmp_path):
    model = MODELS["classifier"]()
    M.save_model(model, tmp_path / "m.safetensors")
    from rnnkit.training.checkpoint import load_checkpoint, save_checkpoint

    tensors, metadata = load_checkpoint(tmp_path / "m.safetensors")
    metadata["model_config"]["rnn"]["hidden_size"] = 11
    save_checkpoint(tmp_path / "m.safetensors", tensors, metadata)
    with pytest.raises(CheckpointError, match="expected .* of shape .* from the config, got"):
        M.load_model(tmp_path / "m.safetensors")


@pytest.mark.parametrize(
    "build,message",
    [
        (lambda: M.InputConfig(), "input: expected exactly one of vocab_size"),
        (lambda: M.LanguageModel(M.LanguageModelConfig(5, 8, M.RecurrentConfig(hidden_size=16), tie_weights=True)), "tie_weights: expected embedding_dim == hidden_size"),
        (lambda: M.LanguageModel(M.LanguageModelConfig(5, rnn=M.RecurrentConfig(bidirectional=True))), "rnn.bidirectional: expected False for a language model"),
        (lambda: M.SequenceTagger(M.TaggerConfig(M.InputConfig(vocab_size=5), rnn=M.RecurrentConfig(cell="rnn", layer_norm=True))), "layer_norm: expected False for cell='rnn'"),
        (lambda: M.Seq2Seq(M.Seq2SeqConfig(5, 5, attention="cosine")), "attention: expected one of"),
    ],
)
def test_config_errors(build, message):
    with pytest.raises(ValueError, match=message):
        build()


def test_token_model_rejects_float_inputs():
    model = MODELS["classifier"]()
    with pytest.raises(ValueError, match="inputs: expected integer token ids for a model with vocab_size, got dtype torch.float32"):
        model(torch.randn(2, 3))
