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

import io
import itertools
import math
import re
import xml.etree.ElementTree as ET
import zipfile
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import BinaryIO, Iterator, NamedTuple

import numpy as np
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig, decoding, load_model, save_model
from rnnkit.models.many_to_many import IGNORE_INDEX
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, MarkovModel, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything

# -- config --------------------------------------------------------------------------


@dataclass
class DataConfig:
    path: str | None = None  # None: the Bach chorales from the data cache; else a folder of MusicXML files, or one file
    val_fraction: float = 0.1  # of the melodies (of the events, for one file)
    test_fraction: float = 0.1
    split_seed: int = 0
    grid: int = 4  # duration steps per quarter note: 4 rounds to sixteenths
    transpose: bool = True  # to the key signature of C major / A minor
    min_count: int = 2  # rarer training events become "?"
    tune_prefix: int = 8  # melodies opening with the same pitches are one tune, held out together (0: split melodies alone)
    max_pieces: int | None = None  # read only the first N files, sorted by name (None: all)

    def __post_init__(self) -> None:
        if not (0 < self.val_fraction < 1 and 0 < self.test_fraction < 1 and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"data.val_fraction, data.test_fraction: expected fractions in (0, 1) with a sum below 1, "
                             f"got {self.val_fraction} and {self.test_fraction}")  # fmt: skip
        for name in ("grid", "min_count", "max_pieces"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < 1):
                raise ValueError(f"data.{name}: expected a positive int, got {value!r}")
        if not isinstance(self.tune_prefix, int) or self.tune_prefix < 0:
            raise ValueError(f"data.tune_prefix: expected an int of 0 or more, got {self.tune_prefix!r}")


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

WHEEL, FOLDER = "music21-*.whl", "music21/corpus/bach/"
SUFFIXES = (".mxl", ".musicxml", ".xml")
BOUNDARY, UNKNOWN = "|", "?"  # ids 0 and 1: the start and end of a melody; any rarer event
STEPS = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
NAMES = ["C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B"]

# -- reading MusicXML ------------------------------------------------------------------------


class Melody(NamedTuple):
    """One line of music: ``(MIDI pitch or None for a rest, duration in quarter notes)`` events."""

    events: list[tuple[int | None, Fraction]]
    fifths: int  # the first key signature: sharps (> 0) or flats (< 0)
    part: str  # the part's name


def read_melody(raw: bytes, source: str) -> Melody:
    """The melody of a MusicXML file (``.musicxml``/``.xml``) or of a compressed one (``.mxl``, a zip)."""
    if not raw.strip():
        raise DataError(f"{source}: expected MusicXML, found an empty file")
    part, name = _melody_part(_unzip_score(raw, source) if raw[:2] == b"PK" or source.endswith(".mxl") else raw, source)
    events, fifths = _read_part(part, f"{source}, part {name!r}")
    return Melody(events, fifths, name)


def _melody_part(raw: bytes, source: str) -> tuple[ET.Element, str]:
    """``(part, name)``: the first part named Soprano, else the first part.

    The XML is parsed incrementally and only as far as the end of that part,
    which is usually the first of four: the others are never built.
    """
    parser, root, names, wanted = ET.XMLPullParser(("start", "end")), None, {}, None
    try:
        for start in range(0, len(raw), 1 << 13):
            parser.feed(raw[start : start + (1 << 13)])
            for event, element in parser.read_events():
                if root is None:
                    root = element
                    if root.tag != "score-partwise":
                        raise DataError(f"{source}: expected a MusicXML <score-partwise> document, found <{root.tag}>")
                elif event == "end" and element.tag == "score-part":
                    names[element.get("id")] = " ".join((element.findtext("part-name") or "").split())
                elif event == "start" and element.tag == "part" and wanted is None:
                    wanted = next((i for i, n in names.items() if n.lower().startswith("soprano")), element.get("id"))
                elif event == "end" and element.tag == "part" and element.get("id") == wanted:
                    return element, names.get(wanted) or wanted or "part 1"
        parser.close()
    except ET.ParseError as error:
        raise DataError(f"{source}: expected MusicXML (well-formed XML), found an XML error: {error}") from None
    raise DataError(f"{source}: expected a <part>{f' with id {wanted!r}' if wanted else ''}, found none")


