"""TensorBoard logs: off by default; on, the scalars, gradient flow and histograms land in run_dir/tensorboard, and training is unchanged."""

from __future__ import annotations

import pytest
import torch

from rnnkit.data import StreamBatches, TensorBatches
from rnnkit.models import LanguageModel, LanguageModelConfig, RecurrentConfig
from rnnkit.training import Trainer, TrainerConfig
from rnnkit.training.callbacks import default_callbacks, read_metrics

event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard extra is not installed (pip install 'rnnkit[tensorboard]')")  # fmt: skip


def train(run_dir, tensorboard: bool, **config) -> list[float]:
    torch.manual_seed(0)
    model = LanguageModel(LanguageModelConfig(vocab_size=11, embedding_dim=8, rnn=RecurrentConfig(cell="gru", hidden_size=13)))
    tokens = torch.randint(0, 11, (2000,), generator=torch.Generator().manual_seed(0))
    cfg = TrainerConfig(max_steps=6, tbptt_k1=17, time_dim=1, run_dir=str(run_dir), progress=False, tensorboard=tensorboard,
                        tensorboard_every=3, eval_every=3, **config)  # fmt: skip
    Trainer(model, torch.optim.SGD(model.parameters(), lr=0.3), cfg).fit(StreamBatches(tokens, 8, batch_first=True),
                                                                       val=StreamBatches(tokens[:500], 4, batch_first=True))  # fmt: skip
    return [float(r["loss"]) for r in read_metrics(run_dir / "metrics.csv")]


def test_off_by_default_and_needs_a_run_dir():
    assert TrainerConfig().tensorboard is False
    assert not any(type(c).__name__ == "TensorBoardLogger" for c in default_callbacks(TrainerConfig(run_dir="x"), True))
    with pytest.raises(ValueError, match=r"tensorboard: expected False unless run_dir is set"):
        default_callbacks(TrainerConfig(tensorboard=True), True)
    with pytest.raises(ValueError, match=r"tensorboard_every: expected a positive int, got 0"):
        TrainerConfig(tensorboard_every=0)


def test_logs_scalars_gradient_flow_and_histograms_and_leaves_training_unchanged(tmp_path):
    with_logs = train(tmp_path / "on", tensorboard=True)
    assert with_logs == train(tmp_path / "off", tensorboard=False)  # bitwise: the measurements fork the RNG and touch no .grad
    assert not (tmp_path / "off" / "tensorboard").exists()
    events = event_accumulator.EventAccumulator(str(tmp_path / "on" / "tensorboard"), size_guidance={"histograms": 0, "scalars": 0})
    events.Reload()
    scalars = events.Tags()["scalars"]
    for tag in ("train/loss", "train/grad_norm", "train/lr", "val/loss", "gradient_flow/rnn.l0", "gradient_flow/probe_loss",
                "param_grad_norm/rnn.l0", "param_grad_norm/head"):  # fmt: skip
        assert tag in scalars, (tag, scalars)
    train_losses = [float(r["loss"]) for r in read_metrics(tmp_path / "on" / "metrics.csv") if r["split"] == "train"]
    logged = events.Scalars("train/loss")
    assert [e.step for e in logged] == list(range(1, 7)) and [e.value for e in logged] == pytest.approx(train_losses)
    assert [e.step for e in events.Scalars("gradient_flow/rnn.l0")] == [0, 3, 6]  # before any update, then every 3 steps
    assert all(e.value > 0 for e in events.Scalars("gradient_flow/rnn.l0"))
    histograms = events.Tags()["histograms"]
    assert "weights/rnn.weight_hh_l0" in histograms and "grads/rnn.weight_hh_l0" in histograms
    assert [e.step for e in events.Histograms("grads/rnn.weight_hh_l0")] == [3, 6]


def test_a_task_turns_it_on_from_the_command_line_override(tmp_path):
    from rnnkit import tasks
    from tests.test_tasks_forecasting import write_series

    write_series(tmp_path / "s.csv")
    task = tasks.get("co2")
    overrides = ["data.season=12", "data.window=24", "data.horizon=6", "trainer.max_epochs=1", "model.rnn.hidden_size=8",
                 "trainer.progress=False", "trainer.tensorboard=true"]  # fmt: skip
    task.train(task.config("fast", overrides, data=str(tmp_path / "s.csv")), tmp_path / "run", say=lambda message: None)
    assert list((tmp_path / "run" / "tensorboard").glob("events.out.tfevents.*"))
