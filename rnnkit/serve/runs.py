"""Served runs: each run folder loaded once, with what its task answers as JSON.

A :class:`ServedRun` is built once when the server starts: the model and
whatever its answers need (a vocabulary, the held-out digits, example values)
are read then, never per request. Its methods are plain synchronous functions
that the app runs in worker threads, so requests to one model run side by side
(inference only reads the weights; PyTorch's grad mode is set per call, since
it is per thread). A task error that the user can fix (``DataError``, a
``ValueError``) is raised as it is and becomes a 422.

Kinds: ``"predict"`` runs answer ``POST /api/<run>/predict`` with one JSON
object; ``"generate"`` runs answer ``POST /api/<run>/generate`` with a stream
of tokens, then a last object (:meth:`ServedRun.finish`).
"""

from __future__ import annotations

import base64
import binascii
import io
import re
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rnnkit import tasks
from rnnkit.models import load_model
from rnnkit.serve import schemas
from rnnkit.serve.schemas import Limits
from rnnkit.tasks.common import DataError

NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


class ServedRun:
    kind = "predict"

    def __init__(self, name: str, task, config, run_dir: Path, limits: Limits) -> None:
        self.name, self.task, self.config, self.run_dir, self.limits = name, task, config, run_dir, limits
        self.module = task.load()
        self.model, self.extra = load_model(run_dir / "model.safetensors")
        self.model.eval()
        self.request = self.build_request(f"{_camel(name)}{'Predict' if self.kind == 'predict' else 'Generate'}Request")

    def build_request(self, name: str):
        raise NotImplementedError

    def example(self) -> dict:
        """A request body that works, for the page and the docs."""
        raise NotImplementedError

    def describe(self) -> dict:
        return {"name": self.name, "task": self.task.name, "kind": self.kind, "summary": self.task.summary,
                "endpoint": f"/api/{self.name}/{self.kind}", "example": self.example()}  # fmt: skip

    def predict(self, body) -> dict:
        raise NotImplementedError

    def start(self, body) -> Iterator[str]:
        """The tokens of a generation, checked before the first is drawn (a bad prime fails here)."""
        raise NotImplementedError

    def finish(self, body, tokens: list[str]) -> dict:
        return {"text": "".join(tokens)}


class Sentiment(ServedRun):
    def build_request(self, name):
        return schemas.text_request(name, self.limits)

    def example(self):
        return {"text": "This is not a good movie"}

    def predict(self, body):
        with torch.no_grad():
            p, words = self.module.explain(self.model, body.text, self.extra["vocabulary"], self.config.data.max_length)
        label = int(p > 0.5)
        return {"label": self.module.LABELS[label], "probability": max(p, 1 - p), "p_positive": p,
                "words": [{"word": w.word, "known": w.known, "contribution": w.contribution} for w in words]}  # fmt: skip


class Forecasting(ServedRun):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        data = self.config.data
        try:  # the example: the end of the run's own series (the values the model reads), if its data is here
            y, _ = self.module.fill_forward(self.module.load_series(data))
            self.recent = [float(v) for v in y[-min(len(y), data.window + 1) :]]
        except (DataError, OSError):
            self.recent = []

    def build_request(self, name):
        return schemas.values_request(name, self.limits, self.config.data.window + 1)

    def example(self):
        return {"values": self.recent or [float(i) for i in range(1, self.config.data.window + 2)]}

    def predict(self, body):
        data = self.config.data
        values = np.array(body.values, dtype=np.float64)
        if not np.isfinite(values).all():
            raise DataError("values: expected finite numbers, got NaN or infinity")
        if data.log and (values <= 0).any():
            raise DataError(f"values: expected positive values (this model works on logs), got {values.min()}")
        z = np.log(values) if data.log else values
        forecast = self.module.rnn_forecast(self.model, z, self.extra["scale"], np.array([len(z) - 1]), data)[0]
        return {"history": body.values, "forecast": [float(v) for v in forecast], "horizon": data.horizon}


class Translation(ServedRun):
    def build_request(self, name):
        return schemas.text_request(name, self.limits)

    def example(self):
        return {"text": "And God said, Let there be light"}

    def predict(self, body):
        vocabularies = [self.extra["source_vocabulary"], self.extra["target_vocabulary"]]
        with torch.no_grad():
            text, words, source, weights = self.module.translate_with_attention(
                self.model, body.text, vocabularies, self.config.beam_size, self.config.length_penalty, self.extra["lexicon"])
        return {"translation": text, "output_words": words, "source_words": source, "attention": weights}


