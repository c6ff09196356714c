"""A model-agnostic trainer: full and truncated BPTT, clipping, evaluation, exact resume.

Example::

    model = MyModel()                        # outputs, state = model(inputs, state)
                                             # loss = model.loss(outputs, targets)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    config = TrainerConfig(max_epochs=10, clip_grad_norm=1.0, tbptt_k1=50, run_dir="runs/lm")
    trainer = Trainer(model, optimizer, config)
    trainer.fit(StreamBatches(tokens, num_streams=32), val=StreamBatches(val_tokens, 8))
    # after a crash: Trainer(model, optimizer, config).resume("runs/lm/checkpoint.safetensors").fit(...)

The trainer knows nothing about any one model. The model supplies its forward
``(inputs, state) -> (outputs, state)`` and its ``loss(outputs, targets)``; an
optional ``metrics(outputs, targets) -> dict`` adds evaluation metrics.
Callbacks add the rest: progress, CSV logs, plots, early stopping, diagnostics.
Truncated BPTT is described in docs/design/truncated-bptt.md.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import Tensor

from rnnkit import errors
from rnnkit.training import state_io
from rnnkit.training.callbacks import Callback, default_callbacks
from rnnkit.training.distributed import DistributedContext

log = logging.getLogger("rnnkit.training")


@dataclass
class TrainerConfig:
    """Everything the trainer does, as one typed config (see :mod:`rnnkit.config`)."""

    max_epochs: int = 1
    max_steps: int | None = None  # updates attempted, skipped ones included
    seed: int = 0
    # -- gradients
    clip_grad_norm: float | None = None
    clip_grad_value: float | None = None
    on_nonfinite: Literal["stop", "skip"] = "stop"
    max_consecutive_skips: int = 10  # with "skip": a run this far gone has diverged; stop it
    # -- truncated BPTT: update every k1 steps, backpropagate k2 steps (k2 defaults to k1)
    tbptt_k1: int | None = None
    tbptt_k2: int | None = None
    time_dim: int = 0
    # -- evaluation, scheduling, precision
    eval_every: int | None = None  # steps; None evaluates at the end of every epoch
    early_stopping_patience: int | None = None  # evaluations without improvement
    early_stopping_min_delta: float = 0.0
    # The validation number that picks the best weights (best.safetensors) and drives early stopping: "loss", or one of
    # the model's metrics ("accuracy"), with monitor_mode "max" for a number where higher is better.
    monitor: str = "loss"
    monitor_mode: Literal["min", "max"] = "min"
    scheduler_interval: Literal["step", "epoch"] = "step"
    bf16: bool = False
    # -- records
    run_dir: str | None = None
    checkpoint_every: int | None = None  # steps; a checkpoint is also written at the end
    progress: bool = True
    tensorboard: bool = False  # TensorBoard logs in run_dir/tensorboard (the tensorboard extra); see rnnkit.training.tensorboard
    tensorboard_every: int = 100  # steps between its histograms and gradient-flow measurements

    def __post_init__(self) -> None:
        for name in ("max_epochs", "max_steps", "max_consecutive_skips", "tbptt_k1", "tbptt_k2", "eval_every", "early_stopping_patience", "checkpoint_every",
                     "tensorboard_every"):  # fmt: skip
            value = getattr(self, name)
            if value is not None:
                errors.check_positive_int(name, value)
        for name in ("clip_grad_norm", "clip_grad_value"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise errors.fail(name, "a positive number or None", value)
        if self.tbptt_k2 is not None and self.tbptt_k1 is None:
            raise errors.fail("tbptt_k2", "None unless tbptt_k1 is set", self.tbptt_k2)
        for name, allowed in (("on_nonfinite", ("stop", "skip")), ("scheduler_interval", ("step", "epoch")), ("monitor_mode", ("min", "max"))):
            if getattr(self, name) not in allowed:  # the config system checks these; a TrainerConfig built in Python must too
                raise errors.fail(name, " or ".join(map(repr, allowed)), repr(getattr(self, name)))
        if not isinstance(self.monitor, str) or not self.monitor:
            raise errors.fail("monitor", "the name of a validation number, such as 'loss' or 'accuracy'", repr(self.monitor))


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or Inf loss or gradient (with ``on_nonfinite="stop"``)."""


