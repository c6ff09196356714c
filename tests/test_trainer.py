"""The trainer: learning, determinism, truncated BPTT against hand-written references, clipping, stops."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from rnnkit.config import ConfigError, apply_overrides
from rnnkit.data import StreamBatches, TensorBatches
from rnnkit.training import Callback, NonFiniteLossError, ProgressBar, Trainer, TrainerConfig
from tests.support.models import SignClassifier, TinyLM, periodic_tokens, sign_data


class Recorder(Callback):
    """Keeps every step's record, and a copy of the gradients as they were applied."""

    def __init__(self, keep_grads: bool = False) -> None:
        self.records, self.evals, self.grads, self.keep_grads = [], [], [], keep_grads

    def on_step_end(self, trainer, record):
        self.records.append(record)
        if self.keep_grads:
            self.grads.append({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    def on_evaluate_end(self, trainer, record):
        self.evals.append(record)


def _fit(model, config, train, val=None, lr=1e-2, optimizer=torch.optim.Adam, **kwargs):
    recorder = Recorder(keep_grads=kwargs.pop("keep_grads", False))
    trainer = Trainer(model, optimizer(model.parameters(), lr=lr), config, callbacks=[*kwargs.pop("callbacks", ()), recorder], **kwargs)
    trainer.fit(train, val)
    return trainer, recorder


def test_many_to_one_classifier_learns():
    torch.manual_seed(0)
    x, y = sign_data(512)
    xv, yv = sign_data(256, seed=1)
    trainer, rec = _fit(SignClassifier(), TrainerConfig(max_epochs=6, progress=False), TensorBatches(x, y, 32), TensorBatches(xv, yv, 64, shuffle=False))
    assert rec.evals[-1]["accuracy"] >= 0.9  # chance is 0.5
    assert rec.evals[-1]["loss"] < 0.5 * rec.evals[0]["loss"] or rec.evals[0]["loss"] < 0.3


def test_language_model_learns_with_truncated_bptt():
    torch.manual_seed(0)
    config = TrainerConfig(max_epochs=3, tbptt_k1=20, clip_grad_norm=1.0, progress=False)
    trainer, rec = _fit(TinyLM(), config, StreamBatches(periodic_tokens(4000), 8), StreamBatches(periodic_tokens(800, seed=1), 4))
    assert len(rec.records) == 3 * math.ceil((4000 // 8 - 1) / 20)
    assert rec.evals[-1]["accuracy"] > 0.8  # the pattern is 90% predictable; a unigram guess gets ~0.15


@pytest.mark.parametrize("config", [TrainerConfig(max_epochs=2, progress=False), TrainerConfig(max_epochs=2, tbptt_k1=7, tbptt_k2=10, progress=False)], ids=["batches", "tbptt"])
def test_same_seed_gives_bitwise_identical_losses(config):
    def run():
        torch.manual_seed(123)  # model init
        model = TinyLM(dropout=0.3) if config.tbptt_k1 else SignClassifier()
        data = StreamBatches(periodic_tokens(600), 4) if config.tbptt_k1 else TensorBatches(*sign_data(128), 16)
        return [r["loss"] for r in _fit(model, config, data)[1].records]

    first, second = run(), run()
    assert first == second and len(first) > 5


def _reference_window_grads(model, tokens, k1, k2, steps):
    """Hand-written TBPTT(k1, k2) with fixed weights: the gradient of window j's loss, cut k2 steps back.

    With lr = 0 every forward pass sees the same weights, so the trainer's
    carried and rebuilt states are exactly the states of one long run.
    """
    streams = StreamBatches(tokens, 2).streams
    inputs, targets = streams[:-1], streams[1:]
    grads = []
    for j in range(steps):
        start, end = j * k1, min((j + 1) * k1, len(inputs))
        cut = max(0, end - k2) if k2 >= k1 else None
        state, total = None, 0.0
        for t in range(end):
            if (cut is not None and t == cut) or (cut is None and t > start and (t - start) % k2 == 0):
                state = None if state is None else tuple(s.detach() for s in state)
            if cut is not None and t < cut or cut is None and t < start:
                with torch.no_grad():
                    _, state = model(inputs[t : t + 1], state)
                continue
            out, state = model(inputs[t : t + 1], state)
            if t >= start:
                total = total + model.loss(out, targets[t : t + 1])
        model.zero_grad()
        (total / (end - start)).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    return grads


@pytest.mark.parametrize("k1,k2", [(5, 5), (4, 9), (3, 13), (6, 4)])
def test_truncated_bptt_gradients_match_reference(k1, k2):
    torch.manual_seed(1)
    model = TinyLM(hidden=6).double()
    tokens = periodic_tokens(2 * 31)
    config = TrainerConfig(max_epochs=1, tbptt_k1=k1, tbptt_k2=k2, progress=False)
    _, rec = _fit(model, config, StreamBatches(tokens, 2), lr=0.0, optimizer=torch.optim.SGD, keep_grads=True)
    expected = _reference_window_grads(model, tokens, k1, k2, steps=len(rec.grads))
    assert len(rec.grads) == math.ceil(30 / k1)
    for j, (got, want) in enumerate(zip(rec.grads, expected)):
        for name in want:
            torch.testing.assert_close(got[name], want[name], atol=1e-10, rtol=1e-9, msg=lambda m: f"window {j}, {name}: {m}")


def test_clip_by_global_norm():
    torch.manual_seed(2)
    config = TrainerConfig(max_epochs=1, clip_grad_norm=0.05, progress=False)
    _, rec = _fit(SignClassifier(), config, TensorBatches(*sign_data(128), 16), keep_grads=True)
    assert max(r["grad_norm"] for r in rec.records) > 0.05  # clipping had work to do
    for grads in rec.grads:
        assert torch.linalg.vector_norm(torch.stack([g.norm() for g in grads.values()])) <= 0.05 * (1 + 1e-5)


def test_clip_by_value():
    torch.manual_seed(2)
    config = TrainerConfig(max_epochs=1, clip_grad_value=1e-3, progress=False)
    _, rec = _fit(SignClassifier(), config, TensorBatches(*sign_data(128), 16), keep_grads=True)
    assert all(g.abs().max() <= 1e-3 for grads in rec.grads for g in grads.values())
    assert any(g.abs().max() == pytest.approx(1e-3) for grads in rec.grads for g in grads.values())


def test_early_stopping_after_patience():
    torch.manual_seed(3)
    data = TensorBatches(*sign_data(64), 16)
    config = TrainerConfig(max_epochs=50, early_stopping_patience=2, progress=False)
    trainer, rec = _fit(SignClassifier(), config, data, data, lr=0.0)  # lr 0: the val loss never improves
    assert len(rec.evals) == 3
    assert trainer.position.epoch == 3  # three epochs completed, each ending in one evaluation


class Scripted(Callback):
    """Replaces each validation record's loss and accuracy with the next of a script, before the trainer's own reading."""

    def __init__(self, script):
        self.script = iter(script)

    def on_fit_start(self, trainer, train):
        evaluate = trainer.evaluate

        def scripted(data):
            loss, accuracy = next(self.script)
            return {**evaluate(data), "loss": loss, "accuracy": accuracy}

        trainer.evaluate = scripted


@pytest.mark.parametrize("monitor,mode,best,stopped_after", [("loss", "min", 0.4, 4), ("accuracy", "max", 0.9, 5)])
def test_the_monitored_number_picks_the_best_checkpoint_and_drives_early_stopping(tmp_path, monitor, mode, best, stopped_after):
    torch.manual_seed(3)
    data = TensorBatches(*sign_data(64), 16)
    # Loss is best at evaluation 2 and accuracy at evaluation 3: loss and accuracy disagree, as they do when a model grows overconfident.
    script = [(0.6, 0.6), (0.4, 0.7), (0.5, 0.9), (0.7, 0.8), (0.8, 0.85), (0.9, 0.85), (1.0, 0.8)]
    config = TrainerConfig(max_epochs=7, early_stopping_patience=2, monitor=monitor, monitor_mode=mode, run_dir=str(tmp_path), progress=False)
    trainer, rec = _fit(SignClassifier(), config, data, data, callbacks=[Scripted(script)])
    assert len(rec.evals) == stopped_after
    assert trainer.position.best_val == (-best if mode == "max" else best)
    from rnnkit.training.checkpoint import load_checkpoint

    _, metadata = load_checkpoint(tmp_path / "best.safetensors")
    assert metadata["position"]["best_val"] == trainer.position.best_val


def test_an_unknown_monitor_is_refused_with_the_record_s_keys():
    data = TensorBatches(*sign_data(64), 16)
    with pytest.raises(ValueError, match=r"monitor: expected a number of the validation record \(accuracy, loss\), got 'acc'"):
        _fit(SignClassifier(), TrainerConfig(max_epochs=1, monitor="acc", progress=False), data, data)
    with pytest.raises(ConfigError, match="monitor_mode"):
        apply_overrides(TrainerConfig(), ["monitor_mode=maximum"])
    with pytest.raises(ValueError, match=r"monitor_mode: expected 'min' or 'max', got 'Max'"):
        TrainerConfig(monitor_mode="Max")  # built in Python, past the config system's check
    with pytest.raises(ValueError, match=r"monitor: expected the name of a validation number, such as 'loss' or 'accuracy', got ''"):
        TrainerConfig(monitor="")


def test_max_steps_and_step_scheduler():
    torch.manual_seed(4)
    model = SignClassifier()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=2, gamma=0.5)
    rec = Recorder()
    Trainer(model, optimizer, TrainerConfig(max_epochs=10, max_steps=5, progress=False), scheduler=scheduler, callbacks=[rec]).fit(TensorBatches(*sign_data(64), 16))
    assert [r["lr"] for r in rec.records] == [0.1, 0.05, 0.05, 0.025, 0.025]


class ExplodesAt(nn.Module):
    """A model whose loss turns NaN on a given step."""

    def __init__(self, bad_step: int) -> None:
        super().__init__()
        self.inner, self.bad_step, self.calls = SignClassifier(), bad_step, 0

    def forward(self, x, state=None):
        self.calls += 1 if self.training else 0
        return self.inner(x)

    def loss(self, logits, targets):
        loss = self.inner.loss(logits, targets)
        return loss * float("nan") if self.calls == self.bad_step else loss


def test_non_finite_loss_stops_naming_step_and_batch(tmp_path):
    model = ExplodesAt(bad_step=3)
    config = TrainerConfig(max_epochs=1, run_dir=str(tmp_path), checkpoint_every=1, progress=False)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), config)
    with pytest.raises(NonFiniteLossError, match=r"loss: expected a finite value, got nan at step 3 \(epoch 0, batch 2, window start 0\)"):
        trainer.fit(TensorBatches(*sign_data(128), 16, shuffle=False))
    from rnnkit.training import load_checkpoint

    tensors, metadata = load_checkpoint(tmp_path / "checkpoint.safetensors")
    assert metadata["position"]["step"] == 2
    assert all(torch.isfinite(t).all() for k, t in tensors.items() if k.startswith("model."))


def test_non_finite_loss_can_skip_the_step(caplog):
    model = ExplodesAt(bad_step=3)
    config = TrainerConfig(max_epochs=1, on_nonfinite="skip", progress=False)
    rec = Recorder()
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), config, callbacks=[rec])
    trainer.fit(TensorBatches(*sign_data(128), 16, shuffle=False))
    assert trainer.position.skipped_steps == 1
    assert len(rec.records) == 7 and all(math.isfinite(r["loss"]) for r in rec.records)
    assert "at step 3 (epoch 0, batch 2" in caplog.text
    assert all(torch.isfinite(p).all() for p in model.parameters())


