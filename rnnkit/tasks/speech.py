r"""Speech recognition (many-to-many, CTC): spoken digit strings to words, a BiLSTM beside non-recurrent baselines.

Examples::

    rnnkit train speech --out runs/speech
    rnnkit train speech --size demo --out runs/speech-demo
    rnnkit train speech data.train_utterances=8000 model.rnn.hidden_size=128
    rnnkit predict runs/speech "four one nine"     # synthesised with a held-out voice, then recognised
    rnnkit predict runs/speech recording.wav       # 16-bit PCM mono WAV at any sample rate
    rnnkit eval runs/speech

Data. Strings of ``min_words`` to ``max_words`` words drawn from zero, oh,
one, ..., nine, spoken by espeak-ng (the ``espeakng-loader`` wheel of the
``apps`` extra carries the library; it is driven through ctypes, 22,050 Hz
mono). A voice is an accent (en-us, en, en-gb-scotland, ...) with a variant
(m1, f2, klatt3, ...); every utterance also draws its own rate, pitch, pitch
range and gap between words. The variants are split by fixed lists: the test
set is spoken only by ``test_variants``, which training never hears (they
are new timbres of the same synthesiser, not new synthesisers: real speech
is the harder test). Recorded speech is not this clean, so each utterance
gets silence before and after, a random first-order tilt of its spectrum (a
different microphone) and white noise at a random signal-to-noise ratio;
training utterances also get vocal tract length perturbation (their
frequency axis scaled by up to ``warp``; Jaitly & Hinton, 2013). Everything
is synthesised afresh at each run (a few hundred times faster than real time
on one core) from seeds, so the same config gives the same audio.

Real speech, when present: the 31 TIDIGITS utterances of Debian's
``pocketsphinx-testdata`` (a man and a woman reading digit strings, as Sphinx
feature files, no audio), read from ``$RNNKIT_DATA/pocketsphinx-testdata/``
(``make data`` unpacks the package there) or ``/usr/share/pocketsphinx``.
Without them the report says so and leaves the TIDIGITS columns out.

Features. Per 10 ms frame, 13 mel-frequency cepstral coefficients computed
as CMU Sphinx does (sphinxbase ``fe_sigproc.c``; a NumPy transcription of it
is the reference in the tests), so that synthetic audio and the TIDIGITS
files share a front end: the signal resampled to 16 kHz, pre-emphasis
:math:`y_n = x_n - 0.97 x_{n-1}`, frames of 25 ms, the frame's mean removed, a
Hamming window, the power spectrum of a 512-point FFT, 20 triangular mel
filters (:math:`m = 2595 \log_{10}(1 + f / 700)`) of unit area from 1 Hz to
4 kHz with edges rounded to FFT bins, natural log, and the orthonormal
DCT-II. Those are the settings in the ``feat.params`` of the acoustic model
that pocketsphinx's own test decodes these files with, and they fit the
files: c0 spreads as sqrt(20) times a log energy does. Sphinx's defaults (40
filters from 133 to 6855 Hz, 25.625 ms frames, its "legacy" DCT scaling) are
a config away (``features.num_filters=40 features.transform=legacy`` ...);
with them the demo's TIDIGITS WER rose from 0.42-0.45 to 0.68-0.73 (two
seeds each) while its held-out-voice WER did not, the mark of a front end
that differs from the files'. Each utterance's cepstra are then
normalised to zero mean and unit variance per coefficient (cepstral mean and
variance normalisation), which removes most of what the channel and the
recording level add. Mismatches that remain: Sphinx dithered the audio (we
add noise instead) and emits one last zero-padded frame; the files may have
come from 8 kHz audio (the filters stop at 4 kHz either way). The package
also holds one raw 16 kHz recording of the same kind, ``dhd.2934z.raw`` ("two
nine three four zero"); the report's samples show what the model hears in it
through this front end, the whole audio path on real speech (one utterance:
an anecdote, not a measurement).

Method. Word-level CTC over 11 words plus the blank: a
:class:`~rnnkit.models.CTCRecognizer` stacks 3 frames into one step (33 steps a
second), runs a 2-layer bidirectional LSTM and outputs per-step word
log-probabilities, trained with ``ctc_loss`` with dropout on its inputs and
outputs (keeping the weights of the best validation loss; the validation set
is spoken by the training voices).
Decoding is greedy (best path) or CTC prefix beam search, without a language
model.

Metric: word error rate, :math:`(S + D + I) / N` from the word-level
Levenshtein alignment of each hypothesis with its reference, summed over the
test set. Baselines: the empty transcript (WER 1), the training set's most
frequent word repeated its median length, and :class:`~rnnkit.models.CTCFrameMLP`,
an MLP over a window of stacked frames trained the same way, which shows what
the recurrence adds.
"""

