"""Speech synthesis for :mod:`rnnkit.tasks.speech`: espeak-ng's and flite's voices saying digit strings, and what a microphone adds.

The data config lives here because it says what is spoken and by whom: the
words, the accents and variants in three sets that share no voice (training,
selection for the validation set, test), the fraction spoken by flite, the
ranges each utterance draws its rate, pitch and word gap from, and the
channel (silence, spectral tilt, noise). :func:`plan` draws a split's
utterances from seeds, :class:`Espeak` and :class:`Flite` speak them,
:func:`channel` degrades them.
"""

from __future__ import annotations

import _ctypes
import ctypes
import math
import random
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np

from rnnkit.tasks.common import DataError
from rnnkit.tasks.speech_audio import parse_wav, stretch_time

WORDS = ("zero", "oh", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")  # label i + 1; 0 is the blank


ACCENTS = ("en-us", "en", "en-gb-scotland", "en-gb-x-rp", "en-029", "en-us-nyc", "en-gb-x-gbclan", "en-gb-x-gbcwmd")
# Every variant of espeak-ng 1.52 but the test and selection ones, "belinda" (a copy of "linda") and "Mr serious" (a space in its name).
TRAIN_VARIANTS = """
Alex Andrea Annie AnxiousAndy Demonic Denis Diogo Gene Gene2 Henrique Hugo Jacky Lee Marco Mario Michael Mike
Nguyen Reed RicishayMax RicishayMax2 RicishayMax3 Storm Tweaky UniRobot adam anika anikaRobot announcer
antonio aunty benjamin boris caleb croak ed edward f1 f3 fast grandma grandpa gustave ian iven iven2 iven3
iven4 kaukovalta klatt klatt3 klatt5 klatt6 m1 m2 m4 m5 m8 marcelo max michel miguel mike2 norbert pablo pedro
quincy rob robert robosoft robosoft2 robosoft3 robosoft4 robosoft5 robosoft6 robosoft7 robosoft8 sandro shelby
steph steph3 travis victor whisper whisperf zac
""".split()
# flite's voices (Debian's flite package): a diphone voice (kal16) and clustergen voices, each built from recordings of one person.
FLITE_VOICES = ("kal16", "awb", "rms", "slt")
FLITE = "flite:"  # a Voice named "flite:slt" is flite's, "festival:ked" festival's, any other espeak-ng's
# festival's English voices (Debian's festvox-kallpc16k, festvox-kdlpc16k, festvox-us-slt-hts): two diphone voices of two men and an HTS voice.
FESTIVAL_VOICES = {"kal": "kal_diphone", "ked": "ked_diphone", "slt": "cmu_us_slt_arctic_hts"}
FESTIVAL = "festival:"
# Held out for model selection (the validation set), as the test variants are for the test: new timbres at both.
SELECTION_VARIANTS = ["m6", "f4", "klatt4", "Alicia", "Andy", "edward2", "steph2", "john"]


ESPEAK_RATES = (80, 450)  # words a minute that espeak-ng speaks at; it speaks a rate outside at the nearest end
MIN_RATE = 40  # words a minute: Espeak.say stretches what espeak-ng speaks at 80 to rates down to this
FESTIVAL_MIN_PITCH = 15  # festival's kal aborts (glibc: "malloc(): invalid size") on some utterances at pitch 10 (F0 60 Hz)


@dataclass
class DataConfig:
    accents: list[str] = field(default_factory=lambda: list(ACCENTS))
    train_variants: list[str] = field(default_factory=lambda: list(TRAIN_VARIANTS))
    test_variants: list[str] = field(default_factory=lambda: ["m3", "m7", "f2", "f5", "klatt2", "david", "linda", "paul"])
    selection_variants: list[str] = field(default_factory=lambda: list(SELECTION_VARIANTS))  # speak the validation set
    flite_fraction: float = 0.3  # of the training and validation utterances, spoken by flite's voices instead
    flite_voices: list[str] = field(default_factory=lambda: ["kal16", "awb", "slt"])  # flite's voices in training
    flite_selection_voices: list[str] = field(default_factory=lambda: ["rms"])  # ... and in the validation set
    festival_fraction: float = 0.2  # of the training utterances (not the validation set's), spoken by festival's voices instead
    festival_voices: list[str] = field(default_factory=lambda: ["kal", "ked", "slt"])
    train_utterances: int = 6000
    val_utterances: int = 300
    test_utterances: int = 500
    min_words: int = 1
    max_words: int = 7  # TIDIGITS strings run to seven digits
    rate: list[int] = field(default_factory=lambda: [80, 250])  # words a minute (espeak-ng: 80 to 450, default 175, slower by stretching; people read digits slower)
    pitch: list[int] = field(default_factory=lambda: [25, 75])  # 0-100 (50: the voice's own)
    pitch_range: list[int] = field(default_factory=lambda: [20, 80])  # 0 monotone, 50 normal, 100 lively
    word_gap: list[int] = field(default_factory=lambda: [0, 10])  # extra pause between words, 10 ms units
    silence: list[float] = field(default_factory=lambda: [0.05, 0.4])  # seconds before and after
    snr_db: list[float] = field(default_factory=lambda: [15.0, 50.0])
    tilt: float = 0.5  # first-order channel: x_n + b x_{n-1}, b uniform in [-tilt, tilt]
    warp: float = 0.2  # training utterances' frequencies scaled by a factor uniform in [1 - warp, 1 + warp]
    seed: int = 0
    tidigits_dir: str | None = None  # None: look in the data cache, then /usr/share/pocketsphinx

    def __post_init__(self) -> None:
        pairs = [("test_variants", "train_variants"), ("selection_variants", "train_variants"), ("selection_variants", "test_variants"),
                 ("flite_selection_voices", "flite_voices")]  # fmt: skip
        for name, other in pairs:
            shared = sorted(set(getattr(self, name)) & set(getattr(self, other)))
            if shared:
                raise ValueError(f"data.{name}: expected voices of their own, got {shared} in data.{other} too")
        for name in ("flite_fraction", "festival_fraction"):
            if not 0 <= getattr(self, name) <= 1:
                raise ValueError(f"data.{name}: expected a fraction in [0, 1], got {getattr(self, name)}")
        if self.flite_fraction + self.festival_fraction > 1:
            raise ValueError(f"data.festival_fraction: expected at most 1 - data.flite_fraction ({1 - self.flite_fraction:g}), "
                             f"got {self.festival_fraction}")
        unknown = sorted(set(self.flite_voices + self.flite_selection_voices) - set(FLITE_VOICES))
        if unknown:
            raise ValueError(f"data.flite_voices: expected voices from {list(FLITE_VOICES)}, got {unknown}")
        unknown = sorted(set(self.festival_voices) - set(FESTIVAL_VOICES))
        if unknown or (self.festival_fraction > 0 and not self.festival_voices):
            raise ValueError(f"data.festival_voices: expected voices from {list(FESTIVAL_VOICES)}, got {unknown or []}")
        if not 1 <= self.min_words <= self.max_words:
            raise ValueError(f"data.min_words, data.max_words: expected 1 <= min_words <= max_words, got {self.min_words}, {self.max_words}")
        for name in ("rate", "pitch", "pitch_range", "word_gap", "silence", "snr_db"):
            low_high = getattr(self, name)
            if len(low_high) != 2 or low_high[0] > low_high[1]:
                raise ValueError(f"data.{name}: expected a range [low, high] with low <= high, got {low_high}")
        if self.festival_fraction > 0 and self.pitch[0] < FESTIVAL_MIN_PITCH:
            raise ValueError(f"data.pitch: expected at least {FESTIVAL_MIN_PITCH} with festival's voices on (festival crashes on a lower "
                             f"mean F0), got {self.pitch}; or set data.festival_fraction=0")  # fmt: skip
        if not MIN_RATE <= self.rate[0] <= self.rate[1] <= ESPEAK_RATES[1]:  # above it espeak-ng would speak at 450 without a word
            raise ValueError(f"data.rate: expected words a minute within [{MIN_RATE}, {ESPEAK_RATES[1]}], got {self.rate}")



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
        """int16 samples at ``self.sample_rate`` of the words, spoken by ``voice``.

        espeak-ng speaks 80 to 450 words a minute; a slower ``voice.rate`` is
        spoken at 80 and stretched in time to the rate asked for, at the same
        pitch (:func:`~rnnkit.tasks.speech_audio.stretch_time`).
        """
        code = self.lib.espeak_SetVoiceByName(voice.name.encode())
        if code != 0:
            raise DataError(f"voice: expected an espeak-ng voice such as 'en-us+m3', got {voice.name!r} (espeak-ng error {code})")
        if not MIN_RATE <= voice.rate <= ESPEAK_RATES[1]:
            raise ValueError(f"voice.rate: expected {MIN_RATE} to {ESPEAK_RATES[1]} words a minute for espeak-ng, got {voice.rate}")
        spoken_rate = max(voice.rate, ESPEAK_RATES[0])  # below its range espeak-ng speaks at 80: slower is stretched after
        for parameter, value in ((RATE, spoken_rate), (PITCH, voice.pitch), (RANGE, voice.pitch_range), (WORDGAP, voice.word_gap)):
            self.lib.espeak_SetParameter(parameter, int(value), 0)
        self.lib.espeak_ng_SetRandSeed(seed)
        self.libc.srand(seed)  # the Klatt voices draw their noise from libc's rand()
        text = " ".join(words).encode() + b"\0"
        self.chunks = []
        code = self.lib.espeak_Synth(text, len(text), 0, POS_CHARACTER, 0, CHARS_UTF8, None, None)
        if code != 0:
            raise DataError(f"espeak-ng: expected espeak_Synth to return 0, got {code} for {' '.join(words)!r}")
        samples = np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)
        if spoken_rate != voice.rate:
            stretched = stretch_time(samples, spoken_rate / voice.rate, self.sample_rate)
            samples = np.clip(np.round(stretched), -32768, 32767).astype(np.int16)
        return samples

    def __exit__(self, *exc) -> None:
        self.lib.espeak_Terminate()
        handle, self.lib = self.lib._handle, None
        _ctypes.dlclose(handle)


