r"""Melody generation over note events (many-to-many language model) beside unigram and Markov models.

Examples::

    rnnkit train music --out runs/music
    rnnkit train music --size demo --out runs/music_demo
    rnnkit train music --data my_scores/ --out runs/mine       # a folder of .mxl/.musicxml/.xml files
    rnnkit generate runs/music --length 64 --temperature 0.8   # writes a MIDI file and a piano roll
    rnnkit generate runs/music --prime "E5:1 D5:0.5 C5:0.5"    # continue your own opening

Data. By default the Bach chorales of music21's corpus
(``music21/corpus/bach/*.mxl``), read straight out of the music21 wheel that
``make data`` downloads: 407 chorales (``bwv846.mxl``, a keyboard prelude
without a soprano part, is left out). Each ``.mxl`` is a zip holding one
MusicXML file; a small reader here (:func:`read_melody`, ``xml.etree``) takes
one melody from it. We do not use music21 itself: it is a large dependency
for one part of one file format, and it builds full score objects (every
voice, lyric and layout mark) where we need one line of notes; this reader
parses only as far as the melody's part and takes about two seconds for all
407 chorales on one core. The melody is the first part whose name starts
with "Soprano" (else the first part: 36 chorales put a horn, trumpet or
violin part before the soprano), read as: ``<divisions>`` scale ``<duration>``
to quarter notes; ``<backup>``/``<forward>`` move the clock; a ``<chord/>``
note sounds with the note before it and the top note of a chord is kept;
only the part's first ``<voice>`` is kept; grace and cue notes have no
duration and are skipped; a note tied (``<tie type="stop"/>`` or ``<tied>``) to the same
pitch before it lengthens that note; gaps and ``<rest/>`` are rests, and
adjacent rests merge; leading and trailing rests are dropped. Your own data
(``--data PATH``): a folder of such files (one melody each, searched
recursively) or one file, whose melody is then cut in order into train,
validation and test parts.

Representation. One token per note event: the pitch (or a rest) and its
duration, rounded to ``data.grid`` steps per quarter note (4: sixteenths),
written like ``E5:1.5`` (an E5 of a dotted quarter) or ``R:1``. Joint tokens
keep a note event one prediction, so the per-event NLL and accuracy are those
of one softmax and the baselines count the very same symbols; the chorales'
rhythms are few, so the vocabulary stays near 150. Every melody is
transposed so that its first key signature has no sharps or flats (C major
or A minor), by the smaller interval: that shares the statistics of all
keys, the common alternative to augmenting the training set with
transpositions. Events seen fewer than ``data.min_count`` times in training
share one unknown token ``?``; the token ``|`` starts and ends each melody.

Split. Whole melodies (seeded) go to train, validation and test, by tune:
the corpus holds several settings of many hymn tunes (eleven of "Herzlich
tut mich verlangen", the Passion chorale), so melodies that open with the same ``data.tune_prefix``
pitches count as one tune and stay on one side, and exact repeats are
dropped. Split by file alone, the test would be mostly tunes seen in
training, and an order-6 Markov model that recalls them would score a
next-event accuracy of 0.48 (0.34 on unseen tunes).

Method. A :class:`~rnnkit.models.LanguageModel` (GRU by default) reads each
training melody from ``|`` and predicts its next event at every position;
mini-batches of ``batch_size`` melodies of similar lengths are padded, and
the padding is not scored. It keeps the weights with the best validation
loss. Generation samples events one at a time (never ``|`` or ``?``) and
writes a standard MIDI file (type 0, with ``mido``) and a piano-roll PNG.

Metrics, on the held-out melodies, each read from its start: negative
log-likelihood in nats per note event, :math:`-\frac{1}{N}\sum_i \ln p(x_i \mid x_{<i})`
over every note event (the closing ``|`` is predicted but not scored), and
next-event accuracy (the most probable event is the true one). Baselines,
counted on the training melodies (each preceded by ``|`` as its context):

* unigram, add-one: :math:`p(x) = (n(x) + 1) / (n + V)`;
* order-k Markov with interpolated Witten-Bell smoothing (see
  :class:`~rnnkit.tasks.common.MarkovModel`), k = 1..``max_order`` chosen on
  the validation melodies.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig, decoding, load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, MarkovModel, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything
from rnnkit.tasks.music_data import (  # noqa: F401 (re-exported: the names as before the split)
    FOLDER, WHEEL, DataConfig, MelodyBatches, Split, build_vocabulary, encode, load_split, padded, read_melodies)
from rnnkit.tasks.music_midi import WRAP, piano_roll, plot_piano_roll, wrap, write_midi  # noqa: F401
from rnnkit.tasks.music_score import BOUNDARY, NAMES, STEPS, UNKNOWN, SUFFIXES, Melody, event_name, event_names, parse_event, read_melody  # noqa: F401

# -- config --------------------------------------------------------------------------


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="gru", hidden_size=256, num_layers=2, dropout=0.3))
    dropout: float = 0.3


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=60, early_stopping_patience=10))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=2e-3))
    batch_size: int = 16  # melodies per update
    max_order: int = 6  # the Markov baseline tries orders 1..max_order
    tempo: int = 80  # quarter notes per minute in the MIDI files
    sample_length: int = 64  # note events in the sample that train writes


SIZES = {
    "demo": ["model.rnn.hidden_size=128", "model.rnn.num_layers=1", "model.rnn.dropout=0.0", "trainer.max_epochs=20",
             "optim.lr=0.004"],
    "fast": ["data.max_pieces=60", "model.embedding_dim=16", "model.rnn.hidden_size=32", "model.rnn.num_layers=1",
             "model.rnn.dropout=0.0", "model.dropout=0.0", "trainer.max_epochs=6", "optim.lr=0.01", "max_order=3", "sample_length=16"],
}  # fmt: skip


# -- train, evaluate ---------------------------------------------------------------------------


def train(config: Config, run_dir: Path, say=print) -> Report:
    data = config.data
    say(f"reading {'the Bach chorales of the music21 wheel' if data.path is None else data.path}")
    split = load_split(data)
    vocabulary = build_vocabulary(split.train, data.min_count)
    train_ids, val_ids = encode(split.train, vocabulary), encode(split.val, vocabulary)
    say(f"{len(split.train)} training melodies ({sum(map(len, split.train)):,} note events), {len(split.val)} validation, "
        f"{len(split.test)} test; {len(vocabulary)} symbols")  # fmt: skip

    seed_everything(config.trainer.seed)  # the model's initialisation too
    model = LanguageModel(LanguageModelConfig(len(vocabulary), config.model.embedding_dim, config.model.rnn, config.model.dropout))
    say(f"training the {config.model.rnn.cell.upper()} language model ({config.trainer.max_epochs} epochs of "
        f"{len(MelodyBatches(train_ids, config.batch_size))} batches of up to {config.batch_size} melodies)")  # fmt: skip
    train_batches = MelodyBatches(train_ids, config.batch_size, seed=config.trainer.seed)
    common.fit(model, train_batches, TensorBatches(*padded(val_ids), len(val_ids), shuffle=False), config.trainer, config.optim, run_dir)
    save_model(model, run_dir / "model.safetensors", extra={"vocabulary": vocabulary})
    say("fitting the unigram and Markov baselines")
    return report(config, run_dir, model, vocabulary, split)


def evaluate(config: Config, run_dir: Path) -> Report:
    model, extra = load_model(run_dir / "model.safetensors")
    return report(config, run_dir, model.eval(), extra["vocabulary"], load_split(config.data))


@torch.no_grad()
def rnn_scores(model: LanguageModel, melodies: list[list[int]]) -> tuple[float, float]:
    """``(NLL in nats per note event, accuracy)``, each melody read from ``|`` with a fresh state."""
    model.eval()
    inputs, targets = padded(melodies)
    logits, _ = model(inputs)
    scored = targets > 0  # note events: not the closing "|", not padding
    log_p = torch.log_softmax(logits.float(), -1)[scored].gather(1, targets[scored].unsqueeze(1))
    return -log_p.mean().item(), (logits[scored].argmax(-1) == targets[scored]).float().mean().item()


def markov_stream(melodies: list[list[int]], order: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(ids, counted, scored)``: each melody after ``order`` ``|`` as its context and closed by ``|``."""
    ids, counted, scored = [], [], []
    for m in melodies:
        ids += [0] * order + m + [0]
        counted += [False] * order + [True] * (len(m) + 1)
        scored += [False] * order + [True] * len(m) + [False]
    return np.array(ids, dtype=np.int64), np.array(counted), np.flatnonzero(scored)


