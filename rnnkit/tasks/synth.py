"""A small synthesiser: a MIDI file rendered to a 16-bit mono WAV, so that a page can play a generated melody.

Browsers do not play MIDI files, and a General MIDI sound font is tens of
megabytes, so each note is drawn here from a few sine partials under an
envelope. For a note of frequency :math:`f = 440 \\cdot 2^{(p - 69)/12}` Hz
(MIDI pitch p), velocity v and length d seconds, the signal at time t after its
onset is

.. math::

    x(t) = \\frac{v}{127}\\, e(t) \\sum_k a_k \\sin(2\\pi k f t), \\qquad (a_1, a_2, a_3, a_4) = (1, 0.5, 0.25, 0.12)

where the envelope e rises linearly over 10 ms, decays as
:math:`e^{-3t}` (a plucked, piano-like tone) and falls linearly to zero over
the 60 ms after the note-off (so no note ends in a click). Notes are summed,
and the whole is scaled so that its peak is at 0.8 of full scale. Only
``note_on`` / ``note_off`` and tempo changes matter; other messages, and the
channel, are ignored (a melody has one voice).
"""

from __future__ import annotations

import io
import wave
from typing import NamedTuple

import numpy as np

from rnnkit.tasks.common import DataError

PARTIALS = (1.0, 0.5, 0.25, 0.12)
ATTACK, RELEASE, DECAY = 0.010, 0.060, 3.0  # seconds, seconds, 1/seconds


class Note(NamedTuple):
    pitch: int
    velocity: int
    start: float  # seconds
    end: float


def read_notes(midi: bytes) -> list[Note]:
    """The notes of a standard MIDI file's bytes, timed in seconds by its tempo map (mido's playback clock)."""
    import mido

    try:
        song = mido.MidiFile(file=io.BytesIO(midi))
        messages = list(song)  # iterating a MidiFile gives each message's delta time in seconds
    except (OSError, EOFError, ValueError, KeyError, IndexError) as error:
        raise DataError(f"midi: expected a standard MIDI file, found bytes that do not read as one ({type(error).__name__}: {error})") from None
    now, sounding, notes = 0.0, {}, []
    for message in messages:
        now += message.time
        if message.type == "note_on" and message.velocity > 0:
            sounding[message.note] = (message.velocity, now)
        elif message.type in ("note_off", "note_on") and message.note in sounding:  # note_on at velocity 0 is a note-off
            velocity, start = sounding.pop(message.note)
            notes.append(Note(message.note, velocity, start, now))
    notes += [Note(p, v, start, now) for p, (v, start) in sounding.items()]  # never released: end with the file
    return sorted(notes, key=lambda n: (n.start, n.pitch))


def render(notes: list[Note], rate: int = 22050) -> np.ndarray:
    """The notes as float32 samples in [-0.8, 0.8] at ``rate`` Hz (see the module docstring for the tone)."""
    length = max((n.end for n in notes), default=0.0) + RELEASE
    out = np.zeros(int(np.ceil(length * rate)) + 1, dtype=np.float64)
    for note in notes:
        held = max(note.end - note.start, 1.0 / rate)
        t = np.arange(int((held + RELEASE) * rate)) / rate
        envelope = np.minimum(t / ATTACK, 1.0) * np.exp(-DECAY * t) * np.clip((held + RELEASE - t) / RELEASE, 0.0, 1.0)
        frequency = 440.0 * 2 ** ((note.pitch - 69) / 12)
        tone = sum(a * np.sin(2 * np.pi * k * frequency * t) for k, a in enumerate(PARTIALS, 1) if k * frequency < rate / 2)
        start = int(note.start * rate)
        out[start : start + len(t)] += (note.velocity / 127) * envelope * tone
    peak = np.abs(out).max(initial=0.0)
    return (out * (0.8 / peak if peak > 0 else 1.0)).astype(np.float32)


def wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    """A 16-bit PCM mono WAV file of float samples in [-1, 1]."""
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes())
    return buffer.getvalue()


def midi_to_wav(midi: bytes, rate: int = 22050) -> bytes:
    """A MIDI file's bytes rendered to a WAV file's bytes."""
    return wav_bytes(render(read_notes(midi), rate), rate)
