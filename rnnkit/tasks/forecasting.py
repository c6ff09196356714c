r"""Forecasting a series one and many steps ahead: an RNN beside the naive and seasonal-naive forecasts.

Examples::

    rnnkit train co2 --out runs/co2
    rnnkit train stocks --out runs/stocks
    rnnkit train co2 data.horizon=26 model.rnn.hidden_size=64
    rnnkit train co2 --data my_series.csv data.column=sales data.season=12 data.window=36
    rnnkit predict runs/co2 "316.1 317.3 317.6 ..."     # at least data.window + 1 recent values

Data (``make data`` downloads both packages; nothing is installed):

* ``co2``: weekly atmospheric CO2 (ppm) at Mauna Loa, March 1958 to December
  2001, 2,284 weeks of which 59 have no value: ``statsmodels/datasets/co2/co2.csv``
  inside the statsmodels wheel, with the columns ``date`` (YYYYMMDD) and ``co2``.
* ``msft`` (the ``stocks`` task): Microsoft's daily prices from 1986-03-13 to
  2017-11-10, 7,983 trading days: ``msft.csv`` inside
  ``pmdarima/datasets/data/msft.tar.gz`` inside the pmdarima wheel, with the
  columns Date, Open, High, Low, Close, Volume, OpenInt. The close is used.

Your own data (``--data PATH``): a UTF-8 CSV file with a header row. The
column named by ``data.column`` (default ``value``) holds the series in time
order, one row per step at a regular interval; an empty cell, ``NA`` or
``NaN`` is a missing value. Other columns are ignored. Set ``data.season`` to
the length of the seasonal cycle in steps (for the seasonal-naive baseline),
and ``data.log=true`` for a positive series that grows by ratios, like prices.

Method. Missing values are carried forward from the last observed value
(only the past is used) and never count as targets. The series is split in
time into train, validation and test parts. With :math:`z_t = \log y_t` when
``data.log`` is set and :math:`z_t = y_t` otherwise, and :math:`s` the standard
deviation of the one-step changes :math:`z_t - z_{t-1}` within the training
part (the normalisation, fitted there only)::

    inputs at origin t    ((z_{t-W+1} - z_{t-W}), ..., (z_t - z_{t-1})) / s      (N, W, 1)
    targets               ((z_{t+1} - z_t), ..., (z_{t+H} - z_t)) / s            (N, H)
    forecast              z_{t+h} = z_t + s * output_h,  y = exp(z) if data.log

A window belongs to the part that holds all its targets; its inputs may reach
back into earlier parts (the past), never forward. Changes rather than levels
make the model blind to the level: CO2 climbs out of its training range during
the test years, and a model of levels would have to extrapolate. A
:class:`~rnnkit.models.SequenceRegressor` reads the W changes and its last
state gives all H forecasts through one linear layer: many-to-one for the
next step (H=1), and a direct sequence-to-H-values forecast for H > 1.

Baselines: the naive forecast :math:`\hat y_{t+h} = y_t` (a random walk's
best guess), the naive forecast with drift (plus h times the training part's
mean change of z per step), and the seasonal-naive :math:`\hat y_{t+h} = y_{t+h-m\lceil h/m\rceil}`
with season m (52 weeks for CO2; 5 trading days for stocks, which have no
weekly cycle, so there it is a lagged naive forecast rather than a seasonal one).
Metrics, on the test part's observed targets and every horizon 1..H: MAE,
RMSE, and MASE, the MAE divided by the mean absolute one-step change over the
training part (Hyndman & Koehler, 2006), also at h=1 and h=H alone.

Stocks. The model reads and predicts log returns, not prices: returns are
close to stationary, while prices grew 1,000-fold over the series. Daily
prices are close to a random walk, and the efficient-market view says that
no function of past prices beats the naive forecast by much; expect the RNN
to match it at best, and read the table for what it did.
"""

from __future__ import annotations

