r"""The front end of :mod:`rnnkit.tasks.speech`: audio to Sphinx-style MFCCs, normalised per utterance.

Read top to bottom: resampling to the front end's rate, the mel scale, the
filterbank, the DCT, log mel energies, cepstra, per-utterance normalisation,
and :func:`featurize`, which chains them. The speech module's docstring gives
the settings and why they match the TIDIGITS feature files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch


@dataclass
class FeatureConfig:
    """A Sphinx-style MFCC front end (see :mod:`rnnkit.tasks.speech`); every length is in seconds or Hz."""

    sample_rate: int = 16000  # audio is resampled to this first
    frame_seconds: float = 0.025
    shift_seconds: float = 0.01
    fft_size: int | None = None  # None: the smallest power of two that holds a frame
    num_filters: int = 20
    low_hz: float = 1.0
    high_hz: float = 4000.0
    round_filters: bool = True  # filter edges rounded to FFT bins (Sphinx's default; TIDIGITS' feat.params says no)
    num_cepstra: int = 13
    preemphasis: float = 0.97
    remove_dc: bool = True
    transform: Literal["dct", "legacy"] = "dct"  # orthonormal DCT-II, or Sphinx's legacy scaling
    normalize: Literal["none", "mean", "mean_variance"] = "mean_variance"



def resample(x: np.ndarray, rate: int, target: int) -> np.ndarray:
    """Band-limited resampling through the FFT: keep (or zero-pad) the spectrum up to the new Nyquist frequency.

    The signal is zero-padded to p k samples (rate / target = p / q in lowest
    terms, k with no prime factor above 5) so that both FFTs have fast sizes,
    and the result, q k samples, is cut back to the signal's duration.
    """
    if rate == target or x.size == 0:
        return x
    g = math.gcd(rate, target)
    p, q = rate // g, target // g
    k = _smooth(-(-x.size // p))
    y = np.fft.irfft(np.fft.rfft(x, p * k), q * k) * (q / p)
    return y[: max(1, round(x.size * q / p))].astype(np.float32)


def _smooth(n: int) -> int:
    """The smallest integer >= n whose prime factors are 2, 3 and 5."""
    while True:
        m = n
        for prime in (2, 3, 5):
            while m % prime == 0:
                m //= prime
        if m == 1:
            return n
        n += 1


def hz_to_mel(hz):
    return 2595.0 * np.log10(1.0 + np.asarray(hz, dtype=np.float64) / 700.0)


def mel_to_hz(mel):
    return 700.0 * (10.0 ** (np.asarray(mel, dtype=np.float64) / 2595.0) - 1.0)


def fft_points(f: FeatureConfig, rate: int) -> int:
    return f.fft_size or 1 << (round(f.frame_seconds * rate) - 1).bit_length()


def mel_filterbank(f: FeatureConfig, rate: int, warp: float = 1.0) -> torch.Tensor:
    """(num_filters, fft_size // 2 + 1) triangles as Sphinx builds them.

    Edges equally spaced in mel from low_hz to high_hz, each rounded to the
    nearest FFT bin (unless ``round_filters`` is off); filter i rises from edge i to edge i + 1 and falls to edge
    i + 2, with peak 2 / (width in Hz) so that each has unit area. The Nyquist
    bin is never used. ``warp`` scales every edge's frequency (vocal tract
    length perturbation; 1 in Sphinx).
    """
    n_fft = fft_points(f, rate)
    if not 0 <= f.low_hz < f.high_hz <= rate / 2:
        raise ValueError(f"features.low_hz, high_hz: expected 0 <= low < high <= {rate / 2} (half the sample rate), "
                         f"got {f.low_hz}, {f.high_hz}")  # fmt: skip
    step = rate / n_fft
    edges = np.minimum(mel_to_hz(np.linspace(hz_to_mel(f.low_hz), hz_to_mel(f.high_hz), f.num_filters + 2)) * warp, rate / 2)
    if f.round_filters:
        edges = np.floor(edges / step + 0.5) * step
    hz = np.arange(n_fft // 2 + 1) * step
    left, centre, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rise, fall = (hz - left) / (centre - left), (right - hz) / (right - centre)
    weights = np.where((hz >= left) & (hz <= right), np.minimum(rise, fall), 0.0) * 2 / (right - left)
    weights[:, -1] = 0.0
    return torch.from_numpy(np.nan_to_num(weights)).float()


def dct_matrix(f: FeatureConfig) -> torch.Tensor:
    """(num_cepstra, num_filters): c = D l for log filter energies l.

    "dct": orthonormal DCT-II, :math:`c_i = \\sqrt{(2 - [i=0]) / N} \\sum_j l_j \\cos(\\pi i (j + 1/2) / N)`.
    "legacy" (Sphinx's default): :math:`c_i = \\frac{1}{N} \\sum_j w_j l_j \\cos(\\pi i (j + 1/2) / N)`, w_0 = 1/2, else 1.
    """
    n = f.num_filters
    cosines = np.cos(np.pi * np.arange(f.num_cepstra)[:, None] * (np.arange(n)[None, :] + 0.5) / n)
    if f.transform == "dct":
        scale = np.full((f.num_cepstra, 1), math.sqrt(2 / n))
        scale[0] = math.sqrt(1 / n)
        return torch.from_numpy(cosines * scale).float()
    weights = np.ones(n)
    weights[0] = 0.5
    return torch.from_numpy(cosines * weights / n).float()


def log_mel(x: np.ndarray, rate: int, f: FeatureConfig, warp: float = 1.0) -> torch.Tensor:
    """(T, num_filters) natural-log mel filter energies of a signal in int16 units; T = 1 + (n - frame) // shift."""
    frame, shift = round(f.frame_seconds * rate), round(f.shift_seconds * rate)
    signal = torch.as_tensor(np.asarray(x, dtype=np.float32))
    if signal.dim() != 1 or signal.numel() < frame:
        raise ValueError(f"audio: expected a 1-D signal of at least one frame ({frame} samples), got shape {tuple(signal.shape)}")
    emphasised = torch.cat([signal[:1], signal[1:] - f.preemphasis * signal[:-1]])
    frames = emphasised.unfold(0, frame, shift)
    if f.remove_dc:
        frames = frames - frames.mean(-1, keepdim=True)
    power = torch.fft.rfft(frames * torch.hamming_window(frame, periodic=False), n=fft_points(f, rate)).abs() ** 2
    energies = power @ mel_filterbank(f, rate, warp).T
    return torch.where(energies > 0, energies.clamp(min=1e-30).log(), torch.tensor(-10.0))  # Sphinx's floor for an empty filter


def mfcc(x: np.ndarray, rate: int, f: FeatureConfig, warp: float = 1.0) -> torch.Tensor:
    """(T, num_cepstra) cepstra, c_0 (the log energy's average) included."""
    return log_mel(x, rate, f, warp) @ dct_matrix(f).T


def normalize(features: torch.Tensor, mode: str) -> torch.Tensor:
    """Per-utterance cepstral mean (and variance) normalisation: a fixed channel is a constant offset in cepstra."""
    if mode == "none":
        return features
    features = features - features.mean(0)
    return features / features.std(0).clamp(min=1e-3) if mode == "mean_variance" else features


def raw_cepstra(audio: np.ndarray, rate: int, f: FeatureConfig, warp: float = 1.0) -> torch.Tensor:
    """(T, num_cepstra) cepstra of audio at any rate, not yet normalised: what a TIDIGITS file holds."""
    return mfcc(resample(audio, rate, f.sample_rate), f.sample_rate, f, warp)


def featurize(audio: np.ndarray, rate: int, f: FeatureConfig, warp: float = 1.0) -> torch.Tensor:
    return normalize(raw_cepstra(audio, rate, f, warp), f.normalize)