from __future__ import annotations

import _ctypes
import ctypes
import io
import math
import random
import re
import statistics
import time
import wave
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import CTCFrameMLP, CTCFrameMLPConfig, CTCRecognizer, CTCRecognizerConfig, RecurrentConfig, load_model, save_model
from rnnkit.models.ctc import edit_distance
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything

# -- config ----------------------------------------------------------------------------

WORDS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # label i + 1; 0 is the blank


ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# Every variant of espeak-ng 1.52 but the test ones, "belinda" (a copy of "linda") and "Mr serious" (a space in its name).
TRAIN_VARIANTS = """
Alex Alicia Andrea Andy Annie AnxiousAndy Demonic Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario
Michael Mike Nguyen Reed RicishayMax RicishayMax2 RicishayMax3 Storm Tweaky UniRobot adam anika anikaRobot
announcer antonio aunty benjamin boris caleb croak ed edward edward2 f1 f3 f4 fast grandma grandpa gustave ian
iven iven2 iven3 iven4 john kaukovalta klatt klatt3 klatt4 klatt5 klatt6 m1 m2 m4 m5 m6 m8 marcelo max michel
miguel mike2 norbert pablo pedro quincy rob robert robosoft robosoft2 robosoft3 robosoft4 robosoft5 robosoft6
robosoft7 robosoft8 sandro shelby steph steph2 steph3 travis victor whisper whisperf zac
""".split()


@dataclass
class DataConfig:
    accents: list[str] = field(default_factory=lambda: list(ACCENTS))
    train_variants: list[str] = field(default_factory=lambda: list(TRAIN_VARIANTS))
    test_variants: list[str] = field(default_factory=lambda: ["m3", "m7", "f2", "f5", "klatt2", "david", "linda", "paul"])
    train_utterances: int = 6000
    val_utterances: int = 300
    test_utterances: int = 500
    min_words: int = 1
    max_words: int = 7  # TIDIGITS strings run to seven digits
    rate: list[int] = field(default_factory=lambda: [120, 250])  # words a minute (espeak-ng's default: 175)
    pitch: list[int] = field(default_factory=lambda: [25, 75])  # 0-100 (50: the voice's own)
    pitch_range: list[int] = field(default_factory=lambda: [20, 80])  # 0 monotone, 50 normal, 100 lively
    word_gap: list[int] = field(default_factory=lambda: [0, 4])  # extra pause between words, 10 ms units
    silence: list[float] = field(default_factory=lambda: [0.05, 0.4])  # seconds before and after
    snr_db: list[float] = field(default_factory=lambda: [15.0, 50.0])
    tilt: float = 0.5  # first-order channel: x_n + b x_{n-1}, b uniform in [-tilt, tilt]
    warp: float = 0.1  # training utterances' frequencies scaled by a factor uniform in [1 - warp, 1 + warp]
    seed: int = 0
    tidigits_dir: str | None = None  # None: look in the data cache, then /usr/share/pocketsphinx

    def __post_init__(self) -> None:
        shared = sorted(set(self.train_variants) & set(self.test_variants))
        if shared:
            raise ValueError(f"data.test_variants: expected voices that training never hears, got {shared} in data.train_variants too")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"data.min_words, data.max_words: expected 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        for name in ("rate", "pitch", "pitch_range", "word_gap", "silence", "snr_db"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"data.{name}: expected a range [low, high] with low <= high, got {low_high}")