import io
import math
import re
import tarfile
from dataclasses import dataclass, field
import tempfile
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import InputConfig, ManyToOneConfig, RecurrentConfig, SequenceRegressor, load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything
from rnnkit.training.checkpoint import save_figure

# -- config --------------------------------------------------------------------------


@dataclass
class DataConfig:
    dataset: Literal["co2", "msft"] = "co2"  # the built-in series, when path is None
    path: str | None = None  # your own CSV (see above)
    column: str | None = None  # None: "co2", "close" or, for your own file, "value"
    log: bool = False  # model log values: changes become log returns
    season: int = 52  # steps per seasonal cycle, for the seasonal-naive baseline
    window: int = 104  # W: past steps the model reads
    horizon: int = 13  # H: steps ahead it forecasts
    val_fraction: float = 0.1
    test_fraction: float = 0.2

    def __post_init__(self) -> None:  # before the data is read: a zero horizon would end in a NaN loss
        for name in ("season", "window", "horizon"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise common.DataError(f"data.{name}: expected a positive number of steps, got {value!r}")


@dataclass
class ModelConfig:
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="gru", hidden_size=64))
    dropout: float = 0.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=40, early_stopping_patience=6))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    batch_size: int = 64


PRESETS = {
    "co2": [],
    "msft": ["data.dataset=msft", "data.log=true", "data.season=5", "data.window=60", "data.horizon=5", "trainer.max_epochs=15"],
}
SIZES = {  # the full size trains in seconds, so the demo uses it
    "demo": [],
    "fast": ["trainer.max_epochs=2", "model.rnn.hidden_size=8"],
}


class Source(NamedTuple):
    package: str  # glob in the data cache
    member: str  # path inside the package archive
    inner: str | None  # path inside a nested .tar.gz, if any
    column: str
    title: str


DATASETS = {
    "co2": Source("statsmodels-*.whl", "statsmodels/datasets/co2/co2.csv", None, "co2", "Weekly CO2 at Mauna Loa (ppm)"),
    "msft": Source("pmdarima-*.whl", "pmdarima/datasets/data/msft.tar.gz", "msft.csv", "close", "Microsoft daily close (USD)"),
}

# -- data ---------------------------------------------------------------------------------

MISSING = {"", "na", "nan", "null", "none"}


def load_series(data: DataConfig) -> np.ndarray:
    """The series as float64, NaN where a value is missing, from the data cache or your own CSV."""
    if data.path is None:
        spec = DATASETS[data.dataset]
        archive = common.cached_package(spec.package)
        raw, source = common.read_member(archive, spec.member), f"{archive}:{spec.member}"
        if spec.inner is not None:
            raw, source = _read_inner(raw, spec.inner, source), f"{source}:{spec.inner}"
        column = data.column or spec.column
    else:
        raw, source, column = common.read_bytes(data.path), data.path, data.column or "value"
    text = common.decode_text(raw, source, f"a CSV with a numeric column {column!r}")
    values = []
    for line, row in common.read_csv(text, source, [column.lower()]):
        cell = row[column.lower()].strip()
        if cell.lower() in MISSING:
            values.append(math.nan)
            continue
        try:
            values.append(float(cell))
        except ValueError:
            raise DataError(f"{source}, line {line}: expected a number or an empty cell in column {column!r}, found {cell!r}") from None
    series = np.array(values, dtype=np.float64)
    if data.log and (series[np.isfinite(series)] <= 0).any():
        raise DataError(f"{source}: expected positive values with data.log=true, found {series[np.isfinite(series)].min()}")
    return series


def _read_inner(raw: bytes, name: str, source: str) -> bytes:
    try:
        with tarfile.open(fileobj=io.BytesIO(raw)) as inner:
            return inner.extractfile(name).read()
    except (KeyError, tarfile.TarError) as error:
        raise DataError(f"{source}: expected a .tar.gz holding {name!r}, found {type(error).__name__}: {error}") from None