class AlwaysNaN(ExplodesAt):
    def loss(self, logits, targets):
        return self.inner.loss(logits, targets) * float("nan")


def test_skipping_stops_when_training_has_diverged():
    model = AlwaysNaN(bad_step=0)
    config = TrainerConfig(max_epochs=100, on_nonfinite="skip", max_consecutive_skips=3, progress=False)
    trainer = Trainer(model, torch.optim.SGD(model.parameters(), lr=0.1), config)
    with pytest.raises(NonFiniteLossError, match="4 non-finite steps in a row \\(max_consecutive_skips=3\\): training has diverged"):
        trainer.fit(TensorBatches(*sign_data(128), 16))
    assert trainer.position.skipped_steps == 4 and trainer.position.step == 0


def test_bf16_autocast_trains_and_keeps_float32_weights():
    torch.manual_seed(5)
    model = TinyLM()
    config = TrainerConfig(max_epochs=2, tbptt_k1=16, bf16=True, progress=False)
    _, rec = _fit(model, config, StreamBatches(periodic_tokens(2000), 8))
    assert all(p.dtype == torch.float32 for p in model.parameters())
    losses = [r["loss"] for r in rec.records]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-5:]) / 5 < 0.7 * sum(losses[:5]) / 5


class FakeTerminal(io.StringIO):
    def isatty(self):
        return True


