"""rnnkit's benchmark suite: torch.nn's recurrent layers against rnnkit's, in one run.

    python -m benchmarks.run                      # configs A, B, C; writes docs/benchmarks.md
    python -m benchmarks.run --configs B --cells gru --repeats 9
    python -m benchmarks.run --quick --out /tmp/bench.md   # tiny sizes, a smoke check
    python -m benchmarks.run --single-process      # the old order: every config in this one process

What is measured, for each config and cell (LSTM, GRU, Elman RNN with tanh),
single layer, unidirectional, float32, time-major input:

* inference: one forward call under ``torch.no_grad()``;
* training step: zero the gradients (``set_to_none=True``), forward, and
  backward of ``output.sum()`` plus the sum of every final-state tensor;
* the training step's peak memory (:func:`benchmarks.timing.peak_memory`);
* streaming: B=1, I=32, H=128, one step per call with the state carried,
  torch.nn's cells against rnnkit's cells and rnnkit's layers fed length-1
  sequences;
* bf16 autocast (inference and training) against torch.nn under the same
  autocast, and int8 inference against torch.nn float32 and torch.ao's
  ``quantize_dynamic`` (:mod:`benchmarks.precision`);
* achieved GFLOP/s (:mod:`benchmarks.flops`) as a fraction of this machine's
  GEMM peak of the same precision, measured in the same run.

Each config runs in a fresh process (:mod:`benchmarks.fresh`), unless
``--single-process``.

Contenders are torch.nn's layer, rnnkit with ``engine="auto"``, every other
engine in :data:`rnnkit.engine.ENGINES`, and (LSTM training only, when the
constructor accepts it) rnnkit's LSTM with ``layer_norm=True``, and (training
only) rnnkit's layer with weight drop, locked dropout and zoneout. They share
one set of weights and one input, and are timed interleaved
(:func:`benchmarks.timing.interleaved`). The ratio is torch.nn's time divided
by the contender's: above 1.0 the contender is faster.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import os
import platform
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

if __package__ in (None, ""):  # run as a script, `python benchmarks/run.py`: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rnnkit
import rnnkit.engine
from benchmarks import flops, fresh, gpu, precision, timing


@dataclass(frozen=True)
class Shape:
    batch: int
    steps: int
    input: int
    hidden: int

    def __str__(self) -> str:
        return f"B={self.batch}, T={self.steps}, I={self.input}, H={self.hidden}"


CONFIGS = {"A": Shape(1, 1000, 32, 128), "B": Shape(32, 100, 64, 256), "C": Shape(64, 256, 128, 512)}
QUICK_CONFIGS = {"A": Shape(1, 20, 4, 8), "B": Shape(4, 10, 8, 16), "C": Shape(8, 12, 8, 16)}
STREAM = Shape(1, 1, 32, 128)  # steps are set by --stream-steps
QUICK_STREAM = Shape(1, 1, 4, 8)

CELLS = {  # name: (torch.nn layer, rnnkit layer, torch.nn cell, rnnkit cell)
    "lstm": (nn.LSTM, rnnkit.LSTM, nn.LSTMCell, rnnkit.LSTMCell),
    "gru": (nn.GRU, rnnkit.GRU, nn.GRUCell, rnnkit.GRUCell),
    "rnn": (nn.RNN, rnnkit.RNN, nn.RNNCell, rnnkit.RNNCell),
}
CELL_TITLE = {"lstm": "LSTM", "gru": "GRU", "rnn": "RNN (tanh)"}
TORCH = "torch.nn"
BUSY_CORES = 0.2  # other processes' average core use above which the report warns that timings are unreliable
LAYER_NORM = "rnnkit auto, layer_norm=True"
COMPILED = "rnnkit auto, torch.compile"
REGULARISED = "rnnkit auto, weight drop + variational dropout + zoneout"
REGULARISERS = dict(weight_drop=0.25, input_dropout=0.2, output_dropout=0.2, zoneout=0.1)  # AWD-LSTM-like rates


# -- results ----------------------------------------------------------------


@dataclass
class Timed:
    device: str
    config: str
    cell: str
    mode: str  # "inference" or "training"
    contender: str
    ms: timing.Stats
    flops: int
    max_diff: float | None  # max |output - torch.nn output|, inference only


@dataclass
class Report:
    args: argparse.Namespace
    configs: dict[str, Shape]
    auto_label: str
    peaks: dict[str, dict[str, float | str]] = field(default_factory=dict)  # device -> kernel -> GFLOP/s
    memory_check: tuple[int, int] | None = None
    timed: list[Timed] = field(default_factory=list)
    memory: list[tuple[str, str, str, str, timing.Memory]] = field(default_factory=list)  # device, config, cell, contender
    streaming: list[tuple[str, str, timing.Stats, float]] = field(default_factory=list)  # cell, contender, µs, max diff
    notes: list[str] = field(default_factory=list)
    other_cores: float | None = None  # average cores kept busy by other processes during the run

    def median(self, device, config, cell, mode, contender) -> float | None:
        for t in self.timed:
            if (t.device, t.config, t.cell, t.mode, t.contender) == (device, config, cell, mode, contender):
                return t.ms.median
        return None


# -- contenders -------------------------------------------------------------


def auto_engine() -> str | None:
    """The name of the engine that ``engine="auto"`` resolves to, or None if it is not a named one."""
    try:
        chosen = rnnkit.engine.resolve("auto")
    except Exception:  # noqa: BLE001 - a changed resolve() signature must not stop the benchmarks
        return None
    return next((name for name, fn in rnnkit.engine.ENGINES.items() if fn is chosen), None)


def engine_description() -> str:
    """``rnnkit.engine.describe()`` (which code path ``auto`` runs on CPU, and why) where rnnkit has it."""
    describe = getattr(rnnkit.engine, "describe", None)
    if describe is None:
        return "rnnkit.engine.describe() not available"
    try:
        return str(describe())
    except Exception as error:  # noqa: BLE001
        return f"rnnkit.engine.describe() failed: {type(error).__name__}: {error}"


def try_layer_norm(kit_layer, shape: Shape):
    """rnnkit's LSTM with ``layer_norm=True``, or the reason it cannot be built."""
    try:
        return kit_layer(shape.input, shape.hidden, engine="auto", layer_norm=True)
    except (TypeError, ValueError) as error:
        return f"rnnkit.LSTM(..., layer_norm=True) is not supported by this rnnkit ({type(error).__name__}: {error})"