def fill_forward(series: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(filled, observed)``: each missing value replaced by the last observed one; leading gaps are dropped."""
    observed = np.isfinite(series)
    start = int(np.argmax(observed))
    series, observed = series[start:], observed[start:]
    last = np.maximum.accumulate(np.where(observed, np.arange(len(series)), 0))
    return series[last], observed


class Split(NamedTuple):
    train_end: int  # the training part is [0, train_end)
    val_end: int  # validation [train_end, val_end), test [val_end, n)
    n: int


def split_points(n: int, data: DataConfig) -> Split:
    n_test, n_val = round(n * data.test_fraction), round(n * data.val_fraction)
    return Split(n - n_test - n_val, n - n_test, n)


def fit_scale(z: np.ndarray, split: Split) -> float:
    """The normalisation: the spread of one-step changes, from the training part only."""
    scale = float(np.diff(z[: split.train_end]).std())
    return scale if scale > 0 else 1.0


def window_indices(window: int, horizon: int, lo: int, hi: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Origins t whose targets t+1..t+H all lie in [lo, hi), with the indices each window reads and predicts.

    Returns ``origins`` (N,), ``reads`` (N, W+1): the z values whose changes are
    the inputs (t-W..t), and ``targets`` (N, H): t+1..t+H.
    """
    origins = np.arange(max(window, lo - 1), hi - horizon)
    return origins, reads(origins, window), origins[:, None] + np.arange(1, horizon + 1)


def reads(origins: np.ndarray, window: int) -> np.ndarray:
    """(N, W+1) indices t-W..t: the values whose W changes a window at origin t reads."""
    return origins[:, None] + np.arange(-window, 1)


def model_inputs(z: np.ndarray, origins: np.ndarray, window: int, scale: float) -> torch.Tensor:
    """(N, W, 1): the W changes before each origin, normalised by ``scale``."""
    return torch.tensor(np.diff(z[reads(origins, window)], axis=1) / scale, dtype=torch.float32).unsqueeze(-1)


def make_windows(z: np.ndarray, scale: float, window: int, horizon: int, lo: int, hi: int):
    """``(origins, inputs (N, W, 1), targets (N, H))``, the targets being the changes from each origin over ``scale``."""
    origins, _, targets = window_indices(window, horizon, lo, hi)
    y = (z[targets] - z[origins, None]) / scale
    return origins, model_inputs(z, origins, window, scale), torch.tensor(y, dtype=torch.float32)


def prepare(data: DataConfig):
    """Load, fill, transform and split: ``(y, observed, z, split)``."""
    y, observed = fill_forward(load_series(data))
    z = np.log(y) if data.log else y
    split = split_points(len(y), data)
    parts = [(0, split.train_end), (split.train_end, split.val_end), (split.val_end, split.n)]
    if split.train_end <= data.season or any(len(window_indices(data.window, data.horizon, lo, hi)[0]) == 0 for lo, hi in parts):
        raise DataError(f"{data.path or data.dataset}: expected enough values for windows of {data.window} steps -> "
                        f"{data.horizon} ahead in each of the train, validation and test parts, found {len(y)} values")  # fmt: skip
    return y, observed, z, split


# -- forecasts and metrics ------------------------------------------------------------------


def rnn_forecast(model, z: np.ndarray, scale: float, origins: np.ndarray, data: DataConfig) -> np.ndarray:
    """(N, H) forecasts in the series' own units."""
    with torch.no_grad():
        out = model(model_inputs(z, origins, data.window, scale))[0].double().numpy()
    zhat = z[origins, None] + scale * out
    return np.exp(zhat) if data.log else zhat


def naive_forecast(y: np.ndarray, origins: np.ndarray, horizon: int) -> np.ndarray:
    return np.repeat(y[origins, None], horizon, axis=1)


def drift_forecast(z: np.ndarray, origins: np.ndarray, horizon: int, split: Split, log: bool) -> np.ndarray:
    """The naive forecast plus the training part's mean change per step (a random walk with drift)."""
    drift = float(np.diff(z[: split.train_end]).mean())
    zhat = z[origins, None] + drift * np.arange(1, horizon + 1)
    return np.exp(zhat) if log else zhat


def seasonal_naive_forecast(y: np.ndarray, origins: np.ndarray, horizon: int, season: int) -> np.ndarray:
    h = np.arange(1, horizon + 1)
    return y[origins[:, None] + h - season * np.ceil(h / season).astype(int)]


def metrics(forecast: np.ndarray, truth: np.ndarray, observed: np.ndarray, mase_scale: float) -> dict[str, float]:
    """MAE, RMSE and MASE over the observed targets (NaN where there are none); MASE also at the first and last horizon."""
    error = np.abs(forecast - truth)

    def mean(values, mask):
        return float(values[mask].mean()) if mask.any() else math.nan

    mae = mean(error, observed)
    return {
        "MAE": mae,
        "RMSE": math.sqrt(mean(error**2, observed)),
        "MASE": mae / mase_scale,
        "MASE h=1": mean(error[:, 0], observed[:, 0]) / mase_scale,
        f"MASE h={forecast.shape[1]}": mean(error[:, -1], observed[:, -1]) / mase_scale,
    }


def mase_scale(y: np.ndarray, observed: np.ndarray, split: Split) -> float:
    """Mean absolute one-step change over the training part, both ends observed."""
    both = observed[1 : split.train_end] & observed[: split.train_end - 1]
    return float(np.abs(np.diff(y[: split.train_end]))[both].mean())


# -- train, evaluate, predict ------------------------------------------------------------------


def title(data: DataConfig) -> str:
    return DATASETS[data.dataset].title if data.path is None else f"{data.path} ({data.column or 'value'})"


def train(config: Config, run_dir: Path, say=print) -> Report:
    data = config.data
    say(f"loading {title(data)}")
    y, observed, z, split = prepare(data)
    scale = fit_scale(z, split)
    _, x_train, t_train = make_windows(z, scale, data.window, data.horizon, 0, split.train_end)
    _, x_val, t_val = make_windows(z, scale, data.window, data.horizon, split.train_end, split.val_end)
    say(f"{split.n} steps ({int((~observed).sum())} missing, carried forward): {len(x_train)} training windows, "
        f"{len(x_val)} validation windows of {data.window} steps -> {data.horizon} ahead")  # fmt: skip

    seed_everything(config.trainer.seed)  # the model's initialisation too
    model = SequenceRegressor(ManyToOneConfig(InputConfig(feature_size=1), data.horizon, config.model.rnn, "last", config.model.dropout))
    say(f"training the {config.model.rnn.cell.upper()} forecaster")
    train_batches = TensorBatches(x_train, t_train, config.batch_size, seed=config.trainer.seed)
    common.fit(model, train_batches, TensorBatches(x_val, t_val, 512, shuffle=False), config.trainer, config.optim, run_dir)
    save_model(model, run_dir / "model.safetensors", extra={"scale": scale, "log": data.log})
    return report(config, run_dir, model, scale, y, observed, z, split)


def evaluate(config: Config, run_dir: Path, quantize: str | None = None) -> Report:
    model, extra = load_model(run_dir / "model.safetensors")
    y, observed, z, split = prepare(config.data)
    if quantize is None:
        return report(config, run_dir, model.eval(), extra["scale"], y, observed, z, split)
    with tempfile.TemporaryDirectory() as plots:  # the int8 model's plot is not kept: the run's own stays as trained
        return report(config, Path(plots), common.quantized(model, quantize), extra["scale"], y, observed, z, split)


def report(config: Config, run_dir: Path, model, scale: float, y, observed, z, split: Split) -> Report:
    data = config.data
    origins, _, targets = window_indices(data.window, data.horizon, split.val_end, split.n)
    forecasts = {
        f"{config.model.rnn.cell.upper()} forecaster": rnn_forecast(model, z, scale, origins, data),
        "naive (last value)": naive_forecast(y, origins, data.horizon),
        "naive with drift": drift_forecast(z, origins, data.horizon, split, data.log),
        f"seasonal naive (m={data.season})": seasonal_naive_forecast(y, origins, data.horizon, data.season),
    }
    scale_mase = mase_scale(y, observed, split)
    rows = {name: metrics(f, y[targets], observed[targets], scale_mase) for name, f in forecasts.items()}
    name = next(iter(rows))
    verdict = common.compare(f"The {name}", rows[name]["MASE"], {k: v["MASE"] for k, v in rows.items() if k != name}, "MASE", False)
    notes = [
        f"Test part: the last {split.n - split.val_end} of {split.n} steps, {len(origins)} forecast origins, every horizon "
        f"1..{data.horizon}; missing targets are skipped. MASE divides by {format(scale_mase, '.4g')}, the mean absolute "
        f"one-step change in the training part. The model reads {data.window} steps.",
    ]
    if data.dataset == "msft" and data.path is None:
        notes.append("The model reads and predicts log returns. Prices are close to a random walk, for which the naive "
                     "forecast is the best guess, and a rising market adds a drift; beating both would be the surprise. "
                     "The seasonal-naive row is a 5-day lag: stock prices have no weekly season. MASE scales by the "
                     "training years' price changes, smaller than the test years', so every row is above 1: compare rows.")  # fmt: skip
    plot_forecasts(run_dir / "forecast.png", y, observed, origins, targets, forecasts, data)
    return Report("forecasting", f"Forecasting: {title(data)}, {data.horizon} steps ahead", list(rows[name]), rows, verdict,
                  notes, plots=["forecast.png", "loss.png"])  # fmt: skip


def plot_forecasts(path: Path, y, observed, origins, targets, forecasts: dict[str, np.ndarray], data: DataConfig) -> None:
    """Top: every method's H-step-ahead forecast across the test part. Bottom: the RNN's paths from a few origins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7))
    span = np.arange(targets[0, 0], targets[-1, -1] + 1)
    top.plot(span, np.where(observed[span], y[span], np.nan), color="black", lw=1, label="truth")
    for (label, f), style in zip(forecasts.items(), ["-", ":", "-.", "--"]):
        top.plot(targets[:, -1], f[:, -1], style, lw=1, label=label)
    top.set_title(f"{title(data)}: forecasts {data.horizon} steps ahead over the test part")
    bottom.set_xlabel("step")
    top.legend(fontsize=8)
    tail = span[-min(len(span), 4 * max(data.season, data.horizon)) :]
    bottom.plot(tail, y[tail], color="black", lw=1, label="truth")
    name, rnn = next(iter(forecasts.items()))
    for i in range(len(origins) - 1, -1, -data.horizon):
        if targets[i, 0] < tail[0]:
            break
        bottom.plot(targets[i], rnn[i], color="tab:blue", lw=1.2, label=f"{name}, {data.horizon} steps from an origin" if i == len(origins) - 1 else None)
    bottom.set_title("the last part of the test, multi-step forecasts")
    bottom.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def predict(config: Config, run_dir: Path, text: str, loaded: tuple | None = None) -> str:
    """Forecast the next H values after the values in ``text`` (numbers separated by spaces or commas); ``loaded``: the run's ``load_model``."""
    model, extra = loaded or load_model(run_dir / "model.safetensors")
    data = config.data
    try:
        values = np.array([float(v) for v in re.split(r"[\s,;]+", text.strip()) if v], dtype=np.float64)
    except ValueError as error:
        raise DataError(f"text: expected numbers separated by spaces or commas, got {error}") from None
    if len(values) < data.window + 1 or not np.isfinite(values).all():
        raise DataError(f"text: expected at least {data.window + 1} finite values (the model reads {data.window} changes), got {len(values)}")
    if data.log and (values <= 0).any():
        raise DataError(f"text: expected positive values (this model works on logs), got {values.min()}")
    z = np.log(values) if data.log else values
    forecast = rnn_forecast(model.eval(), z, extra["scale"], np.array([len(z) - 1]), data)[0]
    return f"next {data.horizon} values: " + ", ".join(f"{v:.6g}" for v in forecast)