class Flite:
    """The ``flite`` program (Debian's flite package), one process per utterance: ``Flite().say(words, voice)``, int16 at 16 kHz.

    Its voices are built from recordings of people (kal16 from diphones, awb,
    rms and slt by clustergen), which espeak-ng's formant voices are not. Of a
    :class:`Voice` it takes the rate, as a duration stretch of 175 / rate, and
    the pitch, as a mean F0 of 2 x pitch + 40 Hz (which only kal16 and awb
    follow); a seed is not needed, as its output is deterministic.
    """

    sample_rate = 16000

    def __init__(self) -> None:
        self.program = shutil.which("flite")
        if self.program is None:
            raise DataError("speech synthesis: expected the flite program for data.flite_fraction > 0 (`make data` installs "
                            "Debian's flite package), found none; or set data.flite_fraction=0")  # fmt: skip

    def say(self, words: list[str], voice: Voice, seed: int = 0) -> np.ndarray:
        name = voice.name[len(FLITE) :] if voice.name.startswith(FLITE) else voice.name
        if name not in FLITE_VOICES:
            raise DataError(f"voice: expected a flite voice from {list(FLITE_VOICES)}, got {voice.name!r}")
        with tempfile.TemporaryDirectory() as folder:
            out = Path(folder) / "say.wav"
            command = [self.program, "-voice", name, "--setf", f"duration_stretch={175 / voice.rate:.4f}",
                       "--setf", f"int_f0_target_mean={2 * voice.pitch + 40}", "-t", " ".join(words), "-o", str(out)]  # fmt: skip
            done = subprocess.run(command, capture_output=True, timeout=60)
            if done.returncode != 0 or not out.is_file():
                raise DataError(f"flite: expected a WAV file for {' '.join(words)!r}, got exit code {done.returncode}: "
                                f"{done.stderr.decode(errors='replace').strip()[:200]}")  # fmt: skip
            samples, rate = parse_wav(out.read_bytes(), str(out))
        if rate != self.sample_rate:
            raise DataError(f"flite: expected {self.sample_rate} Hz audio from the voice {name!r}, got {rate} Hz")
        return samples.astype(np.int16)