@dataclass
class FeatureConfig:
    """A Sphinx-style MFCC front end (see the module docstring); every length is in seconds or Hz."""

    sample_rate: int = 16000  # audio is resampled to this first
    frame_seconds: float = 0.025
    shift_seconds: float = 0.01
    fft_size: int | None = None  # None: the smallest power of two that holds a frame
    num_filters: int = 20
    low_hz: float = 1.0
    high_hz: float = 4000.0
    num_cepstra: int = 13
    preemphasis: float = 0.97
    remove_dc: bool = True
    transform: Literal["dct", "legacy"] = "dct"  # orthonormal DCT-II, or Sphinx's legacy scaling
    normalize: Literal["none", "mean", "mean_variance"] = "mean_variance"


@dataclass
class ModelConfig:
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="lstm", hidden_size=128, num_layers=2, bidirectional=True))
    subsample: int = 3
    dropout: float = 0.25  # on the inputs and the LSTM's outputs: it helps most on real speech


@dataclass
class BaselineConfig:
    context: int = 4  # stacked frames on each side: 4 x 3 x 10 ms = 120 ms
    hidden_size: int = 256
    dropout: float = 0.25


@dataclass
class DecodeConfig:
    beam_size: int = 8
    prune: float = 1e-3  # beam search skips words less likely than this at a frame


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=20, early_stopping_patience=4))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    batch_size: int = 32


SIZES = {
    "demo": ["data.train_utterances=1800", "data.test_utterances=300", "data.val_utterances=150", "trainer.max_epochs=10",
             "model.rnn.hidden_size=64", "baseline.hidden_size=128"],
    "fast": ["data.train_utterances=400", "data.val_utterances=20", "data.test_utterances=60", "data.max_words=2",
             "trainer.max_epochs=12", "batch_size=16", "optim.lr=0.01", "model.rnn.hidden_size=32", "model.rnn.num_layers=1",
             "baseline.hidden_size=32"],
}  # fmt: skip

# -- synthesis: libespeak-ng through ctypes ---------------------------------------------------

AUDIO_OUTPUT_SYNCHRONOUS, INITIALIZE_DONT_EXIT, CHARS_UTF8, POS_CHARACTER = 2, 0x8000, 1, 1
RATE, PITCH, RANGE, WORDGAP = 1, 3, 4, 7  # espeak_PARAMETER
SYNTH_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class Voice(NamedTuple):
    name: str  # "accent+variant", as espeak_SetVoiceByName takes it
    rate: int = 175
    pitch: int = 50
    pitch_range: int = 50
    word_gap: int = 0


