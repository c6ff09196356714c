"""The synthesiser: MIDI notes read back exactly, and rendered at their pitch and for their length."""

from __future__ import annotations

import io
import wave

import numpy as np
import pytest

from rnnkit.tasks import music, synth
from rnnkit.tasks.common import DataError

pytest.importorskip("mido", reason="the apps extra is not installed")


def midi_of(events, grid: int = 4, tempo: int = 120) -> bytes:
    buffer = io.BytesIO()
    music.write_midi(buffer, events, grid, tempo)
    return buffer.getvalue()


def test_notes_are_read_back_with_their_times_in_seconds():
    # at 120 quarter notes a minute and 4 steps a quarter, a step is 0.125 s
    notes = synth.read_notes(midi_of([(69, 4), (None, 2), (72, 2), (72, 1)]))
    assert [(n.pitch, n.velocity) for n in notes] == [(69, 80), (72, 80), (72, 80)]
    assert [t for n in notes for t in (n.start, n.end)] == pytest.approx([0, 0.5, 0.75, 1.0, 1.0, 1.125])


def test_a_note_sounds_at_its_pitch_for_its_length_and_ends_silent():
    rate = 16000
    samples = synth.render(synth.read_notes(midi_of([(69, 8)])), rate)  # A4 for one second
    assert len(samples) == pytest.approx(rate * (1.0 + synth.RELEASE), abs=2)
    assert np.abs(samples).max() == pytest.approx(0.8) and abs(samples[-1]) < 1e-6
    spectrum = np.abs(np.fft.rfft(samples[: rate // 2]))
    assert np.fft.rfftfreq(rate // 2, 1 / rate)[spectrum.argmax()] == pytest.approx(440, abs=2.1)
    with wave.open(io.BytesIO(synth.midi_to_wav(midi_of([(69, 8)]), rate))) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, rate, len(samples))


def test_bytes_that_are_not_midi_are_an_error_that_says_so():
    with pytest.raises(DataError, match=r"midi: expected a standard MIDI file, found bytes that do not read as one"):
        synth.read_notes(b"RIFF1234WAVE")
