"""Applications: each task trains an rnnkit model on real data and reports it beside honest baselines.

The library never imports this package. One module per task, each readable
top to bottom (typed config -> load data -> build model -> train -> evaluate
-> report); :mod:`rnnkit.tasks.common` holds what they share. A task module
provides:

* ``Config``: a typed dataclass nesting the data, model, trainer and optimizer
  settings; the command line's ``key=value`` overrides address its fields;
* ``SIZES``: overrides for the ``"demo"`` and ``"fast"`` sizes (the
  dataclass defaults are the full size);
* ``train(config, run_dir, say) -> Report`` and ``evaluate(config, run_dir) -> Report``;
* optionally ``PRESETS``: named lists of overrides that pick a dataset inside
  the module (``co2`` and ``stocks`` share :mod:`rnnkit.tasks.forecasting`);
* optionally ``predict(config, run_dir, text) -> str``, and
  ``generate(config, run_dir, prime, temperature, length, seed) -> str`` with
  ``generate_stream(...)`` beside it, which yields that text piece by piece
  as it is sampled (``rnnkit generate`` prints it as it comes).

``Task.train`` under :func:`rnnkit.tasks.common.fit_options` resumes every
model of a run from its checkpoint (``rnnkit train --resume``).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from pathlib import Path

from rnnkit import config as configs
from rnnkit.tasks.common import DataError, Report, load_config, save_config
from rnnkit.training.checkpoint import read_metadata


@dataclass(frozen=True)
class Task:
    name: str
    module: str
    summary: str
    model: str  # the class of the model in a run's model.safetensors (rnnkit.models)
    preset: str | None = None  # a key of the module's PRESETS

    def load(self):
        return importlib.import_module(self.module)

    def config(self, size: str = "default", overrides: list[str] = (), data: str | list[str] | None = None):
        """The task's config: preset, then ``size``, then ``overrides`` (``"a.b=value"``), then the data file(s).

        ``data`` is one file (``data.path``), or a list of them for a task whose data takes several (``data.paths``).

        Any invalid value, including one its dataclass rejects, is a :class:`~rnnkit.config.ConfigError`.
        """
        module = self.load()
        if size not in SIZES:
            raise configs.ConfigError(f"size: expected one of {list(SIZES)}, got {size!r}")
        preset = module.PRESETS[self.preset] if self.preset else []
        extra = [] if data is None else data_overrides(module.Config().data, data)
        try:
            return configs.apply_overrides(module.Config(), [*preset, *module.SIZES.get(size, []), *overrides, *extra])
        except configs.ConfigError:
            raise
        except ValueError as error:  # a check in a dataclass's __post_init__
            raise configs.ConfigError(str(error)) from None

    def train(self, config, run_dir: str | Path, say=print) -> Report:
        """Write config.json, train and evaluate, then write REPORT.md and results.json; return the report."""
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        save_config(run_dir, self.name, config)
        report = self.load().train(config, run_dir, say)
        report.save(run_dir)
        return report


def data_overrides(data_config, data: str | list[str]) -> list[str]:
    files = [data] if isinstance(data, str) else list(data)
    if hasattr(data_config, "paths"):
        return [f"data.paths={json.dumps(files)}"]
    if len(files) != 1:
        raise configs.ConfigError(f"--data: expected one file for this task, got {len(files)}: {files}")
    return [f"data.path={files[0]}"]


TASKS = {
    task.name: task
    for task in [
        Task("sentiment", "rnnkit.tasks.sentiment", "sentence sentiment, many-to-one (Pang & Lee's Rotten Tomatoes sentences)", "SequenceClassifier"),
        Task("co2", "rnnkit.tasks.forecasting", "weekly CO2 forecasting, one and many steps ahead (Mauna Loa, statsmodels)", "SequenceRegressor", "co2"),
        Task("stocks", "rnnkit.tasks.forecasting", "daily stock-price forecasting (Microsoft, pmdarima)", "SequenceRegressor", "msft"),
        Task("lm", "rnnkit.tasks.lm", "word-level language model on plain text, truncated BPTT (Pang & Lee's movie reviews)", "LanguageModel"),
        Task("charlm", "rnnkit.tasks.charlm", "character-level text generation, truncated BPTT (Shakespeare)", "LanguageModel"),
        Task("translation", "rnnkit.tasks.translation", "English to French translation, encoder-decoder with attention (Bible verses)", "Seq2Seq"),
        Task("captioning", "rnnkit.tasks.captioning", "captions for strips of handwritten digits, one-to-many (scikit-learn's digits)", "ImageCaptioner"),
        Task("music", "rnnkit.tasks.music", "melody generation over note events (Bach chorales, music21's corpus)", "LanguageModel"),
        Task("speech", "rnnkit.tasks.speech", "spoken digit strings to text, BiLSTM + CTC (espeak-ng voices, TIDIGITS)", "CTCRecognizer"),
    ]
}

SIZES = ("default", "demo", "fast")


def get(name: str) -> Task:
    if name not in TASKS:
        raise DataError(f"task: expected one of {sorted(TASKS)}, got {name!r}")
    return TASKS[name]


def load_run(run_dir: str | Path):
    """``(task, config)`` of a run folder written by ``rnnkit train``; a model.safetensors of another task's model
    class (copied in from another run, say) is refused here, by name, not later as a missing method."""
    name, data = load_config(Path(run_dir))
    task = get(name)
    model_file = Path(run_dir) / "model.safetensors"
    if model_file.is_file():
        found = read_metadata(model_file).get("model_class")
        if found != task.model:
            raise DataError(f"{model_file}: expected the {task.name} task's model, a {task.model} (config.json says {task.name}), "
                            f"got a {found}; was it copied in from another run?")  # fmt: skip
    return task, configs.from_dict(task.load().Config, data)


__all__ = ["SIZES", "TASKS", "DataError", "Report", "Task", "get", "load_run"]