class Espeak:
    """libespeak-ng, loaded afresh for one block of utterances: ``with Espeak() as tts: tts.say(words, voice, seed)``.

    Afresh, because the library carries state from one utterance to the next
    (pitch flutter, filter memories) that neither its seed nor
    ``espeak_Terminate`` resets: unloading and reloading it makes a block's
    audio depend on that block alone. (If another module holds the library
    open, it stays loaded and the audio is only close to repeatable.)
    """

    def __enter__(self) -> Espeak:
        try:
            import espeakng_loader
        except ImportError:
            raise DataError("speech synthesis: expected the espeakng-loader package (pip install -e '.[apps]'), found none") from None
        self.lib = lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        uint, pointer = ctypes.c_uint, ctypes.c_void_p
        lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, uint, ctypes.c_int, uint, uint, pointer, pointer]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = lib.espeak_Initialize(AUDIO_OUTPUT_SYNCHRONOUS, 0, data, INITIALIZE_DONT_EXIT)  # 0: default buffer
        if self.sample_rate <= 0:
            raise DataError(f"espeak-ng: expected espeak_Initialize to return a sample rate, got {self.sample_rate}")
        self.chunks: list[np.ndarray] = []
        self.callback = SYNTH_CALLBACK(self._collect)  # kept on self: the library calls it until unloaded
        lib.espeak_SetSynthCallback(self.callback)
        self.libc = ctypes.CDLL(None)
        return self

    def _collect(self, samples, count, events) -> int:
        if samples and count > 0:
            self.chunks.append(np.ctypeslib.as_array(samples, (count,)).copy())
        return 0  # carry on

    def say(self, words: list[str], voice: Voice, seed: int = 0) -> np.ndarray:
        """int16 samples at ``self.sample_rate`` of the words, spoken by ``voice``."""
        code = self.lib.espeak_SetVoiceByName(voice.name.encode())
        if code != 0:
            raise DataError(f"voice: expected an espeak-ng voice such as 'en-us+m3', got {voice.name!r} (espeak-ng error {code})")
        for parameter, value in ((RATE, voice.rate), (PITCH, voice.pitch), (RANGE, voice.pitch_range), (WORDGAP, voice.word_gap)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        self.libc.srand(seed)  # the Klatt voices draw their noise from libc's rand()
        text = " ".join(words).encode() + b"\0"
        self.chunks = []
        code = self.lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if code != 0:
            raise DataError(f"espeak-ng: expected espeak_Synth to return 0, got {code} for {' '.join(words)!r}")
        return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)

    def __exit__(self, *exc) -> None:
        self.lib.espeak_Terminate()
        handle, self.lib = self.lib._handle, None
        _ctypes.dlclose(handle)


class Utterance(NamedTuple):
    words: list[str]
    voice: Voice
    seed: int


def plan(data: DataConfig, split: Literal["train", "val", "test"], count: int) -> list[Utterance]:
    """What each utterance of a split says and how: a seeded draw, the same at every run."""
    rng = random.Random(f"{data.seed}/{split}")
    variants = data.test_variants if split == "test" else data.train_variants
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(data.min_words, data.max_words))]
        name = f"{rng.choice(data.accents)}+{rng.choice(variants)}"
        voice = Voice(name, *(rng.randint(*getattr(data, key)) for key in ("rate", "pitch", "pitch_range", "word_gap")))
        out.append(Utterance(words, voice, rng.randrange(2**31)))
    return out


def channel(samples: np.ndarray, rate: int, data: DataConfig, rng: np.random.Generator) -> np.ndarray:
    """Silence around the speech, a tilted spectrum and white noise at a random SNR: what a microphone adds."""
    speech = samples.astype(np.float32)
    power = float(np.mean(speech**2)) if speech.size else 1.0
    before, after = (int(rng.uniform(*data.silence) * rate) for _ in range(2))
    x = np.concatenate([np.zeros(before, np.float32), speech, np.zeros(after, np.float32)])
    x[1:] += rng.uniform(-data.tilt, data.tilt) * x[:-1].copy()
    noise = rng.standard_normal(x.size).astype(np.float32) * math.sqrt(power / 10 ** (rng.uniform(*data.snr_db) / 10))
    return x + noise


# -- features: a Sphinx-style MFCC front end --------------------------------------------------


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
    nearest FFT bin; filter i rises from edge i to edge i + 1 and falls to edge
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


def featurize(audio: np.ndarray, rate: int, f: FeatureConfig, warp: float = 1.0) -> torch.Tensor:
    return normalize(mfcc(resample(audio, rate, f.sample_rate), f.sample_rate, f, warp), f.normalize)


# -- real speech: TIDIGITS as Sphinx feature files -----------------------------------------------