@pytest.mark.parametrize("stream,shows", [(io.StringIO(), False), (FakeTerminal(), True)], ids=["pipe", "terminal"])
def test_progress_bar_only_on_a_terminal(stream, shows):
    torch.manual_seed(6)
    data = TensorBatches(*sign_data(64), 16)
    model = SignClassifier()
    Trainer(model, torch.optim.Adam(model.parameters()), TrainerConfig(max_epochs=1, progress=False), callbacks=[ProgressBar(stream)]).fit(data, data)
    text = stream.getvalue()
    assert ("loss=" in text and "4/4" in text and "val loss" in text) == shows
    assert (text == "") == (not shows)


def test_run_dir_gets_metrics_plot_and_checkpoints(tmp_path):
    torch.manual_seed(7)
    data = TensorBatches(*sign_data(64), 16)
    _fit(SignClassifier(), TrainerConfig(max_epochs=2, run_dir=str(tmp_path), progress=False), data, data)
    from rnnkit.training.callbacks import read_metrics

    rows = read_metrics(tmp_path / "metrics.csv")
    assert [r["split"] for r in rows].count("train") == 8 and [r["split"] for r in rows].count("val") == 2
    assert (tmp_path / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "checkpoint.safetensors").exists() and (tmp_path / "best.safetensors").exists()