def markov_scores(train_ids, val_ids, test_ids, max_order: int, vocab_size: int) -> dict[str, tuple[float, float]]:
    """``{name: (NLL nats per event, accuracy)}`` on the test melodies: unigram, and Witten-Bell at its best order on validation."""
    max_order = max(1, min(max_order, int(62 / math.log2(vocab_size)) - 1))  # contexts must fit in an int64
    ids, counted, _ = markov_stream(train_ids, max_order)
    markov = MarkovModel(ids, max_order, vocab_size, counted)

    def scores(melodies, order, smoothing, accuracy=True):
        ids, _, scored = markov_stream(melodies, max_order)
        nll = float(-np.log(markov.probabilities(ids, order, smoothing, scored)).mean())
        return nll, float((markov.predict(ids, order, smoothing, scored) == ids[scored]).mean()) if accuracy else None

    order = min(range(1, max_order + 1), key=lambda k: scores(val_ids, k, "Witten-Bell", accuracy=False)[0])
    return {f"Markov order {order}, Witten-Bell": scores(test_ids, order, "Witten-Bell"), "unigram, add-one": scores(test_ids, 0, "add-one")}


NLL, ACCURACY = "NLL (nats/event)", "accuracy"


def report(config: Config, run_dir: Path, model, vocabulary: list[str], split: Split) -> Report:
    data = config.data
    test_ids = encode(split.test, vocabulary)
    name = f"{config.model.rnn.cell.upper()} language model"
    scores = {name: rnn_scores(model, test_ids)}
    scores |= markov_scores(encode(split.train, vocabulary), encode(split.val, vocabulary), test_ids, config.max_order, len(vocabulary))
    rows = {k: {NLL: nll, ACCURACY: acc} for k, (nll, acc) in scores.items()}
    baselines = {k: v for k, v in rows.items() if k != name}
    verdict = " ".join(common.compare(f"The {name}", rows[name][metric], {k: v[metric] for k, v in baselines.items()}, metric, higher)
                       for metric, higher in ((NLL, False), (ACCURACY, True)))  # fmt: skip
    events = sum(map(len, test_ids))
    unknown = sum(i == 1 for m in test_ids for i in m)
    source = "Bach chorales (soprano)" if data.path is None else data.path
    held_out = f"held-out melodies of tunes (first {data.tune_prefix} pitches) unseen in training" if data.tune_prefix else "held-out melodies"
    notes = [f"Test: {len(test_ids)} {held_out}, {events:,} note events ({unknown} of them the unknown event '?'). "
             f"Tokens are (pitch, duration) pairs on a grid of 1/{data.grid} quarter note"
             f"{', each melody transposed to C major / A minor' if data.transpose else ''}; the Markov models count the "
             f"{len(split.train)} training melodies and their order is picked on the {len(split.val)} validation melodies."]  # fmt: skip
    sample = sample_events(model, vocabulary, data.grid, "", temperature=0.8, length=config.sample_length, seed=0)
    write_sample(config, run_dir, "sample", sample, "a sample at temperature 0.8")
    return Report("music", f"Melody generation: {source}", [NLL, ACCURACY], rows, verdict, notes,
                  {"Sample (temperature 0.8, seed 0; sample.mid and sample.png in the run folder)": wrap(sample)},
                  plots=["sample.png", "loss.png"])  # fmt: skip