TIDIGITS_PATH = Path("usr/share/pocketsphinx/test/data/tidigits")
RAW_RECORDING, RAW_WORDS = "dhd.2934z.raw", "two nine three four zero"  # 16 kHz, 16-bit little-endian, no header


def find_tidigits(data: DataConfig) -> Path | None:
    if data.tidigits_dir is not None:
        return Path(data.tidigits_dir)
    for folder in (common.data_dir() / "pocketsphinx-testdata" / TIDIGITS_PATH, Path("/") / TIDIGITS_PATH):
        if (folder / "tidigits.lsn").is_file():
            return folder
    return None


def read_mfc(path: Path, dim: int = 13) -> torch.Tensor:
    """A Sphinx feature file: an int32 count of floats, then the float32 values, frame after frame.

    Sphinx writes them big-endian and reads either order, taking the one whose
    count matches the file's size; so does this.
    """
    raw = common.read_bytes(path)
    if len(raw) < 4:
        raise DataError(f"{path}: expected a Sphinx feature file (an int32 count, then float32 values), found {len(raw)} bytes")
    floats = (len(raw) - 4) / 4
    counts = {order: int.from_bytes(raw[:4], "big" if order == ">" else "little", signed=True) for order in "><"}
    order = next((o for o, count in counts.items() if count == floats), None)
    if order is None:
        raise DataError(f"{path}: expected the header's count of floats to match the {floats:g} floats after it, "
                        f"found {counts['>']} (big-endian); a truncated or foreign file?")  # fmt: skip
    if counts[order] == 0 or counts[order] % dim:
        raise DataError(f"{path}: expected a positive multiple of {dim} floats ({dim} cepstra a frame), found {counts[order]}")
    values = torch.from_numpy(np.frombuffer(raw[4:], dtype=order + "f4").astype(np.float32).reshape(-1, dim))
    bad = (~torch.isfinite(values)).any(-1).nonzero()
    if len(bad):
        raise DataError(f"{path}: expected finite cepstra, found NaN or infinity in frame {bad[0].item()}")
    return values


def read_transcripts(path: Path) -> dict[str, list[str]]:
    """``tidigits.lsn``: lines like ``two nine three four zero (man.ah.2934za)``."""
    text = common.decode_text(common.read_bytes(path), str(path), "transcripts, one 'words (utterance id)' a line")
    out = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        match = re.fullmatch(r"\s*(.*?)\s*\(([^()\s]+)\)\s*", line)
        if not match:
            raise DataError(f"{path}, line {number}: expected 'words (utterance id)', found {line.strip()!r}")
        words = match.group(1).lower().split()
        unknown = [w for w in words if w not in WORDS]
        if unknown or not words:
            raise DataError(f"{path}, line {number}: expected digit words from {list(WORDS)}, found {match.group(1)!r}")
        out[match.group(2)] = words
    return out


def load_tidigits(folder: Path) -> list[tuple[str, list[str], torch.Tensor]]:
    """``(utterance id, words, cepstra (T, 13))`` for each transcript; a feature file without one, or the reverse, is an error."""
    transcripts = read_transcripts(folder / "tidigits.lsn")
    files = {p.name[: -len(".mfc")] for p in folder.glob("*.mfc")}
    untranscribed = sorted(files - set(transcripts))
    if untranscribed:
        raise DataError(f"{folder / 'tidigits.lsn'}: expected a transcript for every .mfc file, found none for {untranscribed[:3]}")
    return [(name, words, read_mfc(folder / f"{name}.mfc")) for name, words in transcripts.items()]


# -- batches, models, metrics ------------------------------------------------------------------