def layer_contenders(cell: str, shape: Shape, config: str, args, device: torch.device, report: Report) -> dict[str, nn.Module]:
    """torch.nn's layer and each rnnkit contender, all holding torch.nn's weights."""
    torch_layer, kit_layer, _, _ = CELLS[cell]
    torch._dynamo.reset()  # each config's compiled contender is new: earlier ones must not count toward the recompile limit
    torch.manual_seed(0)
    reference = torch_layer(shape.input, shape.hidden)
    weights = reference.state_dict()
    models = {TORCH: reference, report.auto_label: kit_layer(shape.input, shape.hidden, engine="auto")}
    chosen = auto_engine()
    for name in rnnkit.engine.ENGINES:
        if name == chosen:
            continue  # already timed as "auto"
        if name == "reference" and config == "C" and args.skip_reference_c:
            continue
        models[f"rnnkit {name}"] = kit_layer(shape.input, shape.hidden, engine=name)
    if cell == "lstm":
        layer_norm = try_layer_norm(kit_layer, shape)
        if isinstance(layer_norm, str):
            if layer_norm not in report.notes:
                report.notes.append(layer_norm)
        else:
            models[LAYER_NORM] = layer_norm
    try:
        models[REGULARISED] = kit_layer(shape.input, shape.hidden, engine="auto", **REGULARISERS)
    except (TypeError, ValueError) as error:
        report.notes.append(f"the regularisers are not supported by this rnnkit ({type(error).__name__}: {error})")
    if not args.no_compile and (not args.quick or config == "A"):  # --quick compiles one config: compiling is most of its time
        models[COMPILED] = kit_layer(shape.input, shape.hidden, engine="auto")
    for name, model in models.items():
        if name != TORCH:
            model.load_state_dict(weights, strict=name != LAYER_NORM)  # layer norm adds its own parameters
        model.to(device=device, dtype=torch.float32)
    if COMPILED in models:  # compiled on its first call, in the warm-up rounds: inductor (aot_eager for --quick), whole graph
        models[COMPILED] = torch.compile(models[COMPILED], fullgraph=True, backend="aot_eager" if args.quick else "inductor")
    return models


def as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def inference_call(model: nn.Module, x: torch.Tensor) -> Callable[[], object]:
    def call():
        with torch.no_grad():
            return model(x)

    return call