@dataclass
class Position:
    """Where training stands; saved in checkpoints so that resume continues exactly here."""

    step: int = 0
    epoch: int = 0
    batch: int = 0  # next batch of the epoch to train on
    window: int = 0  # next TBPTT window start within that batch
    skipped_steps: int = 0
    consecutive_skips: int = 0
    best_val: float | None = None  # the best monitored validation number so far, lower is better (see Trainer.monitored)
    carry: object = None  # TBPTT state at `window`, detached
    lagged: object = None  # TBPTT state k2 - k1 steps before `window`, when k2 > k1


class Trainer:
    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, config: TrainerConfig | None = None, *,
                 scheduler=None, callbacks: list[Callback] = (), distributed: DistributedContext | None = None) -> None:  # fmt: skip
        if not callable(getattr(model, "loss", None)):
            raise errors.fail("model", "a module with a loss(outputs, targets) method", type(model).__name__)
        self.model = model
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.config = config or TrainerConfig()
        self.distributed = distributed or DistributedContext()
        self.net = self.distributed.wrap(model)  # DistributedDataParallel when world_size > 1
        self.callbacks = default_callbacks(self.config, self.distributed.is_main) + list(callbacks or ())
        self.position = Position()
        self.should_stop = False
        self._resumed = False

    # -- the loop ---------------------------------------------------------------

    def fit(self, train, val=None) -> Position:
        """Train until ``max_epochs``, ``max_steps`` or early stopping; return the final position."""
        cfg, pos = self.config, self.position
        if not self._resumed:
            seed_everything(cfg.seed + self.distributed.rank)
        if cfg.max_steps is not None and pos.step + pos.skipped_steps >= cfg.max_steps:
            self.should_stop = True  # resumed from a run that had spent its budget: train no further
        self._emit("on_fit_start", train)
        while pos.epoch < cfg.max_epochs and not self.should_stop:
            self.model.train()
            for index, (inputs, targets) in enumerate(train.batches(pos.epoch)):
                if index < pos.batch:
                    continue  # resumed: this batch was trained on before the checkpoint
                self._train_on_batch(inputs, targets, val)
                if self.should_stop:
                    break
            if self.should_stop:
                break
            if cfg.eval_every is None and val is not None:
                self._evaluate_and_record(val)
            if self.scheduler is not None and cfg.scheduler_interval == "epoch":
                self.scheduler.step()
            pos.epoch, pos.batch, pos.window = pos.epoch + 1, 0, 0
            self._emit("on_epoch_end")
        if cfg.run_dir is not None and self.distributed.is_main:
            self._checkpoint()
        self._emit("on_fit_end")
        return pos

    def _train_on_batch(self, inputs, targets, val) -> None:
        cfg, pos = self.config, self.position
        length = _time_length(inputs, cfg.time_dim) if cfg.tbptt_k1 else 1
        k1 = cfg.tbptt_k1 or 1
        for start in range(pos.window, length, k1):
            if self.should_stop:
                return
            end = min(start + k1, length)
            started = time.perf_counter()
            record = self._update(lambda: self._window_loss(inputs, targets, start, end, length))
            pos.window = end
            if pos.window >= length:
                pos.batch, pos.window, pos.carry, pos.lagged = pos.batch + 1, 0, None, None
            if record is None:
                if cfg.max_steps is not None and pos.step + pos.skipped_steps >= cfg.max_steps:
                    self.should_stop = True  # skipped steps count towards the budget, or a diverged run never ends
                continue
            record.update(step=pos.step, epoch=pos.epoch, seconds=time.perf_counter() - started, items=_count(targets, cfg, end - start))
            self._emit("on_step_end", record)
            if val is not None and cfg.eval_every and pos.step % cfg.eval_every == 0:
                self._evaluate_and_record(val)
            if cfg.checkpoint_every and cfg.run_dir and pos.step % cfg.checkpoint_every == 0 and self.distributed.is_main:
                self._checkpoint()
            if cfg.max_steps is not None and pos.step + pos.skipped_steps >= cfg.max_steps:
                self.should_stop = True

    def _update(self, compute_loss) -> dict | None:
        """One optimizer step. Returns the step's record, or None if a non-finite step was skipped."""
        cfg, pos = self.config, self.position
        self.optimizer.zero_grad(set_to_none=True)
        autocast = torch.autocast(device_type=_device_type(self.model), dtype=torch.bfloat16) if cfg.bf16 else contextlib.nullcontext()
        with autocast:
            loss, carry, lagged = compute_loss()
        if not torch.isfinite(loss):
            return self._non_finite("loss", loss.item())
        loss.backward()
        parameters = [p for p in self.model.parameters() if p.grad is not None]
        if cfg.clip_grad_value is not None:
            torch.nn.utils.clip_grad_value_(parameters, cfg.clip_grad_value)
        grad_norm = torch.nn.utils.get_total_norm([p.grad for p in parameters]) if parameters else torch.tensor(0.0)
        if not torch.isfinite(grad_norm):
            return self._non_finite("gradient norm", grad_norm.item())
        if cfg.clip_grad_norm is not None:
            torch.nn.utils.clip_grads_with_norm_(parameters, cfg.clip_grad_norm, grad_norm)
        self.optimizer.step()
        if self.scheduler is not None and cfg.scheduler_interval == "step":
            self.scheduler.step()
        pos.step += 1
        pos.consecutive_skips = 0
        pos.carry, pos.lagged = carry, lagged
        return {"split": "train", "loss": self.distributed.mean(loss.detach().float()), "grad_norm": grad_norm.item(),
                "lr": self.optimizer.param_groups[0]["lr"]}  # fmt: skip

    def _window_loss(self, inputs, targets, start: int, end: int, length: int):
        """Loss of window [start, end) under truncated BPTT, and the states to carry on.

        Without TBPTT the window is the whole batch. With it, the gradient of
        the update at ``end`` reaches back k2 steps. When k2 > k1 the pass
        starts at ``end - k2`` from the state saved there by the previous
        window (``lagged``), and saves the state at the next window's
        ``end - k2`` in turn. When k2 < k1 the state is detached every k2 steps.
        """
        cfg, pos = self.config, self.position
        if not cfg.tbptt_k1:
            outputs, _ = self.net(inputs, None)
            return self.model.loss(outputs, targets), None, None
        k1, k2 = cfg.tbptt_k1, cfg.tbptt_k2 or cfg.tbptt_k1
        overlap = k2 > k1
        begin = max(0, end - k2) if overlap else start
        state = (pos.lagged if begin > 0 else None) if overlap else pos.carry
        next_cut = min(end + k1, length) - k2 if overlap else None
        detach_at = set(range(start + k2, end, k2)) if k2 < end - start else set()
        points = sorted({begin, start, end} | detach_at | ({next_cut} if overlap and begin < next_cut < end else set()))
        lagged = state_io.detach(state) if overlap and next_cut is not None and next_cut <= begin else None
        total = 0.0
        for a, b in zip(points, points[1:]):
            if a in detach_at:
                state = state_io.detach(state)
            outputs, state = self.net(_time_slice(inputs, a, b, cfg.time_dim), state)
            if a >= start:
                total = total + self.model.loss(outputs, _time_slice(targets, a, b, cfg.time_dim)) * (b - a)
            if b == next_cut:
                lagged = state_io.detach(state)
        return total / (end - start), state_io.detach(state), lagged

    def _non_finite(self, what: str, value: float) -> None:
        pos = self.position
        where = f"step {pos.step + 1} (epoch {pos.epoch}, batch {pos.batch}, window start {pos.window})"
        message = f"{what}: expected a finite value, got {value} at {where}"
        if self.config.on_nonfinite == "stop":
            self.should_stop = True
            raise NonFiniteLossError(message + "; training stopped, no checkpoint was written after it")
        self.optimizer.zero_grad(set_to_none=True)
        pos.skipped_steps += 1
        pos.consecutive_skips += 1
        if pos.consecutive_skips > self.config.max_consecutive_skips:
            self.should_stop = True
            raise NonFiniteLossError(f"{message}; {pos.consecutive_skips} non-finite steps in a row (max_consecutive_skips="
                                     f"{self.config.max_consecutive_skips}): training has diverged and was stopped")  # fmt: skip
        pos.carry = pos.lagged = None  # a state computed on the way to NaN is not worth carrying
        log.warning("%s; step skipped (on_nonfinite='skip')", message)
        return None

    # -- evaluation -----------------------------------------------------------

    @torch.no_grad()
    def evaluate(self, data) -> dict[str, float]:
        """Mean loss (and the model's metrics) over every batch of ``data``, weighted by target count."""
        was_training = self.model.training
        self.model.eval()
        sums: dict[str, float] = {}
        weight = 0.0
        for inputs, targets in data.batches(0):
            outputs, _ = self.model(inputs, None)
            n = float(targets.numel()) if isinstance(targets, Tensor) else float(len(targets))
            values = {"loss": self.model.loss(outputs, targets)}
            if callable(getattr(self.model, "metrics", None)):
                values.update(self.model.metrics(outputs, targets))
            for key, value in values.items():
                sums[key] = sums.get(key, 0.0) + float(value) * n
            weight += n
        self.model.train(was_training)
        totals = self.distributed.sum(torch.tensor([*sums.values(), weight], dtype=torch.float64))
        return {key: totals[i].item() / max(totals[-1].item(), 1.0) for i, key in enumerate(sums)}

    def monitored(self, record: dict[str, float]) -> float:
        """The number of a validation ``record`` that ``config.monitor`` names, negated under ``monitor_mode="max"``: lower is better."""
        if self.config.monitor not in record:
            numbers = sorted(set(record) - {"split", "step", "epoch"})
            raise errors.fail("monitor", f"a number of the validation record ({', '.join(numbers)})", repr(self.config.monitor))
        value = record[self.config.monitor]
        return -value if self.config.monitor_mode == "max" else value

    def _evaluate_and_record(self, val) -> None:
        pos = self.position
        record = {"split": "val", "step": pos.step, "epoch": pos.epoch, **self.evaluate(val)}
        score = self.monitored(record)
        if pos.best_val is None or score < pos.best_val:
            pos.best_val = score
            if self.config.run_dir and self.distributed.is_main:
                self.save(Path(self.config.run_dir) / "best.safetensors")
        self._emit("on_evaluate_end", record)

    # -- checkpoints ----------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write model, optimizer, scheduler, RNG, position and callback state to one checkpoint."""
        return state_io.save_training_state(self, path)

    def _checkpoint(self) -> None:
        """Write ``run_dir/checkpoint.safetensors`` (the resumable state), then tell the callbacks."""
        path = self.save(Path(self.config.run_dir) / "checkpoint.safetensors")
        self._emit("on_checkpoint", path)

    def resume(self, path: str | Path) -> Trainer:
        """Restore everything :meth:`save` wrote; the next :meth:`fit` continues where it stopped."""
        state_io.load_training_state(self, path)
        self._resumed = True
        return self

    def _emit(self, event: str, *args) -> None:
        for callback in self.callbacks:
            getattr(callback, event)(self, *args)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's generators (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _time_length(inputs, time_dim: int) -> int:
    first = inputs[0] if isinstance(inputs, (tuple, list)) else inputs
    return first.shape[time_dim]


def _time_slice(x, a: int, b: int, time_dim: int):
    if isinstance(x, (tuple, list)):
        return type(x)(_time_slice(t, a, b, time_dim) for t in x)
    return x.narrow(time_dim, a, b - a)


def _count(targets, cfg: TrainerConfig, steps: int) -> int:
    """Items in one update (tokens for TBPTT windows, examples otherwise), for throughput."""
    if not isinstance(targets, Tensor):
        return len(targets)
    if cfg.tbptt_k1:
        return math.prod(targets.shape) // targets.shape[cfg.time_dim] * steps
    return targets.shape[0]


def _device_type(model: torch.nn.Module) -> str:
    parameter = next(model.parameters(), None)
    return parameter.device.type if parameter is not None else "cpu"


__all__ = ["NonFiniteLossError", "Position", "Trainer", "TrainerConfig", "seed_everything"]