@pytest.mark.parametrize(
    "kwargs,message",
    [
        ({"max_epochs": 0}, "max_epochs: expected a positive int, got 0"),
        ({"tbptt_k1": -3}, "tbptt_k1: expected a positive int, got -3"),
        ({"tbptt_k2": 5}, "tbptt_k2: expected None unless tbptt_k1 is set, got 5"),
        ({"clip_grad_norm": 0.0}, "clip_grad_norm: expected a positive number or None, got 0.0"),
    ],
)
def test_config_errors(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        TrainerConfig(**kwargs)


def test_config_overrides_fail_loudly_on_unknown_keys_and_types():
    config = apply_overrides(TrainerConfig(), ["tbptt_k1=35", "clip_grad_norm=0.5", "on_nonfinite=skip"])
    assert (config.tbptt_k1, config.clip_grad_norm, config.on_nonfinite) == (35, 0.5, "skip")
    with pytest.raises(ConfigError, match="clip_norm: unknown key for TrainerConfig"):
        apply_overrides(TrainerConfig(), ["clip_norm=1"])
    with pytest.raises(ConfigError, match="max_epochs: expected int, got 'ten'"):
        apply_overrides(TrainerConfig(), ["max_epochs=ten"])
    with pytest.raises(ConfigError, match=r"on_nonfinite: expected one of \['stop', 'skip'\], got 'ignore'"):
        apply_overrides(TrainerConfig(), ["on_nonfinite=ignore"])


def test_model_without_loss_is_refused():
    with pytest.raises(ValueError, match="model: expected a module with a loss\\(outputs, targets\\) method, got Linear"):
        Trainer(nn.Linear(2, 2), torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=0.1))