def pad(features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (N, T, F) and lengths (N,)."""
    lengths = torch.tensor([len(x) for x in features])
    out = torch.zeros(len(features), int(lengths.max()), features[0].shape[1])
    for row, x in enumerate(features):
        out[row, : len(x)] = x
    return out, lengths


def encode_words(transcripts: list[list[str]]) -> torch.Tensor:
    """(N, S) label ids, 1 + the word's index, right-padded with 0 (the blank)."""
    out = torch.zeros(len(transcripts), max(map(len, transcripts)), dtype=torch.long)
    for row, words in enumerate(transcripts):
        out[row, : len(words)] = torch.tensor([WORDS.index(w) + 1 for w in words])
    return out


class Batches(TensorBatches):
    """Shuffled mini-batches of ((features, lengths), labels), trimmed to each batch's longest utterance."""

    def __init__(self, features, transcripts, batch_size: int, shuffle: bool = True, seed: int = 0):
        super().__init__(pad(features), encode_words(transcripts), batch_size, shuffle=shuffle, seed=seed)

    def batches(self, epoch: int):
        for (x, lengths), labels in super().batches(epoch):
            yield (x[:, : int(lengths.max())], lengths), labels[:, : int((labels > 0).sum(1).max())]


def build_models(config: Config) -> tuple[CTCRecognizer, CTCFrameMLP]:
    size, vocab = config.features.num_cepstra, len(WORDS)
    seed_everything(config.trainer.seed)
    rnn = CTCRecognizer(CTCRecognizerConfig(size, vocab, config.model.rnn, config.model.subsample, config.model.dropout))
    seed_everything(config.trainer.seed)
    b = config.baseline
    mlp = CTCFrameMLP(CTCFrameMLPConfig(size, vocab, b.context, b.hidden_size, 2, config.model.subsample, b.dropout))
    return rnn, mlp


def word_error_rate(references: list[list[str]], hypotheses: list[list[str]]) -> float:
    """(substitutions + deletions + insertions) / reference words, over the whole set."""
    if len(references) != len(hypotheses):
        raise ValueError(f"hypotheses: expected one per reference ({len(references)}), got {len(hypotheses)}")
    return sum(edit_distance(r, h) for r, h in zip(references, hypotheses)) / max(sum(map(len, references)), 1)


def recognise(model, features: list[torch.Tensor], decode: DecodeConfig, beam: bool, batch_size: int = 64) -> list[list[str]]:
    out = []
    for start in range(0, len(features), batch_size):
        ids = model.transcribe(pad(features[start : start + batch_size]), decode.beam_size if beam else None, decode.prune)
        out += [[WORDS[i - 1] for i in row] for row in ids]
    return out


# -- train, evaluate, predict -----------------------------------------------------------------


def make_split(config: Config, split: str, count: int, say=None) -> tuple[list[list[str]], list[torch.Tensor]]:
    """The words and features of a split's utterances, each featurised as soon as it is spoken (all the audio would take gigabytes)."""
    utterances, features = plan(config.data, split, count), []
    spoken = synthesis = 0.0
    with Espeak() as tts:
        for u in utterances:
            started = time.perf_counter()
            samples = tts.say(u.words, u.voice, u.seed)
            synthesis += time.perf_counter() - started
            spoken += samples.size / tts.sample_rate
            audio = channel(samples, tts.sample_rate, config.data, np.random.default_rng(u.seed))
            # vocal tract length perturbation (Jaitly & Hinton, 2013), in training only: more speakers from the same voices
            warp = 1.0 if split != "train" else np.random.default_rng(u.seed + 1).uniform(1 - config.data.warp, 1 + config.data.warp)
            features.append(featurize(audio, tts.sample_rate, config.features, warp))
    if say:
        say(f"{split}: {count} utterances, {spoken:.0f} s of speech synthesised in {synthesis:.1f} s ({spoken / synthesis:.0f}x real time)")
    return [u.words for u in utterances], features


def train(config: Config, run_dir: Path, say=print) -> Report:
    d = config.data
    say(f"voices: {len(d.accents)} accents x {len(d.train_variants)} training variants; held out: {d.test_variants}")
    train_set = make_split(config, "train", d.train_utterances, say)
    val_set = make_split(config, "val", d.val_utterances, say)
    test_set = make_split(config, "test", d.test_utterances, say)
    rnn, mlp = build_models(config)
    train_batches = Batches(train_set[1], train_set[0], config.batch_size, shuffle=True, seed=config.trainer.seed)
    val_batches = Batches(val_set[1], val_set[0], config.batch_size, shuffle=False)
    for model, folder, name in ((rnn, run_dir, "the BiLSTM (CTC)"), (mlp, run_dir / "baseline", "the frame MLP (CTC)")):
        say(f"training {name}")
        common.fit(model, train_batches, val_batches, config.trainer, config.optim, folder)
        save_model(model, folder / "model.safetensors", {"words": list(WORDS)})
    return report(config, rnn, mlp, train_set[0], test_set)


def evaluate(config: Config, run_dir: Path) -> Report:
    """Reload a run's two models and report them again on the same (re-synthesised) held-out voices."""
    rnn, _ = load_model(run_dir / "model.safetensors")
    mlp, _ = load_model(run_dir / "baseline" / "model.safetensors")
    train_words = [u.words for u in plan(config.data, "train", config.data.train_utterances)]
    return report(config, rnn.eval(), mlp.eval(), train_words, make_split(config, "test", config.data.test_utterances))


def report(config: Config, rnn, mlp, train_words, test_set) -> Report:
    words, features = test_set
    frequent = max(WORDS, key=[w for t in train_words for w in t].count)
    repeated = [frequent] * round(statistics.median(map(len, train_words)))
    folder = find_tidigits(config.data)
    real = load_tidigits(folder) if folder is not None else []
    real_words, real_features = [w for _, w, _ in real], [normalize(x, config.features.normalize) for _, _, x in real]

    present = [("voices", words, features)] + ([("TIDIGITS", real_words, real_features)] if real else [])
    columns = [f"{where} WER {decoder}" for where, _, _ in present for decoder in ("greedy", "beam")]
    rows, said = {}, {}
    for name, model in (("BiLSTM + CTC", rnn), ("frame MLP + CTC", mlp)):
        rows[name] = {}
        for where, references, inputs in present:
            for decoder in ("greedy", "beam"):
                heard = recognise(model, inputs, config.decode, beam=decoder == "beam")
                rows[name][f"{where} WER {decoder}"] = word_error_rate(references, heard)
                said[name, where, decoder] = [" ".join(h) for h in heard]
    for name, guess in (("empty transcript", []), (f"'{' '.join(repeated)}' always", repeated)):
        rows[name] = {f"{where} WER {decoder}": word_error_rate(references, [guess] * len(references))
                      for where, references, _ in present for decoder in ("greedy", "beam")}  # fmt: skip
    baselines = {k: v["voices WER beam"] for k, v in rows.items() if k != "BiLSTM + CTC"}
    verdict = common.compare("The BiLSTM + CTC (beam search)", rows["BiLSTM + CTC"]["voices WER beam"], baselines,
                             "WER (voices never heard in training)", higher_is_better=False)  # fmt: skip

    n_words = sum(map(len, words))
    notes = [
        f"Held-out voices: {len(words)} utterances ({n_words} words) spoken by the variants {config.data.test_variants}, "
        f"which training never hears, with any of the {len(config.data.accents)} accents; a WER near p over {n_words} words "
        f"has a standard error near sqrt(p (1 - p) / {n_words}) (about {100 * math.sqrt(0.25 / n_words):.1f} points at most).",
        f"Beam search: prefix beam search with {config.decode.beam_size} prefixes and no language model. The two fixed "
        "transcripts need no decoding: their greedy and beam columns are the same number.",
        (f"TIDIGITS: the {len(real)} real utterances ({sum(map(len, real_words))} words; a man and a woman) from {folder}, "
         "read as Sphinx cepstra and normalised like the synthetic ones. No real speech is used in training, so this "
         "measures the transfer from espeak-ng's voices to human ones." if real else
         "TIDIGITS: not found (run `make data`, which unpacks Debian's pocketsphinx-testdata into the data cache); "
         "real-speech columns left out."),
    ]  # fmt: skip
    shown = range(min(6, len(words)))
    bilstm = {key[1:]: value for key, value in said.items() if key[0] == "BiLSTM + CTC"}
    samples = {"Held-out voices, a few utterances (reference / greedy / beam)": "\n".join(
        f"{' '.join(words[i]):40} / {bilstm['voices', 'greedy'][i]} / {bilstm['voices', 'beam'][i]}" for i in shown)}
    if real:
        samples["TIDIGITS, a few utterances (reference / beam)"] = "\n".join(
            f"{real[i][0]:20} {' '.join(real_words[i]):36} / {bilstm['TIDIGITS', 'beam'][i]}" for i in range(0, len(real), 5))
    recording = folder / RAW_RECORDING if folder is not None else None
    if recording is not None and recording.is_file():
        audio = np.frombuffer(common.read_bytes(recording), dtype="<i2").astype(np.float32)
        heard = " ".join(recognise(rnn, [featurize(audio, 16000, config.features)], config.decode, beam=True)[0])
        samples["Real audio through this front end (reference / beam)"] = f"{RAW_RECORDING:20} {RAW_WORDS:36} / {heard}"
    return Report("speech", "Speech: spoken digit strings (espeak-ng voices; TIDIGITS)", columns, rows, verdict, notes, samples,
                  plots=["loss.png", "baseline/loss.png"])  # fmt: skip


def read_wav(path: Path) -> tuple[np.ndarray, int]:
    """Samples (float32, int16 scale) and sample rate of a 16-bit PCM mono WAV file."""
    return parse_wav(common.read_bytes(path), str(path))


def parse_wav(raw: bytes, path: str) -> tuple[np.ndarray, int]:
    """:func:`read_wav` of the file's bytes; ``path`` names it in errors."""
    try:
        with wave.open(io.BytesIO(raw), "rb") as w:
            width, channels, rate, frames = w.getsampwidth(), w.getnchannels(), w.getframerate(), w.readframes(w.getnframes())
    except (wave.Error, EOFError) as error:
        raise DataError(f"{path}: expected a 16-bit PCM mono WAV file, found {type(error).__name__}: {error}") from None
    if width != 2 or channels != 1:
        raise DataError(f"{path}: expected a 16-bit PCM mono WAV file, found {8 * width}-bit samples in {channels} channel(s)")
    return np.frombuffer(frames, dtype="<i2").astype(np.float32), rate


def predict(config: Config, run_dir: Path, text: str) -> str:
    """Recognise a WAV file, or digit words synthesised with the first held-out voice (then also their WER)."""
    model, _ = load_model(run_dir / "model.safetensors")
    path = Path(text)
    if path.suffix.lower() == ".wav" or path.is_file():
        audio, rate = read_wav(path)
        heard = recognise(model.eval(), [featurize(audio, rate, config.features)], config.decode, beam=True)[0]
        return " ".join(heard) or "(nothing recognised)"
    words = text.lower().split()
    if not words or any(w not in WORDS for w in words):
        raise DataError(f"text: expected a WAV file or digit words from {list(WORDS)}, got {text!r}")
    voice = Voice(f"{config.data.accents[0]}+{config.data.test_variants[0]}")
    with Espeak() as tts:
        audio = channel(tts.say(words, voice), tts.sample_rate, config.data, np.random.default_rng(0))
    heard = recognise(model.eval(), [featurize(audio, tts.sample_rate, config.features)], config.decode, beam=True)[0]
    wer = word_error_rate([words], [heard])
    return f"{' '.join(heard) or '(nothing recognised)'} (WER {wer:.2f}; spoken by the held-out voice {voice.name})"