class Festival:
    """The ``festival`` program (Debian's festival and festvox packages), one process for many utterances: ``Festival().say_many(requests)``.

    A third synthesiser built from recordings of people: kal and ked are
    diphone voices of two men (ked's speaker is in no other synthesiser here),
    slt an HTS voice trained on the same woman's recordings as flite's slt,
    through another vocoder. Of a :class:`Voice` it takes the rate, as a
    duration stretch of 175 / rate (the diphone voices follow it), and the
    pitch, as a mean F0 of 2 x pitch + 40 Hz with a spread of 0.3 x
    pitch_range Hz (the diphone voices' intonation model). Its output is
    deterministic; the sample rate is the voice's own (16 or 32 kHz).
    """

    def __init__(self) -> None:
        self.program = shutil.which("festival")
        if self.program is None:
            raise DataError("speech synthesis: expected the festival program for data.festival_fraction > 0 (`make data` installs "
                            "Debian's festival and festvox voices), found none; or set data.festival_fraction=0")  # fmt: skip

    def say_many(self, requests: list[tuple[list[str], Voice]]) -> list[tuple[np.ndarray, int]]:
        """(int16 samples, sample rate) for each (words, voice), all from one festival process."""
        lines = []
        for k, (words, voice) in enumerate(requests):
            name = voice.name[len(FESTIVAL) :] if voice.name.startswith(FESTIVAL) else voice.name
            if voice.pitch < FESTIVAL_MIN_PITCH:
                raise ValueError(f"voice.pitch: expected at least {FESTIVAL_MIN_PITCH} for festival (it crashes on a lower mean F0), got {voice.pitch}")
            if name not in FESTIVAL_VOICES or any(w not in WORDS for w in words):
                raise DataError(f"voice, words: expected a festival voice from {list(FESTIVAL_VOICES)} and digit words, "
                                f"got {voice.name!r} saying {' '.join(words)!r}")  # fmt: skip
            lines += [f"(voice_{FESTIVAL_VOICES[name]})", f"(Parameter.set 'Duration_Stretch {175 / voice.rate:.4f})",
                      f"(set! int_lr_params '((target_f0_mean {2 * voice.pitch + 40}) (target_f0_std {0.3 * voice.pitch_range:.1f}) "
                      "(model_f0_mean 170) (model_f0_std 34)))",
                      f'(utt.save.wave (utt.synth (Utterance Text "{" ".join(words)}")) "{k}.wav" \'riff)']  # fmt: skip
        with tempfile.TemporaryDirectory() as folder:
            script = Path(folder) / "say.scm"
            script.write_text("\n".join(lines) + "\n")
            done = subprocess.run([self.program, "--batch", str(script)], cwd=folder, capture_output=True, timeout=60 + len(requests))
            out = []
            for k, (words, _) in enumerate(requests):
                wav = Path(folder) / f"{k}.wav"
                if done.returncode != 0 or not wav.is_file():
                    raise DataError(f"festival: expected a WAV file for {' '.join(words)!r}, got exit code {done.returncode}: "
                                    f"{done.stderr.decode(errors='replace').strip()[:200]}")  # fmt: skip
                samples, rate = parse_wav(wav.read_bytes(), str(wav))
                out.append((samples.astype(np.int16), rate))
        return out


class Utterance(NamedTuple):
    words: list[str]
    voice: Voice
    seed: int


def plan(data: DataConfig, split: Literal["train", "val", "test"], count: int) -> list[Utterance]:
    """What each utterance of a split says and how: a seeded draw, the same at every run."""
    rng = random.Random(f"{data.seed}/{split}")
    variants = {"train": data.train_variants, "val": data.selection_variants, "test": data.test_variants}[split]
    flite = {"train": data.flite_voices, "val": data.flite_selection_voices}.get(split, [])
    out = []
    for _ in range(count):
        words = [rng.choice(WORDS) for _ in range(rng.randint(data.min_words, data.max_words))]
        name = f"{rng.choice(data.accents)}+{rng.choice(variants)}"
        if flite and data.flite_fraction > 0 and rng.random() < data.flite_fraction:  # drawn only when on: plans without flite stay as they were
            name = FLITE + rng.choice(flite)
        elif split == "train" and data.festival_fraction > 0 and rng.random() < data.festival_fraction / (1 - data.flite_fraction):
            name = FESTIVAL + rng.choice(data.festival_voices)  # of what flite left: festival_fraction of all, on average
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