def training_call(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    def call():
        model.zero_grad(set_to_none=True)
        out, state = model(x)
        loss = out.sum() + sum(s.sum() for s in as_tuple(state))
        loss.backward()

    return call


def bench_layers(cell: str, config: str, shape: Shape, device: torch.device, args, report: Report) -> None:
    """Time inference and training of every contender, interleaved, and measure training peak memory."""
    models = layer_contenders(cell, shape, config, args, device, report)
    torch.manual_seed(1)
    x = torch.randn(shape.steps, shape.batch, shape.input, device=device)
    forward = flops.forward_flops(cell, shape.batch, shape.steps, shape.input, shape.hidden)

    with torch.no_grad():
        expected = models[TORCH](x)[0]
    diffs = {}
    for name, model in list(models.items()):
        try:  # one call of each mode: builds what a contender builds on first use, and checks it runs at all
            with torch.no_grad():
                diffs[name] = (model(x)[0] - expected).abs().max().item()
            training_call(model, x)()
        except Exception as error:  # noqa: BLE001 - a broken contender is reported, not fatal
            del models[name]
            reason = f"{type(error).__name__}: {error}"
            report.notes.append(f"{device.type} {config} {cell}: {name} failed and was skipped ({reason})")

    calls: dict[tuple[str, str], Callable[[], object]] = {}
    for name, model in models.items():
        if name not in (LAYER_NORM, REGULARISED):  # training-only contenders
            calls[(name, "inference")] = inference_call(model, x)
    for name, model in models.items():
        calls[(name, "training")] = training_call(model, x)
    if not args.no_precision and report.auto_label in models:
        calls.update(checked_precision_calls(models[TORCH], models[report.auto_label], x, expected, diffs, f"{device.type} {config} {cell}", report))
    repeats = args.repeats_c if config == "C" else args.repeats
    warmup = min(args.warmup, 1) if config == "C" else args.warmup
    keys = list(calls)
    samples = timing.interleaved({f"{n}|{m}": calls[(n, m)] for n, m in keys}, repeats, warmup, timing.synchronizer(device))
    for name, mode in keys:
        stats = timing.summarize(samples[f"{name}|{mode}"]).scaled(1e3)
        work = forward if mode.startswith("inference") else flops.training_flops(forward)
        diff = diffs.get(name if mode == "inference" else (name, mode)) if mode.startswith("inference") else None
        report.timed.append(Timed(device.type, config, cell, mode, name, stats, work, diff))

    if not args.no_memory:
        for name, model in models.items():  # every model is warm: it ran its training step above
            model.zero_grad(set_to_none=True)
            report.memory.append((device.type, config, cell, name, timing.peak_memory(_no_zero_grad(model, x), device)))


def checked_precision_calls(torch_layer, kit_layer, x, expected, diffs, where: str, report: Report) -> dict:
    """The bf16 and int8 rows' calls that run (one call each, its output's difference from torch.nn's float32
    output kept in ``diffs[(contender, mode)]``); a failing one is a note."""
    found = {}
    for (name, mode), call in precision.calls(torch_layer, kit_layer, report.auto_label, TORCH, x, report.notes).items():
        try:
            out = call()
            if mode.startswith("inference"):
                diffs[(name, mode)] = (out[0].float() - expected).abs().max().item()
            found[(name, mode)] = call
        except Exception as error:  # noqa: BLE001 - a broken contender is reported, not fatal
            report.notes.append(f"{where}: {name} ({mode}) failed and was skipped ({type(error).__name__}: {error})")
    return found


def _no_zero_grad(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """A training step without zero_grad: peak_memory's caller zeroes with set_to_none first."""

    def call():
        out, state = model(x)
        (out.sum() + sum(s.sum() for s in as_tuple(state))).backward()

    return call


def bench_streaming(cell: str, shape: Shape, steps: int, args, report: Report) -> None:
    """µs per step of one-step-at-a-time inference with carried state, B=1, interleaved."""
    torch_layer, kit_layer, torch_cell, kit_cell = CELLS[cell]
    torch.manual_seed(0)
    reference = torch_cell(shape.input, shape.hidden)
    weights = reference.state_dict()
    layer_weights = {f"{k}_l0": v for k, v in weights.items()}
    kit = kit_cell(shape.input, shape.hidden)
    kit.load_state_dict(weights)
    torch_seq = torch_layer(shape.input, shape.hidden)
    torch_seq.load_state_dict(layer_weights)
    kit_seq = kit_layer(shape.input, shape.hidden, engine="auto")
    kit_seq.load_state_dict(layer_weights)

    torch.manual_seed(1)
    xs = list(torch.randn(steps, 1, shape.input).unbind(0))  # each (1, I): batch of one
    seq_xs = [x.unsqueeze(0) for x in xs]  # each (1, 1, I): a length-1 sequence
    zeros = torch.zeros(1, shape.hidden)
    cell_state0 = (zeros, zeros) if cell == "lstm" else zeros
    layer_state0 = tuple(s.unsqueeze(0) for s in as_tuple(cell_state0))
    layer_state0 = layer_state0 if cell == "lstm" else layer_state0[0]

    def run_cell(module):
        def call():
            state = cell_state0
            with torch.no_grad():
                for x in xs:
                    state = module(x, state)
            return as_tuple(state)[0]

        return call

    def run_layer(module):
        def call():
            state = layer_state0
            with torch.no_grad():
                for x in seq_xs:
                    _, state = module(x, state)
            return as_tuple(state)[0][0]

        return call

    calls = {
        f"{TORCH} {torch_cell.__name__}": run_cell(reference),
        f"rnnkit {kit_cell.__name__}": run_cell(kit),
        f"{TORCH} {torch_layer.__name__}, length-1 sequences": run_layer(torch_seq),
        f"rnnkit {kit_layer.__name__} {report.auto_label.removeprefix('rnnkit ')}, length-1 sequences": run_layer(kit_seq),
    }
    expected = next(iter(calls.values()))()
    diffs = {}
    for name, fn in list(calls.items()):
        try:
            diffs[name] = (fn() - expected).abs().max().item()
        except Exception as error:  # noqa: BLE001 - a broken contender is reported, not fatal
            del calls[name]
            report.notes.append(f"streaming {cell}: {name} failed and was skipped ({type(error).__name__}: {error})")
    samples = timing.interleaved(calls, args.repeats, args.warmup)
    for name in calls:
        report.streaming.append((cell, name, timing.summarize(samples[name]).scaled(1e6 / steps), diffs[name]))


# -- targets ----------------------------------------------------------------


def targets(report: Report) -> list[tuple[str, str, str]]:
    """(target, measured, MET / MISSED / NOT MEASURED) for the CPU targets of the configs and cells that ran.

    Speed and memory targets are ratios torch.nn / rnnkit ``auto`` (at least the
    threshold); the LayerNorm LSTM target is a time ratio LayerNorm / torch.nn
    (at most 1.5). Streaming targets compare with torch.nn's cell.
    """
    rows = []
    auto = report.auto_label

    def median(config, cell, mode, contender):
        return report.median("cpu", config, cell, mode, contender)

    def add(text, value, threshold, at_most=False):
        if value is None:
            rows.append((text, "not measured (see Notes)", "NOT MEASURED"))
        else:
            met = value <= threshold if at_most else value >= threshold
            rows.append((text, f"{value:.2f}x", "MET" if met else "MISSED"))

    def ratio(a, b):
        return None if a is None or b is None or not b else a / b

    for config in report.configs:
        for cell in report.args.cells:
            for mode in ("inference", "training"):
                if config == "A":
                    threshold = 1.0
                elif cell in ("gru", "rnn"):
                    threshold = 2.0
                else:
                    threshold = 1.2 if mode == "training" else 1.0
                value = ratio(median(config, cell, mode, TORCH), median(config, cell, mode, auto))
                add(f"{config} {CELL_TITLE[cell]} {mode}: torch.nn / rnnkit >= {threshold:.1f}x", value, threshold)
            if not report.args.no_memory:
                memory = {c: m.peak for d, cf, ce, c, m in report.memory if (d, cf, ce) == ("cpu", config, cell)}
                value = ratio(memory.get(TORCH), memory.get(auto))
                add(f"{config} {CELL_TITLE[cell]} training peak memory: torch.nn / rnnkit >= 1.0x", value, 1.0)
        if "lstm" in report.args.cells:
            value = ratio(median(config, "lstm", "training", LAYER_NORM), median(config, "lstm", "training", TORCH))
            line = 1.5 if config == "A" else 1.2  # issue 16 set 1.2 at B and C; A keeps the engine issue's 1.5
            add(f"{config} LayerNorm LSTM training: time / nn.LSTM's time <= {line}x", value, line, at_most=True)
        for cell in report.args.cells:
            value = ratio(median(config, cell, "training", REGULARISED), median(config, cell, "training", auto))
            add(f"{config} {CELL_TITLE[cell]} training with weight drop + variational dropout + zoneout: time / plain <= 1.15x", value, 1.15, at_most=True)
        if not report.args.no_compile:
            for cell in report.args.cells:
                for mode in ("inference", "training"):
                    value = ratio(median(config, cell, mode, auto), median(config, cell, mode, COMPILED))
                    add(f"{config} {CELL_TITLE[cell]} {mode}: eager / torch.compile'd rnnkit >= 1.0x (no slower)", value, 1.0)
    precision.targets(median, report.configs, report.args.cells, auto, TORCH, add, ratio, CELL_TITLE)
    by_cell: dict[str, dict[str, float]] = {}
    for cell, name, stats, _ in report.streaming:
        by_cell.setdefault(cell, {})[name] = stats.median
    for cell, medians in by_cell.items():
        base = next(iter(medians))  # torch.nn's cell comes first
        for name in (n for n in medians if n.startswith("rnnkit")):
            add(f"streaming {CELL_TITLE[cell]}: {base} / {name} >= 1.0x", ratio(medians[base], medians[name]), 1.0)
    return rows


# -- report -----------------------------------------------------------------

CAVEATS = [
    ("Wall-clock medians on a shared machine: other processes (see the machine table) slow every contender "
    "alike only on average; interleaving spreads drift over all contenders, but a busy core hurts multi-threaded "
    "kernels (oneDNN, MKL) more than single-threaded Python overhead. Compare ratios, not absolute times, and "
    "treat a ratio within its contenders' IQRs as a tie."),
    ("The ratio is the headline: torch.nn's time / rnnkit's, so above 1.0 means rnnkit is faster (or, for memory, "
    "smaller). Targets use rnnkit `auto`; other engines are shown for context."),
    ("GFLOP/s counts matrix products only, so a contender with cheaper pointwise code does not earn extra FLOPs; "
    "small shapes (config A: one row per step) are latency-bound and reach a tiny fraction of GEMM peak by nature. "
    "A `% peak` above 100% means the GEMM peak itself was measured while the machine was busy."),
    ("Peak memory counts bytes that go through torch's CPU allocator (every tensor, including those a C++ "
    "extension makes with `at::empty`, as rnnkit's fused loop does), not the process RSS: memory that a library "
    "takes with its own malloc (possibly some oneDNN scratchpads) is invisible to it."),
    ("Streaming compares with torch.nn's cells; torch.nn's layer fed length-1 sequences is shown for context, as it "
    "is the like-for-like peer of rnnkit's layer in that row."),
    ("Allocator history: a training step allocates and frees buffers of 3-134 MB. Whether glibc serves them from "
    "its heap or maps fresh pages (whose first touch page-faults) depends on its mmap threshold, which it raises as "
    "large blocks are freed, so on what ran earlier in the process. At config B this swings whole rows. With the "
    "same code, LSTM training measured 1.29-1.31x (LayerNorm LSTM 0.88-0.90x of nn.LSTM's time) in runs of B alone, "
    "and 0.73-1.24x, four of five runs below 1.0x (LayerNorm LSTM 1.05-2.25x, three of five above 1.5x), in full "
    "runs, which start with config A. So each config now runs in a fresh process (the default); `--single-process` "
    "keeps the old order."),
    ("bf16 and int8 rows: `% peak` divides by the GEMM peak of the same precision measured in this run (bf16 "
    "`torch.mm`; int8: the better of rnnkit's and torch.ao's dynamic int8 linear, GOP/s). Their `max abs diff` "
    "is against torch.nn's float32 output: the precision's rounding, not an error."),
]


def table(header: list[str], rows: list[list[str]]) -> str:
    """A Markdown table with padded columns, readable as plain text too."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    return "\n".join([line(header), "|" + "|".join("-" * (w + 2) for w in widths) + "|", *map(line, rows)])


def machine_facts(report: Report) -> list[tuple[str, str]]:
    cpu = platform.processor() or "unknown"
    try:
        for text in Path("/proc/cpuinfo").read_text().splitlines():
            if text.startswith("model name"):
                cpu = text.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return [
        ("CPU", cpu),
        ("vector instructions", f"{torch.backends.cpu.get_cpu_capability()} (torch's CPU capability; the fused loop's tiles follow it)"),
        ("cores", f"{os.cpu_count()} logical, {usable} usable by this process"),
        ("GPU", gpu),
        ("torch", f"{torch.__version__} (oneDNN: {torch.backends.mkldnn.is_available()})"),
        ("rnnkit", f"{rnnkit.__version__}, engines: {', '.join(rnnkit.engine.ENGINES)}; auto -> {auto_engine() or 'unnamed'}"),
        ("auto engine path", engine_description()),
        ("python", platform.python_version()),
        ("intra-op threads", str(torch.get_num_threads())),
        ("dtype", "float32"),
        ("date", datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")),
        ("other processes' CPU use during the run", "unknown" if report.other_cores is None else
         f"{report.other_cores:.2f} cores on average (should be near 0)"),
    ]


def fmt_stats(stats: timing.Stats, digits: int = 2) -> tuple[str, str]:
    return f"{stats.median:.{digits}f}", f"{stats.q1:.{digits}f}–{stats.q3:.{digits}f}"


def render(report: Report, command: str) -> str:
    args = report.args
    out = ["# rnnkit benchmarks", ""]
    if args.quick:
        out += ["**Quick smoke run: tiny sizes, not representative. Targets below are not meaningful.**", ""]
    if report.other_cores is not None and report.other_cores > BUSY_CORES:
        out += [f"**Busy machine: other processes used {report.other_cores:.2f} cores on average; see Notes.**", ""]
    out += [f"Command: `{command}`", "", "## Machine", ""]
    out += [table(["fact", "value"], [list(f) for f in machine_facts(report)]), ""]
    configs = ", ".join(f"{k}: {v}" for k, v in report.configs.items())
    out += [
        "## Method",
        "",
        f"- Configs ({configs}): single layer, unidirectional, float32, time-major input, one fixed random input.",
        (f"- Contenders: `{TORCH}`'s layer; rnnkit with `engine=\"auto\"` ({report.auto_label}); every other engine in "
        "`rnnkit.engine.ENGINES`; and, for LSTM training, rnnkit's LSTM with `layer_norm=True` when it exists. "
        "All load the torch.nn layer's state dict, so they compute the same function; the `max abs diff` column "
        "(largest absolute difference from torch.nn's output) checks it."),
        ("- Inference: one forward call under `torch.no_grad()`. Training step: `zero_grad(set_to_none=True)`, forward, "
        "and backward of `output.sum()` plus the sum of each final-state tensor."),
        (f"- Interleaved: each round calls every contender (both modes) once, in an order shuffled afresh each round "
        f"(seeded: the same orders every run), so that no contender always follows the same one; {args.warmup} warm-up round(s) ({min(args.warmup, 1)} at C) are discarded, then {args.repeats} timed rounds "
        f"({args.repeats_c} at C). Objects alive before the benchmarks are frozen out of the garbage collector "
        "(`gc.freeze`), one collection runs before each interleaved set and none during a call. Reported: median and "
        "interquartile range (IQR, 25th–75th percentile) of the per-call wall time (`time.perf_counter`)."),
        ("- Ratio = torch.nn time / contender time (above 1.0: the contender is faster). Memory ratio = torch.nn bytes "
        "/ contender bytes (above 1.0: the contender uses less)."),
        ("- GFLOP/s: matrix-product FLOPs only (2·G·H·(I+H) per row and step, G = 4 LSTM, 3 GRU, 1 RNN; pointwise "
        "gate math ignored; training = 3x forward), divided by the median time; `% peak` divides by the best GEMM "
        "rate measured below."),
        ("- Peak memory of a training step: on CPU, `torch.profiler` with `profile_memory=True` records every "
        "allocation (+bytes) and free (−bytes); the peak of their running sum in time order is the most memory the "
        "step held above what was live before it (parameters and input excluded; the gradients it creates "
        "included). The model has run its training step before; gradients are set to None before the measured "
        "step, so it frees no block allocated before profiling. Cross-check: the CPU allocator reports its own "
        "running total with each event; its maximum minus its starting value is shown beside the peak and should be equal. "
        "On CUDA: `torch.cuda.max_memory_allocated` after a reset."),
        ("- Process: " + ("every config in this one process, one after the other (`--single-process`)." if args.single_process
         else "each config in a fresh `python -m benchmarks.run` process of its own (the GEMM peaks and streaming in the "
         "parent), so that no config inherits another's allocator state.")),
        ("- Low precision: `inference bf16` / `training bf16` call torch.nn and rnnkit both under "
        "`torch.autocast(\"cpu\", dtype=torch.bfloat16)`; `inference int8` times torch.nn float32 (the ratio's base), "
        f"`{precision.TORCH_AO}` and `{precision.RNNKIT_INT8}`, interleaved with the float32 rows."),
        (f"- Streaming: B=1, I={report.args.stream_shape.input}, H={report.args.stream_shape.hidden}, "
        f"{args.stream_steps} steps per call, one step at a time with the state carried, under `torch.no_grad()`; "
        "µs per step."),
    ]
    if report.memory_check:
        expected, measured = report.memory_check
        out += [
            (f"- Memory method self-check (run now): allocate 100 MB and 40 MB, free the first, allocate 80 MB; "
            f"true peak {expected / 1e6:.1f} MB, measured {measured / 1e6:.1f} MB.")
        ]
    out += [""]

    out += ["## Targets (CPU, then GPU; rnnkit `auto` unless named)", ""]
    target_rows = targets(report) + gpu.targets(report, sys.modules[__name__])
    out += [table(["target", "measured", "status"], [list(r) for r in target_rows]) if target_rows else "None measured.", ""]

    for device in dict.fromkeys(t.device for t in report.timed):
        peak = flops.peak_of(report.peaks[device])
        out += [f"## Layers ({device})", ""]
        peaks = {p: flops.peak_of(report.peaks[device], p) for p in ("float32", "bf16", "int8")}
        rows = []
        for t in (t for t in report.timed if t.device == device):
            nn_ms = report.median(device, t.config, t.cell, t.mode, TORCH)
            gflops = t.flops / (t.ms.median / 1e3) / 1e9
            median, iqr = fmt_stats(t.ms)
            mode_peak = peaks[precision.precision_of(t.mode)]
            rows.append([
                t.config, CELL_TITLE[t.cell], t.mode, t.contender, median, iqr, "-" if nn_ms is None else f"{nn_ms / t.ms.median:.2f}x",
                f"{gflops:.1f}", f"{100 * gflops / mode_peak:.0f}%" if mode_peak == mode_peak else "-", "" if t.max_diff is None else f"{t.max_diff:.1e}",
            ])  # fmt: skip
        header = ["config", "cell", "mode", "contender", "median ms", "IQR ms", "ratio", "GFLOP/s", "% peak", "max abs diff"]
        out += [table(header, rows), ""]

        mem_rows = []
        for d, config, cell, name, used in report.memory:
            if d != device:
                continue
            nn_bytes = next(m.peak for d2, c2, ce2, n2, m in report.memory if (d2, c2, ce2, n2) == (d, config, cell, TORCH))
            check = "-" if used.allocator_peak is None else f"{used.allocator_peak / 1e6:.3f}"
            ratio = f"{nn_bytes / used.peak:.2f}x" if used.peak else "-"
            mem_rows.append([config, CELL_TITLE[cell], name, f"{used.peak / 1e6:.3f}", ratio, check])
        if mem_rows:
            out += [f"### Training-step peak memory ({device})", ""]
            header = ["config", "cell", "contender", "peak MB", "ratio", "cross-check MB (allocator counter)"]
            out += [table(header, mem_rows), ""]

        n = args.gemm_n
        out += [(f"### GEMM peak ({device}, {n}x{n} @ {n}x{n}, best of {args.gemm_repeats} calls at the start "
                "and as many at the end; float32 unless named)"), ""]  # fmt: skip
        peak_rows = [[k, f"{v:.1f}" if isinstance(v, float) else v] for k, v in report.peaks[device].items()]
        used = ", ".join(f"{p} {v:.1f}" for p, v in peaks.items() if v == v)
        out += [table(["kernel", "GFLOP/s"], peak_rows), "", f"Peaks used for `% peak` (GFLOP/s; int8 GOP/s): {used}.", ""]

    if report.streaming:
        out += ["## Streaming (CPU, one step per call)", ""]
        rows = []
        for cell, name, stats, diff in report.streaming:
            base = next(s.median for c, n, s, _ in report.streaming if c == cell)
            median, iqr = fmt_stats(stats, 1)
            rows.append([CELL_TITLE[cell], name, median, iqr, f"{base / stats.median:.2f}x", f"{diff:.1e}"])
        out += [table(["cell", "contender", "µs/step", "IQR µs", "ratio vs torch.nn cell", "max abs diff"], rows), ""]

    if not args.quick:  # their own runs (`make bench` runs them after this one), shown here by reference
        out += [
            "## Parallel scan: minGRU, minLSTM, RG-LRU against GRU and LSTM",
            "",
            "`python -m benchmarks.scan`: time per step against T (256 to 16384) at H = 256, B = 1 and 8, each (T, B) in a "
            "fresh process; the targets and every row are in [benchmarks-scan.md](benchmarks-scan.md), charlm at equal "
            "wall-clock time in [benchmarks-charlm.md](benchmarks-charlm.md).",
            "",
            "![training time per step against T: GRU against minGRU](img/scan-time-per-step.png)",
            "",
            "![charlm: bits per character against training seconds](img/charlm-bpc-time.png)",
            "",
        ]
    out += ["## Caveats", ""] + [f"- {c}" for c in CAVEATS] + [""]
    if report.notes:
        out += ["## Notes", "", *[f"- {n}" for n in report.notes], ""]
    return "\n".join(out)


# -- main -------------------------------------------------------------------


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="A,B,C", help="comma-separated subset of A,B,C (default: all)")
    parser.add_argument("--cells", default="lstm,gru,rnn", help="comma-separated subset of lstm,gru,rnn")
    parser.add_argument("--repeats", type=int, help="timed rounds, except at C (default 15; 3 with --quick)")
    parser.add_argument("--repeats-c", type=int, help="timed rounds at C (default 5; 3 with --quick)")
    parser.add_argument("--warmup", type=int, help="discarded warm-up rounds (default 2, at most 1 at C; 1 with --quick)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default 2; 1 with --quick)")
    parser.add_argument("--skip-reference-c", action="store_true", help="do not time the slow reference engine at C")
    parser.add_argument("--stream-steps", type=int, help="steps per streaming call (default 1000; 20 with --quick)")
    parser.add_argument("--no-streaming", action="store_true", help="skip the streaming benchmark")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile'd rnnkit contender")
    parser.add_argument("--no-precision", action="store_true", help="skip the bf16 autocast and int8 rows")
    parser.add_argument("--single-process", action="store_true", help="every config in this process (the old order), not each in a fresh one")
    parser.add_argument("--worker-result", help=argparse.SUPPRESS)  # a child of the fresh-process method: write rows here
    parser.add_argument("--quick", action="store_true", help="tiny sizes and few repeats: a smoke check of a few seconds")
    parser.add_argument("--out", help="Markdown report path (default docs/benchmarks.md; none with --quick)")
    args = parser.parse_args(argv)
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    args.cells = [c.strip().lower() for c in args.cells.split(",") if c.strip()]
    for value, known, flag in ((args.configs, CONFIGS, "--configs"), (args.cells, CELLS, "--cells")):
        unknown = [v for v in value if v not in known]
        if unknown or not value:
            parser.error(f"{flag}: expected a comma-separated subset of {','.join(known)}, got {unknown or 'nothing'}")
    args.stream_shape = QUICK_STREAM if args.quick else STREAM
    args.gemm_n, args.gemm_repeats = (256, 3) if args.quick else (2048, 10)
    # Defaults, then --quick's. Tiny sizes gain nothing from a second thread, and one that waits for a busy core
    # makes every op slow, so --quick runs on one.
    defaults = {"repeats": (15, 3), "repeats_c": (5, 3), "warmup": (2, 1), "stream_steps": (1000, 20), "threads": (2, 1)}
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.out is None and not args.quick and args.worker_result is None:
        args.out = "docs/benchmarks.md"
    return args


def gemm_peaks(device: torch.device, args) -> dict[str, float | str]:
    """The float32 GEMM rates and, on CPU unless --no-precision, the bf16 and int8 ones."""
    rates = flops.gemm_peak(device, args.gemm_n, args.gemm_repeats)
    if device.type == "cpu" and not args.no_precision:
        rates.update(precision.gemm_rates(args.gemm_n, args.gemm_repeats, flops.best_time))
    return rates


def main(argv=None) -> Report:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.set_default_dtype(torch.float32)
    # The ~10^5 objects that importing torch creates make each full garbage collection cost ~0.1 s; freezing
    # them keeps the collections between measurements (timing.interleaved, timing.peak_memory) cheap.
    gc.collect()
    gc.freeze()
    shapes = QUICK_CONFIGS if args.quick else CONFIGS
    start = timing.cpu_seconds()
    chosen = auto_engine()
    report = Report(args, {c: shapes[c] for c in args.configs}, f"rnnkit auto (-> {chosen or 'unnamed engine'})")
    devices = [torch.device("cpu")]
    if torch.cuda.is_available():
        devices.append(torch.device("cuda"))
    else:
        report.notes.append("GPU rows not measured: torch.cuda.is_available() is False (no GPU, or a CPU-only torch build).")
    if args.skip_reference_c and "C" in args.configs:
        report.notes.append("--skip-reference-c: the reference engine was not timed at C, except as what `auto` resolves to.")

    def say(text):
        print(text, file=sys.stderr, flush=True)

    if args.worker_result is not None:  # a child of the fresh-process method: its config's rows, nothing else
        for device in devices:
            for config, shape in report.configs.items():
                for cell in args.cells:
                    say(f"[{device.type}] config {config} ({shape}), {cell} ...")
                    bench_layers(cell, config, shape, device, args, report)
        fresh.write(report, Path(args.worker_result))
        return report
    for device in devices:
        say(f"[{device.type}] GEMM peak ...")
        report.peaks[device.type] = gemm_peaks(device, args)
    for config, shape in report.configs.items():
        if args.single_process:
            for device in devices:
                for cell in args.cells:
                    say(f"[{device.type}] config {config} ({shape}), {cell} ...")
                    bench_layers(cell, config, shape, device, args, report)
        else:
            say(f"config {config} ({shape}) in a fresh process ...")
            fresh.run_config(argv, config, report, say)
    gpu.bench(report, sys.modules[__name__], args)  # config L, the LayerNorm LSTM and minGRU on CUDA (benchmarks/gpu.py)
    for device in devices:  # the peak again: a busy moment at the start must not understate it
        again = gemm_peaks(device, args)
        first = report.peaks[device.type]
        best = {k: max((v for v in (first[k], again[k]) if isinstance(v, float)), default=first[k]) for k in first}
        report.peaks[device.type] = best
    if not args.no_memory:
        report.memory_check = timing.check_peak_memory()
    if not args.no_streaming:
        for cell in args.cells:
            say(f"[cpu] streaming {cell} ...")
            bench_streaming(cell, args.stream_shape, args.stream_steps, args, report)

    report.other_cores = timing.other_cores_busy(start, timing.cpu_seconds())
    if report.other_cores is not None and report.other_cores > BUSY_CORES:
        report.notes.insert(0, (
            f"**The machine was busy**: other processes kept {report.other_cores:.2f} cores busy on average during "
            f"the run (above {BUSY_CORES}), so these timings are unreliable. Multi-threaded kernels suffer most: "
            "torch.nn's oneDNN RNN synchronizes its threads at every time step, and a thread that waits for a busy "
            "core can make it many times slower (seen at 100x during development), which inflates ratios in "
            "rnnkit's favour. Rerun on an idle machine."
        ))  # fmt: skip
    command = "python -m benchmarks.run " + " ".join(argv)
    markdown = render(report, command.strip())
    print(markdown)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(markdown + "\n")
        say(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