# -- generate: MIDI and a piano roll ------------------------------------------------------------


class _NotesOnly:
    """Lets the sampler draw note events only: ``|`` (end of melody) and ``?`` get zero probability."""

    def __init__(self, model: LanguageModel) -> None:
        self.model = model

    @staticmethod
    def mask(logits: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full_like(logits[:, :2], float("-inf")), logits[:, 2:]], dim=1)

    def decode_step(self, tokens: torch.Tensor, state):
        logits, state = self.model.decode_step(tokens, state)
        return self.mask(logits), state


def generate(config: Config, run_dir: Path, prime: str = "", temperature: float = 0.8, length: int = 64, seed: int = 0) -> str:
    """Sample ``length`` note events after the prime; write ``generated-seedN.mid`` and ``.png`` into the run folder.

    ``prime``: blank to start a melody from scratch, else note events separated
    by spaces, such as ``"E5:1 D5:0.5 C5:0.5 R:1"`` (a duration in quarter
    notes; none means 1), in the training key (C major / A minor when
    ``data.transpose``). The files hold the prime and the sample.
    """
    return "".join(generate_stream(config, run_dir, prime, temperature, length, seed))


def generate_stream(config: Config, run_dir: Path, prime: str = "", temperature: float = 0.8, length: int = 64,
                    seed: int = 0) -> Iterator[str]:  # fmt: skip
    """What :func:`generate` returns, piece by piece: each event as soon as it is drawn, the file names at the end."""
    model, extra = load_model(Path(run_dir) / "model.safetensors")
    primed_events, events = stream_events(model, extra["vocabulary"], config.data.grid, prime, temperature, length, seed)
    names = []
    for event in itertools.chain(primed_events, events):
        yield ("" if not names else "\n" if len(names) % WRAP == 0 else " ") + event
        names.append(event)
    primed = f"{len(primed_events)} primed, " if primed_events else ""
    midi, png = write_sample(config, Path(run_dir), f"generated-seed{seed}", names, f"{primed}temperature {temperature}, seed {seed}")
    yield f"\nMIDI file: {midi}\npiano roll: {png}"


