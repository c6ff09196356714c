"""The data of :mod:`rnnkit.tasks.music`: melodies from the chorales or your MusicXML, their event tokens, the split by tune, batches."""

from __future__ import annotations

import math
import zipfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from rnnkit.models.many_to_many import IGNORE_INDEX
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError

from rnnkit.tasks.music_score import BOUNDARY, SUFFIXES, UNKNOWN, Melody, event_names, parse_event, read_melody


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


WHEEL, FOLDER = "music21-*.whl", "music21/corpus/bach/"


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
