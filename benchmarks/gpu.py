"""The GPU rows of ``make bench`` (issue 17): what only a CUDA device can measure.

Beside configs A, B and C, which :mod:`benchmarks.run` times on every device it finds:

* config L (B=256, T=512, I=H=1024): rnnkit ``auto`` against torch.nn (cuDNN) for each cell;
* the LayerNorm LSTM (Triton kernels) against nn.LSTM and against a ``torch.compile``'d LayerNorm
  LSTM (rnnkit's own step function, unrolled and fused by inductor), at config B;
* minGRU (the Triton linear scan) against nn.GRU at T=4096.

Targets: the plain families within 5% of cuDNN (torch.nn / rnnkit >= 0.95x), LayerNorm LSTM training
at most 1.3x nn.LSTM's time, minGRU at least 20x nn.GRU. Without CUDA nothing here runs and every
target reads "not measured": no GPU target is ever claimed from a CPU run.
"""

from __future__ import annotations


import torch
from torch import nn

import rnnkit
from benchmarks import flops, timing

LARGE = ("L", (256, 512, 1024, 1024))  # config name, (batch, steps, input, hidden)
QUICK_LARGE = ("L", (4, 16, 8, 16))
MIN_GRU = ("M", (16, 4096, 256, 256))
LAYER_NORM_CONFIG = "B-LN"  # config B's shape, its own rows: the main loop's B rows stay as they are
QUICK_MIN_GRU = ("M", (2, 64, 8, 16))
LAYER_NORM_TRITON = "rnnkit auto, layer_norm=True (Triton)"
LAYER_NORM_COMPILED = "torch.compile'd LayerNorm LSTM (rnnkit's step, inductor)"
MIN_GRU_NAME = "minGRU (rnnkit Triton linear scan)"
TORCH = "torch.nn"


class MinGRU(nn.Module):
    """minGRU (Feng et al., 2024, "Were RNNs All We Needed?", §3.1), on rnnkit's Triton linear scan::

        z_t = σ(W_z x_t),  h̃_t = W_h x_t,  h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ h̃_t

    Used when rnnkit has no minGRU layer of its own (issue 15 adds one).
    """

    def __init__(self, input_size: int, hidden_size: int) -> None:
        super().__init__()
        self.project = nn.Linear(input_size, 2 * hidden_size)

    def forward(self, x, h0=None):
        from rnnkit.ops.triton.scan import linear_scan

        gate, candidate = self.project(x).chunk(2, dim=-1)
        z = torch.sigmoid(gate)
        h0 = x.new_zeros(x.shape[1], candidate.shape[-1]) if h0 is None else h0
        h = linear_scan((1 - z).contiguous(), (z * candidate).contiguous(), h0)
        return h, h[-1]


def min_gru(input_size: int, hidden_size: int) -> nn.Module:
    layer = getattr(rnnkit, "MinGRU", None)
    return layer(input_size, hidden_size) if layer is not None else MinGRU(input_size, hidden_size)


def _calls(model, x):
    def inference():
        with torch.no_grad():
            return model(x)

    def training():
        model.zero_grad(set_to_none=True)
        out, state = model(x)
        states = state if isinstance(state, tuple) else (state,)
        (out.sum() + sum(s.sum() for s in states)).backward()

    return {"inference": inference, "training": training}


def _time(report, run, config: str, cell: str, models: dict, x, forward_flops: dict, args) -> None:
    """Time every model's inference and training interleaved; add each as a row of the cuda Layers table."""
    device = x.device
    calls = {}
    for name, model in list(models.items()):
        try:
            with torch.no_grad():
                model(x)
            _calls(model, x)["training"]()
        except Exception as error:  # noqa: BLE001 - a broken contender is reported, not fatal
            report.notes.append(f"cuda {config} {cell}: {name} failed and was skipped ({type(error).__name__}: {error})")
            continue
        for mode, call in _calls(model, x).items():
            calls[f"{name}|{mode}"] = call
    samples = timing.interleaved(calls, args.repeats, args.warmup, timing.synchronizer(device))
    for key, values in samples.items():
        name, mode = key.split("|")
        work = forward_flops[name] if mode == "inference" else flops.training_flops(forward_flops[name])
        report.timed.append(run.Timed(device.type, config, cell, mode, name, timing.summarize(values).scaled(1e3), work, None))