def _unzip_score(raw: bytes, source: str) -> bytes:
    """The score inside an .mxl: the first rootfile that META-INF/container.xml names, else the first .xml in it."""
    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as archive:
            names = archive.namelist()
            path = None
            if "META-INF/container.xml" in names:
                rootfile = _parse_xml(archive.read("META-INF/container.xml"), f"{source}:META-INF/container.xml").find(".//rootfile")
                path = rootfile.get("full-path") if rootfile is not None else None
            path = path or next((n for n in names if n.endswith(SUFFIXES[1:]) and not n.startswith("META-INF/")), None)
            if path not in names:
                raise DataError(f"{source}: expected a MusicXML file inside the .mxl zip, found {names[:5]}")
            return archive.read(path)
    except (zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{source}: expected a compressed MusicXML (.mxl) zip, found bytes {raw[:8]!r}... ({error})") from None


def _parse_xml(raw: bytes, source: str) -> ET.Element:
    try:
        return ET.fromstring(raw)
    except ET.ParseError as error:
        raise DataError(f"{source}: expected MusicXML (well-formed XML), found an XML error: {error}") from None


def _read_part(part: ET.Element, source: str) -> tuple[list[tuple[int | None, Fraction]], int]:
    """``(events, fifths)`` of one part: its first voice as a monophonic line (see the module docstring)."""
    clock, onset, divisions, fifths, voice = Fraction(0), Fraction(0), None, None, None
    notes = {}  # onset -> (pitch, duration, tied to the note before): the top note of each chord
    for measure in part.iterfind("measure"):
        for element in measure:
            if element.tag == "attributes":
                if element.findtext("divisions"):
                    divisions = _integer(element.findtext("divisions"), f"{source}, <divisions>", minimum=1)
                if fifths is None and element.findtext("key/fifths"):
                    fifths = _integer(element.findtext("key/fifths"), f"{source}, <key><fifths>")
            elif element.tag in ("backup", "forward"):
                step = _quarters(element, divisions, source, measure)
                clock += step if element.tag == "forward" else -step
                if clock < 0:
                    raise DataError(f"{source}, measure {measure.get('number')}: expected <backup> within the measure, found one before the start")
            elif element.tag == "note" and element.find("grace") is None and element.find("cue") is None:
                duration = _quarters(element, divisions, source, measure)
                if element.find("chord") is None:
                    onset, clock = clock, clock + duration
                voice = voice or element.findtext("voice", "1")
                if element.findtext("voice", "1") != voice:
                    continue
                pitch = None if element.find("rest") is not None else _midi_pitch(element, source, measure)
                tied = any(t.get("type") == "stop" for t in [*element.iterfind("tie"), *element.iterfind("notations/tied")])
                kept = notes.get(onset)
                if kept is None or (pitch is not None and (kept[0] is None or pitch > kept[0])):
                    notes[onset] = (pitch, duration, tied)
    return _melody(notes, source), fifths or 0


def _melody(notes: dict, source: str) -> list[tuple[int | None, Fraction]]:
    """Events in time order: gaps become rests, overlaps are cut, ties merge, adjacent rests merge."""
    events, end = [], Fraction(0)
    for onset in sorted(notes):
        pitch, duration, tied = notes[onset]
        if events and onset < end:  # an overlap within one voice: the earlier note ends where this one starts
            events[-1] = (events[-1][0], events[-1][1] - (end - onset))
            end = onset
        if onset > end:
            events.append((None, onset - end))
        if events and (tied or pitch is None) and events[-1][0] == pitch:
            events[-1] = (pitch, events[-1][1] + duration)
        else:
            events.append((pitch, duration))
        end = onset + duration
    events = [e for e in events if e[1] > 0]
    while events and events[0][0] is None:
        events.pop(0)
    while events and events[-1][0] is None:
        events.pop()
    if not events:
        raise DataError(f"{source}: expected at least one pitched <note>, found none")
    return events


def _quarters(element: ET.Element, divisions: int | None, source: str, measure: ET.Element) -> Fraction:
    where = f"{source}, measure {measure.get('number')}"
    if divisions is None:
        raise DataError(f"{where}: expected <divisions> before the first <{element.tag}>, found none")
    text = element.findtext("duration")
    if text is None:
        raise DataError(f"{where}: expected a <duration> in <{element.tag}>, found none")
    try:
        value = Fraction(text.strip())
    except ValueError:
        raise DataError(f"{where}: expected a number in <duration>, found {text!r}") from None
    if value < 0:
        raise DataError(f"{where}: expected a <duration> of zero or more, found {text!r}")
    return value / divisions


def _midi_pitch(note: ET.Element, source: str, measure: ET.Element) -> int:
    step, octave = note.findtext("pitch/step"), note.findtext("pitch/octave")
    if step not in STEPS or octave is None or not octave.strip().lstrip("-").isdigit():
        raise DataError(f"{source}, measure {measure.get('number')}: expected <pitch> with a <step> A-G and an <octave>, "
                        f"or <rest/>, found step={step!r}, octave={octave!r}")  # fmt: skip
    return 12 * (int(octave) + 1) + STEPS[step] + round(float(note.findtext("pitch/alter") or 0))


def _integer(text: str, source: str, minimum: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        value = None
    if value is None or (minimum is not None and value < minimum):
        raise DataError(f"{source}: expected a whole number{'' if minimum is None else f' of at least {minimum}'}, found {text!r}")
    return value


# -- the data: melodies, tokens, split ------------------------------------------------------


def read_melodies(data: DataConfig) -> list[tuple[str, Melody]]:
    """``(name, melody)`` for each file: the chorales in the music21 wheel, or your folder's (or file's) MusicXML."""
    if data.path is None:
        wheel = common.cached_package(WHEEL)
        try:
            with zipfile.ZipFile(wheel) as archive:
                members = sorted(n for n in archive.namelist() if n.startswith(FOLDER) and n.endswith(".mxl"))[: data.max_pieces]
                files = [(m[len(FOLDER) : -4], archive.read(m), f"{wheel.name}:{m}") for m in members]
        except (zipfile.BadZipFile, OSError) as error:
            raise DataError(f"{wheel}: expected a readable wheel (zip), found {type(error).__name__}: {error}; delete it and run `make data`") from None
        melodies = [(name, read_melody(raw, source)) for name, raw, source in files]
        melodies = [(name, m) for name, m in melodies if m.part.lower().startswith("soprano")]  # the chorales
        if not melodies:
            raise DataError(f"{wheel}: expected chorales {FOLDER}*.mxl with a soprano part, found none")
        return melodies
    path = Path(data.path)
    if path.is_file():
        return [(path.stem, read_melody(common.read_bytes(path), str(path)))]
    if not path.is_dir():
        raise DataError(f"{path}: expected a folder of MusicXML files ({', '.join(SUFFIXES)}) or one such file, found nothing")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)[: data.max_pieces]
    if not files:
        others = sum(1 for p in path.rglob("*") if p.is_file())
        raise DataError(f"{path}: expected MusicXML files ({', '.join(SUFFIXES)}) in the folder, found none ({others} other files)")
    return [(str(p.relative_to(path)), read_melody(common.read_bytes(p), str(p))) for p in files]


def event_names(melody: Melody, grid: int, transpose: bool) -> list[str]:
    """The melody's tokens, e.g. ``["E5:1.5", "R:0.5"]``: durations rounded to the grid, the key moved to C/Am."""
    shift = -(((7 * melody.fifths) + 5) % 12 - 5) if transpose else 0  # the major tonic's pitch class, by the smaller interval
    return [event_name(None if pitch is None else pitch + shift, max(1, round(quarters * grid)), grid) for pitch, quarters in melody.events]


def event_name(pitch: int | None, steps: int, grid: int) -> str:
    quarters = Fraction(steps, grid)
    text = str(quarters) if quarters.denominator & (quarters.denominator - 1) else f"{float(quarters):g}"  # 1.5, but 1/3
    return f"{'R' if pitch is None else NAMES[pitch % 12] + str(pitch // 12 - 1)}:{text}"


def parse_event(name: str, grid: int, argument: str = "note event") -> tuple[int | None, int]:
    """``(MIDI pitch or None, steps)`` of a name such as ``C#5:1.5``, ``Bb4:1/2``, ``R:2`` or ``G4`` (a quarter note)."""
    match = re.fullmatch(r"(?:(R)|([A-G])([#b]?)(-?\d+))(?::([\d./]+))?", name)
    try:
        quarters = Fraction(match.group(5) or "1") if match else None
    except (ValueError, ZeroDivisionError):
        quarters = None
    if quarters is None or quarters <= 0:
        raise DataError(f"{argument}: expected a pitch such as C#5 or Bb4, or R for a rest, then optionally ':' and a duration "
                        f"in quarter notes (E5:1.5), got {name!r}")  # fmt: skip
    steps = max(1, round(quarters * grid))
    if match.group(1):
        return None, steps
    return 12 * (int(match.group(4)) + 1) + STEPS[match.group(2)] + {"#": 1, "b": -1, "": 0}[match.group(3)], steps


class Split(NamedTuple):
    train: list[list[str]]
    val: list[list[str]]
    test: list[list[str]]
    test_names: list[str]


def load_split(data: DataConfig, melodies: list[tuple[str, Melody]] | None = None) -> Split:
    """Tokenised melodies (read, unless given), repeats dropped, split whole by tune (seeded); one melody is cut in order instead."""
    pieces, seen = [], set()
    for name, melody in read_melodies(data) if melodies is None else melodies:
        events = event_names(melody, data.grid, data.transpose)
        if tuple(events) not in seen:  # a tune Bach set twice would sit on both sides of the split
            pieces.append((name, events))
            seen.add(tuple(events))
    if len(pieces) == 1:
        name, events = pieces[0]
        n_test, n_val = int(len(events) * data.test_fraction), int(len(events) * data.val_fraction)
        if min(n_test, n_val) < 2 or len(events) - n_test - n_val < 2:
            raise DataError(f"{data.path}: expected a melody long enough for train, validation and test parts, found {len(events)} note events")
        return Split([events[: -n_test - n_val]], [events[-n_test - n_val : -n_test]], [events[-n_test:]], [f"the last {n_test} events of {name}"])
    groups: dict = {}  # another setting of the same hymn tune opens with the same pitches: it goes where the first went
    for name, events in pieces:
        groups.setdefault(tuple(e.split(":")[0] for e in events[: data.tune_prefix]) if data.tune_prefix else name, []).append((name, events))
    keys = list(groups)
    n_test, n_val = (max(1, round(len(pieces) * f)) for f in (data.test_fraction, data.val_fraction))
    test, val, train = [], [], []
    for i in np.random.default_rng(data.split_seed).permutation(len(keys)):
        (test if len(test) < n_test else val if len(val) < n_val else train).extend(groups[keys[i]])
    if not train:
        raise DataError(f"{data.path}: expected melodies of at least 3 tunes (different first {data.tune_prefix} pitches; "
                        f"data.tune_prefix=0 to split melodies alone) for train, validation and test, found {len(pieces)} "
                        f"melodies of {len(keys)} tunes")  # fmt: skip
    return Split([e for _, e in train], [e for _, e in val], [e for _, e in test], [n for n, _ in test])


def build_vocabulary(train: list[list[str]], min_count: int) -> list[str]:
    counts = Counter(e for events in train for e in events)
    return [BOUNDARY, UNKNOWN] + sorted((e for e, n in counts.items() if n >= min_count), key=_sort_key)


def _sort_key(name: str):
    pitch, steps = parse_event(name, 48)
    return (pitch is None, pitch or 0, steps)


def encode(melodies: list[list[str]], vocabulary: list[str]) -> list[list[int]]:
    index = {name: i for i, name in enumerate(vocabulary)}
    return [[index.get(e, 1) for e in events] for events in melodies]


def padded(melodies: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(inputs, targets)`` (N, L): ``| e1 .. en`` predicts ``e1 .. en |``; padding is ``|`` in, ignored out."""
    length = max(len(m) for m in melodies) + 1
    inputs = torch.zeros(len(melodies), length, dtype=torch.long)
    targets = torch.full((len(melodies), length), IGNORE_INDEX, dtype=torch.long)
    for row, m in enumerate(melodies):
        inputs[row, 1 : len(m) + 1] = torch.tensor(m, dtype=torch.long)
        targets[row, : len(m) + 1] = torch.tensor([*m, 0], dtype=torch.long)
    return inputs, targets


class MelodyBatches:
    """Mini-batches of whole melodies for the trainer, reshuffled every epoch from ``(seed, epoch)``.

    Padding costs as much as music, and the chorales run from 20 to 190 events,
    so each pool of ``pool`` batches is sorted by length before it is cut into
    batches, and each batch is padded only to its own longest melody.
    """

    def __init__(self, melodies: list[list[int]], batch_size: int, seed: int = 0, pool: int = 8) -> None:
        self.melodies, self.batch_size, self.seed, self.span = melodies, batch_size, seed, batch_size * pool

    def __len__(self) -> int:
        return sum(math.ceil(min(self.span, len(self.melodies) - start) / self.batch_size) for start in range(0, len(self.melodies), self.span))

    def batches(self, epoch: int):
        rng = np.random.default_rng([self.seed, epoch])
        order, groups = rng.permutation(len(self.melodies)), []
        for start in range(0, len(order), self.span):
            pool = sorted(order[start : start + self.span], key=lambda i: len(self.melodies[i]))
            groups += [pool[i : i + self.batch_size] for i in range(0, len(pool), self.batch_size)]
        for g in rng.permutation(len(groups)):
            yield padded([self.melodies[i] for i in groups[g]])


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


WRAP = 16  # note events per line of output


def wrap(names: list[str], per_line: int = WRAP) -> str:
    return "\n".join(" ".join(names[i : i + per_line]) for i in range(0, len(names), per_line))


def write_midi(path: Path | BinaryIO, events: list[tuple[int | None, int]], grid: int, tempo: int = 80, ticks_per_beat: int = 480) -> None:
    """A standard MIDI file (type 0): the tempo, then each note as note_on/note_off; a rest delays the next note_on.

    ``path`` is a file name or a binary file object (``io.BytesIO``)."""
    import mido

    track = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(tempo), time=0),
                            mido.Message("program_change", program=0, time=0)])  # fmt: skip
    wait = 0
    for pitch, steps in events:
        ticks = round(steps * ticks_per_beat / grid)
        if pitch is None:
            wait += ticks
            continue
        track += [mido.Message("note_on", note=pitch, velocity=80, time=wait), mido.Message("note_off", note=pitch, velocity=0, time=ticks)]
        wait = 0
    track.append(mido.MetaMessage("end_of_track", time=wait))
    midi = mido.MidiFile(type=0, ticks_per_beat=ticks_per_beat)
    midi.tracks.append(track)
    if hasattr(path, "write"):
        midi.save(file=path)
    else:
        midi.save(path)


def piano_roll(events: list[tuple[int | None, int]]) -> tuple[np.ndarray, int]:
    """``(roll, lowest)``: roll (pitches, grid steps) is 2 at a note's onset, 1 while it sounds; row 0 is pitch ``lowest``."""
    pitches = [p for p, _ in events if p is not None]
    lowest = min(pitches, default=60)
    roll = np.zeros((max(pitches, default=60) - lowest + 1, sum(s for _, s in events)), dtype=np.int8)
    time = 0
    for pitch, steps in events:
        if pitch is not None:
            roll[pitch - lowest, time : time + steps] = 1
            roll[pitch - lowest, time] = 2
        time += steps
    return roll, lowest


def plot_piano_roll(path: Path, events: list[tuple[int | None, int]], grid: int, title: str, size=(10, 4), dpi: int = 100) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    roll, lowest = piano_roll(events)
    fig, ax = plt.subplots(figsize=size)
    ax.imshow(roll, origin="lower", aspect="auto", cmap="Greys", interpolation="nearest", vmin=0, vmax=2,
              extent=(0, roll.shape[1] / grid, lowest - 0.5, lowest + roll.shape[0] - 0.5))  # fmt: skip
    ax.set_ylim(lowest - 2.5, lowest + roll.shape[0] + 1.5)
    ticks = [p for p in range(lowest - 2, lowest + roll.shape[0] + 2) if p % 12 in (0, 7)]  # the Cs and Gs
    ax.set_yticks(ticks, [NAMES[p % 12] + str(p // 12 - 1) for p in ticks])
    ax.set_xlabel("quarter notes")
    ax.set_title(title)
    ax.grid(axis="x", alpha=0.2)
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
