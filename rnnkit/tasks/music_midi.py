"""Output of :mod:`rnnkit.tasks.music`: note events as a standard MIDI file and a piano roll."""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np

from rnnkit.tasks.music_score import NAMES
from rnnkit.training.checkpoint import save_figure


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
    save_figure(fig, path, dpi=dpi)
    plt.close(fig)
