r"""Augmentation for :mod:`rnnkit.tasks.speech`: what makes espeak-ng's voices cover more of human speech.

Training utterances only, all drawn from each utterance's seed (the same
config gives the same audio), in the order a recording would add them:

- speed perturbation (Ko et al., 2015): the waveform played faster or slower
  by a factor uniform in ``[1 - speed, 1 + speed]``, which moves its tempo,
  pitch and formants together (linear interpolation: the mel filters stop at
  4 kHz, far below where its aliasing lands);
- room reverberation from a generated impulse response (no recordings of
  rooms): a unit direct path, then Gaussian noise under an exponential decay
  that falls 60 dB in ``rt60`` seconds, scaled to a direct-to-reverberant
  energy ratio drawn in ``drr_db``; :math:`h_n = \delta_n + g\,e^{-6.91 n / (r\,T_{60})} z_n`;
- the channel of :func:`~rnnkit.tasks.speech_synthesis.channel` (silence,
  tilt, noise) and the front end's vocal tract length perturbation follow;
- SpecAugment (Park et al., 2019), redrawn every epoch by
  :class:`AugmentedBatches`: ``time_masks`` spans of up to
  ``time_mask_frames`` frames set to zero (the utterance's mean, after
  normalisation), and ``freq_masks`` bands of up to ``freq_mask_bands`` of the
  mel filters removed. The features are cepstra, so a band is masked in their
  inverse DCT: :math:`x \leftarrow x - (x D) M D^\top`, with D the
  (cepstra, filters) DCT, whose rows are orthonormal, and M the band's
  diagonal 0/1 selector.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch

from rnnkit.data import TensorBatches


@dataclass
class AugmentConfig:
    """Training-time augmentation; every default is off or neutral except where the speech task's config sets it."""

    speed: float = 0.0  # speed factor uniform in [1 - speed, 1 + speed]; 0: off
    reverb: float = 0.0  # probability that an utterance gets a generated room's reverberation
    rt60: list[float] = field(default_factory=lambda: [0.1, 0.5])  # seconds for the tail to fall 60 dB
    drr_db: list[float] = field(default_factory=lambda: [0.0, 15.0])  # direct-to-reverberant energy ratio
    time_masks: int = 0
    time_mask_frames: int = 8  # 10 ms frames, before the model stacks them
    freq_masks: int = 0
    freq_mask_bands: int = 3  # of the front end's mel filters

    def __post_init__(self) -> None:
        if not 0 <= self.speed < 1:
            raise ValueError(f"augment.speed: expected 0 <= speed < 1, got {self.speed}")
        if not 0 <= self.reverb <= 1:
            raise ValueError(f"augment.reverb: expected a probability in [0, 1], got {self.reverb}")
        for name in ("rt60", "drr_db"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"augment.{name}: expected a range [low, high] with low <= high, got {low_high}")
        if self.rt60[0] <= 0:
            raise ValueError(f"augment.rt60: expected positive seconds, got {self.rt60}")
        for name in ("time_masks", "time_mask_frames", "freq_masks", "freq_mask_bands"):
            if getattr(self, name) < 0:
                raise ValueError(f"augment.{name}: expected a count >= 0, got {getattr(self, name)}")


def change_speed(x: np.ndarray, factor: float) -> np.ndarray:
    """``x`` played ``factor`` times as fast: ``len(x) / factor`` samples, read at positions ``factor`` apart."""
    if factor <= 0:
        raise ValueError(f"factor: expected a positive speed factor, got {factor}")
    if factor == 1.0 or x.size < 2:
        return x
    positions = np.arange(0.0, x.size - 1, factor)
    return np.interp(positions, np.arange(x.size), x).astype(np.float32)


def room_response(rate: int, rt60: float, drr_db: float, rng: np.random.Generator) -> np.ndarray:
    """A generated room impulse response: the direct path (1 at n = 0), then a decaying noise tail of ``rt60`` seconds."""
    n = np.arange(1, max(2, round(rt60 * rate)))
    tail = rng.standard_normal(n.size) * np.exp(-math.log(1000.0) * n / (rt60 * rate))
    tail *= math.sqrt(10 ** (-drr_db / 10) / max(float(np.sum(tail**2)), 1e-12))
    return np.concatenate([[1.0], tail]).astype(np.float32)


def reverberate(x: np.ndarray, response: np.ndarray) -> np.ndarray:
    """``x`` convolved with ``response`` (through the FFT), cut to ``x``'s length plus the tail, its power kept."""
    size = x.size + response.size - 1
    y = np.fft.irfft(np.fft.rfft(x, size) * np.fft.rfft(response, size), size)
    power_in, power_out = float(np.mean(x.astype(np.float64) ** 2)), float(np.mean(y**2))
    return (y * math.sqrt(power_in / power_out) if power_out > 0 else y).astype(np.float32)


def perturb(samples: np.ndarray, rate: int, augment: AugmentConfig, rng: np.random.Generator) -> np.ndarray:
    """The waveform augmentations of one training utterance: speed, then reverberation (each only when on)."""
    x = samples.astype(np.float32)
    if augment.speed > 0:
        x = change_speed(x, rng.uniform(1 - augment.speed, 1 + augment.speed))
    if augment.reverb > 0 and rng.uniform() < augment.reverb:
        x = reverberate(x, room_response(rate, rng.uniform(*augment.rt60), rng.uniform(*augment.drr_db), rng))
    return x


def spec_augment(x: torch.Tensor, lengths: torch.Tensor, dct: torch.Tensor, augment: AugmentConfig,
                 generator: torch.Generator) -> torch.Tensor:  # fmt: skip
    """SpecAugment's masks on a padded (N, T, cepstra) batch of normalised cepstra; ``dct`` is (cepstra, filters)."""
    out = x.clone()
    filters = dct.shape[1]
    for row, length in enumerate(lengths.tolist()):
        for _ in range(augment.time_masks):
            width = int(torch.randint(0, augment.time_mask_frames + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, length - width + 1), (1,), generator=generator))
            out[row, start : min(start + width, length)] = 0.0
        keep = torch.ones(filters)
        for _ in range(augment.freq_masks):
            width = int(torch.randint(0, augment.freq_mask_bands + 1, (1,), generator=generator))
            start = int(torch.randint(0, max(1, filters - width + 1), (1,), generator=generator))
            keep[start : start + width] = 0.0
        if keep.min() < 1:
            bands = out[row, :length] @ dct
            out[row, :length] -= (bands * (1 - keep)) @ dct.T
    return out


class AugmentedBatches:
    """Another batcher's ((features, lengths), labels), with SpecAugment's masks drawn afresh from (seed, epoch)."""

    def __init__(self, batches: TensorBatches, dct: torch.Tensor, augment: AugmentConfig, seed: int = 0):
        self.source, self.dct, self.augment, self.augment_seed = batches, dct, augment, seed

    def __len__(self) -> int:
        return len(self.source)

    def batches(self, epoch: int):
        generator = torch.Generator().manual_seed(self.augment_seed * 1_000_003 + epoch)
        for (x, lengths), labels in self.source.batches(epoch):
            yield (spec_augment(x, lengths, self.dct, self.augment, generator), lengths), labels