def sample_events(model: LanguageModel, vocabulary: list[str], grid: int, prime: str, temperature: float, length: int,
                  seed: int) -> list[str]:  # fmt: skip
    """The prime's events, then ``length`` events drawn one at a time from the model, the state carried."""
    primed, events = stream_events(model, vocabulary, grid, prime, temperature, length, seed)
    return primed + list(events)


def stream_events(model: LanguageModel, vocabulary: list[str], grid: int, prime: str, temperature: float, length: int,
                  seed: int, top_k: int | None = None, top_p: float | None = None) -> tuple[list[str], Iterator[str]]:  # fmt: skip
    """``(the prime's events, an iterator of the length sampled events)``; a bad prime fails here, not when read."""
    if not temperature > 0:
        raise DataError(f"temperature: expected a positive number, got {temperature}")
    primed = [event_name(*parse_event(e, grid, "prime"), grid) for e in prime.split()]
    unknown = [e for e in primed if e not in vocabulary[2:]]
    if unknown:
        example = "C5:1" if "C5:1" in vocabulary else vocabulary[2]
        raise DataError(f"prime: expected note events of the training vocabulary (such as {example!r}), got {unknown[:5]}")
    with torch.no_grad():
        logits, state = model.eval().decode_start(torch.tensor([[0, *encode([primed], vocabulary)[0]]]))
    generator = torch.Generator().manual_seed(seed)
    tokens = decoding.stream(_NotesOnly(model), _NotesOnly.mask(logits), state, length, greedy=False, temperature=temperature,
                             top_k=top_k, top_p=top_p, generator=generator)  # fmt: skip

    return primed, common.token_names(tokens, vocabulary)


def write_sample(config: Config, run_dir: Path, stem: str, names: list[str], title: str) -> tuple[Path, Path]:
    """``(STEM.mid, STEM.png)`` in the run folder: the events as a MIDI file and as a piano roll."""
    events = [parse_event(n, config.data.grid) for n in names]
    midi, png = run_dir / f"{stem}.mid", run_dir / f"{stem}.png"
    write_midi(midi, events, config.data.grid, config.tempo)
    plot_piano_roll(png, events, config.data.grid, f"{len(names)} note events ({title})")
    return midi, png
