"""Recordings for :mod:`rnnkit.tasks.speech`: WAV files as people have them, read into the mono signal the front end takes.

Accepted: RIFF/WAVE files of 16-bit PCM (format 1) or 32-bit IEEE float
(format 3; also either inside WAVE_FORMAT_EXTENSIBLE), any number of channels
(averaged to mono), a sample rate from 8 to 96 kHz (the front end resamples to
its own), up to :data:`MAX_SECONDS` long. The chunks are parsed here rather
than by :mod:`wave`, which reads PCM only. :func:`read_recording` then trims
the silence before and after the speech (:func:`trim_silence`), so a
recording that starts with seconds of room noise hears the same as one that
does not.
"""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from rnnkit.tasks import common
from rnnkit.tasks.common import DataError

MAX_SECONDS = 30.0  # the longest recording read: TIDIGITS strings take a few seconds
MIN_RATE, MAX_RATE = 8000, 96000
PCM, FLOAT, EXTENSIBLE = 1, 3, 0xFFFE
EXPECTED = "a WAV file of 16-bit PCM or 32-bit float samples"


def parse_wav(raw: bytes, path: str) -> tuple[np.ndarray, int]:
    """Samples (float32, int16 scale: a float file's +-1 is +-32768), mixed down to mono, and the sample rate; ``path`` names the file in errors."""
    if len(raw) < 12 or raw[:4] != b"RIFF" or raw[8:12] != b"WAVE":
        raise DataError(f"{path}: expected {EXPECTED}, found {len(raw)} bytes that do not start with 'RIFF....WAVE' (not audio?)")
    chunks, offset = {}, 12
    while offset + 8 <= len(raw):
        name, size = raw[offset : offset + 4], struct.unpack("<I", raw[offset + 4 : offset + 8])[0]
        chunks.setdefault(name, raw[offset + 8 : offset + 8 + size])
        offset += 8 + size + (size & 1)  # chunks are padded to an even length
    if b"fmt " not in chunks or b"data" not in chunks or len(chunks[b"fmt "]) < 16:
        raise DataError(f"{path}: expected {EXPECTED} with a 'fmt ' and a 'data' chunk, found chunks {sorted(n.decode('latin-1') for n in chunks)}")
    fmt = chunks[b"fmt "]
    code, channels, rate, _, _, bits = struct.unpack("<HHIIHH", fmt[:16])
    if code == EXTENSIBLE and len(fmt) >= 26:
        code = struct.unpack("<H", fmt[24:26])[0]  # the sub-format GUID starts with the plain format code
    kind = {(PCM, 16): "<i2", (FLOAT, 32): "<f4"}.get((code, bits))
    if kind is None:
        raise DataError(f"{path}: expected {EXPECTED}, found format {code} with {bits}-bit samples")
    if channels < 1:
        raise DataError(f"{path}: expected at least one channel, found {channels}")
    if not MIN_RATE <= rate <= MAX_RATE:
        raise DataError(f"{path}: expected a sample rate from {MIN_RATE} to {MAX_RATE} Hz, found {rate} Hz")
    data = chunks[b"data"]
    frames = len(data) // (channels * bits // 8)
    if frames == 0:
        raise DataError(f"{path}: expected audio samples, found an empty 'data' chunk")
    if frames > MAX_SECONDS * rate:
        raise DataError(f"{path}: expected at most {MAX_SECONDS:g} s of audio, found {frames / rate:.1f} s")
    samples = np.frombuffer(data[: frames * channels * bits // 8], dtype=kind).reshape(frames, channels).astype(np.float32)
    if kind == "<f4":
        if not np.isfinite(samples).all():
            raise DataError(f"{path}: expected finite float samples, found NaN or infinity")
        samples = samples * 32768.0
    return samples.mean(1) if channels > 1 else samples[:, 0], rate


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """:func:`parse_wav` of a file."""
    return parse_wav(common.read_bytes(path), str(path))


def trim_silence(audio: np.ndarray, rate: int, below_peak_db: float = 40.0, margin_seconds: float = 0.1) -> np.ndarray:
    """The audio from ``margin_seconds`` before its first loud 10 ms frame to as long after its last.

    A frame is loud when its RMS is within ``below_peak_db`` of the loudest
    frame's; the margin keeps the onsets and fades of the first and last
    words (and some silence, which the model heard around every training
    utterance). Audio without any loud frame (digital silence) comes back empty.
    """
    hop = max(1, rate // 100)
    count = -(-audio.size // hop)
    padded = np.zeros(count * hop, np.float64)
    padded[: audio.size] = audio
    rms = np.sqrt((padded.reshape(count, hop) ** 2).mean(1))
    loud = np.flatnonzero(rms > max(rms.max() * 10 ** (-below_peak_db / 20), 1e-3))
    if loud.size == 0:
        return audio[:0]
    margin = round(margin_seconds * rate)
    return audio[max(0, loud[0] * hop - margin) : min(audio.size, (loud[-1] + 1) * hop + margin)]


def read_recording(raw: bytes, path: str) -> tuple[np.ndarray, int]:
    """:func:`parse_wav`, then :func:`trim_silence`: the speech of a recording and its sample rate, at least 0.1 s of it."""
    audio, rate = parse_wav(raw, path)
    speech = trim_silence(audio, rate)
    if speech.size < rate // 10:
        raise DataError(f"{path}: expected at least 0.1 s of sound above silence, found {speech.size / rate:.3f} s "
                        f"in {audio.size / rate:.2f} s of audio")  # fmt: skip
    return speech, rate


def stretch_time(audio: np.ndarray, factor: float, rate: int, frame_seconds: float = 0.03, tolerance_seconds: float = 0.01) -> np.ndarray:
    r"""The audio ``factor`` times as long at the same pitch: waveform-similarity overlap-add (WSOLA).

    Verhelst & Roelands (ICASSP 1993). Output frames of ``n`` samples, Hann
    windowed, are laid every :math:`h = n / 2` samples. Frame :math:`k` would
    be read from the input at :math:`k h / \text{factor}`; it is read instead
    from the position within ``tolerance_seconds`` of that whose samples
    correlate best with what naturally follows the frame read before (its
    continuation by :math:`h`), so that the overlapping halves are in phase
    and the pitch periods are neither cut nor doubled::

        previous = 0
        for k in range(frames):
            natural = x[previous + h : previous + h + n]
            p = argmax over |p - k h / factor| <= tolerance of  <x[p : p + n], natural>
            y[k h : k h + n] += hann * x[p : p + n];  previous = p

    Float32 out; silence (zeros) stands in beyond the input's ends.
    """
    if not factor > 0:
        raise ValueError(f"factor: expected a positive time-stretch factor, got {factor}")
    x = np.asarray(audio, np.float32)
    n = max(2, int(frame_seconds * rate) // 2 * 2)
    hop, tolerance = n // 2, int(tolerance_seconds * rate)
    length = round(x.size * factor)
    frames = -(-length // hop) + 1
    padded = np.zeros(tolerance + x.size + 2 * tolerance + 2 * n + hop, np.float32)
    padded[tolerance : tolerance + x.size] = x  # position p of x sits at p + tolerance

    def segment(p: int) -> np.ndarray:
        return padded[p + tolerance : p + tolerance + n]

    window = np.hanning(n + 2)[1:-1].astype(np.float32)
    out, weight = np.zeros(frames * hop + n, np.float32), np.zeros(frames * hop + n, np.float32)
    previous = 0
    for k in range(frames):
        target = min(round(k * hop / factor), x.size)
        if k == 0:
            position = target
        else:
            region = padded[target : target + 2 * tolerance + n]  # positions target - tolerance ... target + tolerance
            position = target - tolerance + int(np.argmax(np.correlate(region, segment(previous + hop), mode="valid")))
        out[k * hop : k * hop + n] += window * segment(position)
        weight[k * hop : k * hop + n] += window
        previous = position
    return (out / np.maximum(weight, 1e-3))[:length]