def bench(report, run, args) -> None:
    """Add the GPU rows to ``report`` (a :class:`benchmarks.run.Report`); nothing without CUDA."""
    if not torch.cuda.is_available():
        return
    device = torch.device("cuda")
    config, (batch, steps, inputs, hidden) = QUICK_LARGE if args.quick else LARGE
    for cell in args.cells:
        torch_layer, kit_layer, _, _ = run.CELLS[cell]
        torch.manual_seed(0)
        reference = torch_layer(inputs, hidden).to(device)
        kit = kit_layer(inputs, hidden, engine="auto").to(device)
        kit.load_state_dict(reference.state_dict())
        x = torch.randn(steps, batch, inputs, device=device)
        work = flops.forward_flops(cell, batch, steps, inputs, hidden)
        _time(report, run, config, cell, {TORCH: reference, report.auto_label: kit}, x, {TORCH: work, report.auto_label: work}, args)
        report.notes.append(f"cuda {config}: B={batch}, T={steps}, I={inputs}, H={hidden}; rnnkit's path: {rnnkit.engine.describe(kit)}")

    shape = run.QUICK_CONFIGS["B"] if args.quick else run.CONFIGS["B"]
    torch.manual_seed(0)
    models = {
        TORCH: nn.LSTM(shape.input, shape.hidden),
        LAYER_NORM_TRITON: rnnkit.LSTM(shape.input, shape.hidden, layer_norm=True),
        LAYER_NORM_COMPILED: rnnkit.LSTM(shape.input, shape.hidden, layer_norm=True, engine="reference"),
    }
    models[LAYER_NORM_COMPILED].load_state_dict(models[LAYER_NORM_TRITON].state_dict())
    models = {name: model.to(device) for name, model in models.items()}
    models[LAYER_NORM_COMPILED] = torch.compile(models[LAYER_NORM_COMPILED], backend="aot_eager" if args.quick else "inductor")
    x = torch.randn(shape.steps, shape.batch, shape.input, device=device)
    work = flops.forward_flops("lstm", shape.batch, shape.steps, shape.input, shape.hidden)
    _time(report, run, LAYER_NORM_CONFIG, "lstm", models, x, dict.fromkeys(models, work), args)

    config, (batch, steps, inputs, hidden) = QUICK_MIN_GRU if args.quick else MIN_GRU
    torch.manual_seed(0)
    models = {TORCH: nn.GRU(inputs, hidden).to(device), MIN_GRU_NAME: min_gru(inputs, hidden).to(device)}
    x = torch.randn(steps, batch, inputs, device=device)
    work = {TORCH: flops.forward_flops("gru", batch, steps, inputs, hidden), MIN_GRU_NAME: 2 * steps * batch * inputs * 2 * hidden}
    _time(report, run, config, "gru", models, x, work, args)
    report.notes.append(f"cuda {config}: minGRU against nn.GRU at B={batch}, T={steps}, I={inputs}, H={hidden}")


def targets(report, run) -> list[tuple[str, str, str]]:
    """(target, measured, status) for the GPU targets; all NOT MEASURED where CUDA did not run."""
    rows = []

    def median(config, cell, mode, contender):
        return report.median("cuda", config, cell, mode, contender)

    def add(text, numerator, denominator, threshold, at_most=False):
        if numerator is None or denominator is None:
            rows.append((f"GPU {text}", "not measured (no CUDA device in this run)", "NOT MEASURED"))
            return
        value = numerator / denominator
        met = value <= threshold if at_most else value >= threshold
        rows.append((f"GPU {text}", f"{value:.2f}x", "MET" if met else "MISSED"))

    large = (QUICK_LARGE if report.args.quick else LARGE)[0]
    for config in [*report.configs, large]:
        for cell in report.args.cells:
            for mode in ("inference", "training"):
                text = f"{config} {run.CELL_TITLE[cell]} {mode}: torch.nn (cuDNN) / rnnkit >= 0.95x"
                add(text, median(config, cell, mode, TORCH), median(config, cell, mode, report.auto_label), 0.95)
    triton_ms = median(LAYER_NORM_CONFIG, "lstm", "training", LAYER_NORM_TRITON)
    add("B LayerNorm LSTM training: time / nn.LSTM's <= 1.3x", triton_ms, median(LAYER_NORM_CONFIG, "lstm", "training", TORCH), 1.3, at_most=True)
    add("B LayerNorm LSTM training: torch.compile'd LayerNorm LSTM / rnnkit's >= 1.0x", median(LAYER_NORM_CONFIG, "lstm", "training", LAYER_NORM_COMPILED), triton_ms, 1.0)
    config = (QUICK_MIN_GRU if report.args.quick else MIN_GRU)[0]
    for mode in ("inference", "training"):
        add(f"minGRU {mode} at T=4096: nn.GRU / minGRU >= 20x", median(config, "gru", mode, TORCH), median(config, "gru", mode, MIN_GRU_NAME), 20.0)
    return rows


__all__ = ["MinGRU", "bench", "targets"]
