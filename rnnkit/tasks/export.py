"""Exporting a trained run as a self-contained program: ONNX (native LSTM/GRU/RNN nodes) or ``torch.export``'s pt2.

What is exported, per task:

* **sentiment**: the whole classifier, ``(tokens (N, L) int64, lengths (N,) int64) -> P(class) (N, C)``;
  word ids come from the run's vocabulary (``extra["vocabulary"]`` of ``model.safetensors``).
* **co2, stocks** (forecasting): the whole model, ``window (N, W, 1) float32 -> (N, H)`` normalised changes,
  as the task's ``model_inputs`` makes them.
* **charlm**: one step, with the state as inputs and outputs, so that generation can stream:
  ``(token (N,) int64, h (layers, N, H)[, c]) -> (logits (N, V), h'[, c'])``.

Batch and length are dynamic in both formats. A pt2 program needs ``import rnnkit`` where it is
loaded (it holds rnnkit's ops); an ONNX file needs only onnxruntime.
"""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit import onnx_translation_table
from rnnkit.models import load_model
from rnnkit.tasks import DataError

FORMATS = ("onnx", "pt2")
EXPORTABLE = ("sentiment", "co2", "stocks", "charlm")


class Classifier(nn.Module):
    """A sentiment model as a function of padded word ids and lengths: class probabilities."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tokens: Tensor, lengths: Tensor) -> Tensor:
        return self.model((tokens, lengths))[0].softmax(-1)


class Forecaster(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, window: Tensor) -> Tensor:
        return self.model(window)[0]


class CharacterStep(nn.Module):
    """One step of a character language model: the next token's logits and the new state."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        self.lstm = model.config.rnn.cell == "lstm"

    def forward(self, token: Tensor, h: Tensor, c: Tensor | None = None):
        logits, state = self.model(token.unsqueeze(1), (h, c) if self.lstm else h)
        return (logits[:, 0], *state) if self.lstm else (logits[:, 0], state)


def program(task: str, config, run_dir: Path) -> tuple[nn.Module, tuple[Tensor, ...], list[str], list[str], dict]:
    """The exportable module of a run, example inputs, input and output names, and the dynamic dimensions."""
    if task not in EXPORTABLE:
        raise DataError(f"run {run_dir}: expected a run of {', '.join(EXPORTABLE)}, got {task}")
    model, _ = load_model(Path(run_dir) / "model.safetensors")
    model.eval()
    if task == "sentiment":
        example = (torch.ones(2, 5, dtype=torch.long), torch.tensor([5, 3]))
        return Classifier(model), example, ["tokens", "lengths"], ["probabilities"], {"tokens": {0: "batch", 1: "time"}, "lengths": {0: "batch"}}
    if task in ("co2", "stocks"):
        example = (torch.zeros(2, config.data.window, 1),)
        return Forecaster(model), example, ["window"], ["forecast"], {"window": {0: "batch", 1: "time"}}
    rnn = model.rnn
    shape = (rnn.num_layers * rnn.num_directions, 2, rnn.hidden_size)
    names = ["token", "h"] + (["c"] if rnn.spec.state_count == 2 else [])
    example = (torch.zeros(2, dtype=torch.long), *(torch.zeros(shape) for _ in names[1:]))
    outputs = ["logits", *(f"next_{n}" for n in names[1:])]
    return CharacterStep(model), example, names, outputs, {"token": {0: "batch"}, **{n: {1: "batch"} for n in names[1:]}}


def export(task: str, config, run_dir: Path, fmt: str, out: Path) -> Path:
    """Write the run's program to ``out`` (replaced only once the new file is complete); returns the path."""
    if fmt not in FORMATS:
        raise DataError(f"format: expected one of {', '.join(FORMATS)}, got {fmt!r}")
    module, example, inputs, outputs, dynamic = program(task, config, Path(run_dir))
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        partial = Path(scratch) / out.name
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporters' notices about themselves
            if fmt == "onnx":
                torch.onnx.export(module, example, partial, dynamo=False, input_names=inputs, output_names=outputs, dynamic_axes=dynamic)
            else:
                dims = {name: {axis: torch.export.Dim(label) for axis, label in axes.items()} for name, axes in dynamic.items()}
                shapes = {name: dims.get(name) for name in inputs}
                torch.export.save(torch.export.export(module, example, dynamic_shapes=shapes), partial)
        partial.replace(out)
    return out


__all__ = ["EXPORTABLE", "FORMATS", "export", "onnx_translation_table", "program"]


def quantized(run_dir: Path, scheme: str, out: Path) -> Path:
    """Write the run's model converted by :func:`rnnkit.quantize_dynamic` to ``out`` (safetensors + JSON)."""
    from rnnkit.models import save_model
    from rnnkit.tasks import common

    model, extra = load_model(Path(run_dir) / "model.safetensors")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_model(common.quantized(model, scheme), out, extra)
    return out