class Captioning(ServedRun):
    def __init__(self, *args) -> None:
        super().__init__(*args)
        self.digits = self.module.load_digits(self.config.data.path)  # once: every strip is cut from them

    def build_request(self, name):
        return schemas.digits_request(name, self.config.data.digits)

    def example(self):
        return {"digits": "4190123456789"[: self.config.data.digits]}

    def predict(self, body):
        image, _ = self.module.test_strip(self.config, body.digits, self.digits)
        with torch.no_grad():
            words = self.module.model_captions(self.model, image)[0]
        return {"caption": " ".join(words), "strip": image[0, 0].tolist()}


class Speech(ServedRun):
    def build_request(self, name):
        return schemas.audio_request(name, self.limits)

    def example(self):
        return {"wav_base64": "(a WAV file, 16-bit PCM or float, mono or stereo, up to 30 s, base64-encoded)"}

    def predict(self, body):
        try:
            raw = base64.b64decode(body.wav_base64, validate=True)
        except (binascii.Error, ValueError):
            raise DataError("wav_base64: expected a base64-encoded WAV file, got text that is not base64") from None
        audio, rate = self.module.parse_wav(raw, "wav_base64")
        if len(audio) < rate // 10:
            raise DataError(f"wav_base64: expected at least 0.1 s of audio, got {len(audio)} samples at {rate} Hz")
        audio, rate = self.module.read_recording(raw, "wav_base64")  # the same again, the silence around the speech trimmed
        with torch.no_grad():
            words = self.module.hear(self.model, audio, rate, self.config)
        return {"transcript": " ".join(words), "words": words, "seconds": len(audio) / rate}


class CharLM(ServedRun):
    kind = "generate"

    def build_request(self, name):
        prime = "ROMEO:" if set("ROMEO:") <= set(self.extra["vocabulary"][1:]) else self.extra["vocabulary"][-1]
        return schemas.generate_request(name, self.limits, self.limits.max_characters, prime, 200)

    def example(self):
        return self.request().model_dump()

    def start(self, body):
        return self.module.stream_characters(self.model, self.extra["vocabulary"], body.prime, body.length, body.temperature,
                                             body.top_k, body.top_p, body.seed)  # fmt: skip

    def finish(self, body, tokens):
        return {"text": body.prime + "".join(tokens)}


class Music(ServedRun):
    kind = "generate"

    def build_request(self, name):
        return schemas.generate_request(name, self.limits, self.limits.max_events, "", 64)

    def example(self):
        return self.request().model_dump()

    def start(self, body):
        grid = self.config.data.grid
        _, events = self.module.stream_events(  # the primed events: finish() reads them from the body again
            self.model, self.extra["vocabulary"], grid, body.prime, body.temperature, body.length, body.seed, body.top_k, body.top_p)
        return events

    def finish(self, body, tokens):
        from rnnkit.tasks import synth

        grid = self.config.data.grid
        primed = [self.module.event_name(*self.module.parse_event(e, grid, "prime"), grid) for e in body.prime.split()]
        names = primed + tokens
        events = [self.module.parse_event(n, grid) for n in names]
        midi = io.BytesIO()
        self.module.write_midi(midi, events, grid, self.config.tempo)
        notes, time = [], 0
        for pitch, steps in events:
            if pitch is not None:
                notes.append([pitch, time, steps])
            time += steps
        return {"events": names, "grid": grid, "notes": notes, "midi_base64": base64.b64encode(midi.getvalue()).decode(),
                "wav_base64": base64.b64encode(synth.midi_to_wav(midi.getvalue())).decode()}  # fmt: skip


KINDS = {"sentiment": Sentiment, "co2": Forecasting, "stocks": Forecasting, "translation": Translation,
         "captioning": Captioning, "speech": Speech, "charlm": CharLM, "music": Music}  # fmt: skip


def _camel(name: str) -> str:
    return "".join(part[:1].upper() + part[1:] for part in re.split(r"[^A-Za-z0-9]", name) if part)


def load_runs(run_dirs: list[str | Path], limits: Limits = Limits()) -> dict[str, ServedRun]:
    """Load each run folder once; its name in the API is the folder's name, which must be unique and plain."""
    runs: dict[str, ServedRun] = {}
    for run_dir in map(Path, run_dirs):
        name = run_dir.absolute().name  # not resolved: a link's own name is what the user chose
        if not NAME.fullmatch(name):
            raise DataError(f"RUN {run_dir}: expected a folder name of letters, digits, '_', '-' and '.' (it names the run in URLs), got {name!r}")
        if name in runs:
            raise DataError(f"RUN {run_dir}: expected run folders with different names (the name is the run's URL), got {name!r} twice")
        task, config = tasks.load_run(run_dir)
        runs[name] = KINDS[task.name](name, task, config, run_dir, limits)
    if not runs:
        raise DataError("RUN: expected at least one run folder to serve, got none")
    return runs
