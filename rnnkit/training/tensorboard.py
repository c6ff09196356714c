"""TensorBoard logs of a training run: an optional callback (``pip install 'rnnkit[tensorboard]'``).

Off by default; ``TrainerConfig(tensorboard=True)`` (``trainer.tensorboard=true``
on the command line) adds it, writing into ``<run_dir>/tensorboard``, and
``tensorboard --logdir RUN_DIR`` shows it. It writes, by the trainer's step:

* every step: ``train/loss``, ``train/grad_norm`` (before clipping), ``train/lr``;
* every evaluation: ``val/<metric>`` for the loss and each of the model's metrics;
* every ``tensorboard_every`` steps, and at step 0 before any update: the
  gradient-flow measurement of :mod:`rnnkit.training.diagnostics` on a fixed
  probe batch (the first training batch; with truncated BPTT its first window):
  ``gradient_flow/<layer>`` is the decay ratio ``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖`` of each
  recurrent layer and direction (below 1 the gradient vanishes going back in
  time, above 1 it explodes) and ``param_grad_norm/<group>`` each parameter
  group's gradient norm; and the histograms ``weights/<name>`` and
  ``grads/<name>`` of every parameter and its gradient (after clipping, as the
  optimizer used it).

The measurement leaves training bitwise as it was (see
:class:`~rnnkit.training.diagnostics.GradientFlowRecorder`). On resume, events
past the checkpoint's step are purged, so the logs read as one run.
"""

from __future__ import annotations

from pathlib import Path

from rnnkit import errors
from rnnkit.training.callbacks import Callback
from rnnkit.training.diagnostics import GradientFlowRecorder, decay_ratio, recurrent_layers


def summary_writer(log_dir: Path, purge_step: int | None):
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as error:  # torch's writer needs the tensorboard package for its protobufs
        raise ImportError(f"trainer.tensorboard=true: expected the tensorboard package (pip install 'rnnkit[tensorboard]'), got: {error}") from None
    return SummaryWriter(str(log_dir), purge_step=purge_step)


class TensorBoardLogger(Callback):
    """Scalars, gradient flow and histograms for TensorBoard (see the module docstring)."""

    def __init__(self, log_dir: str | Path, every: int = 100) -> None:
        errors.check_positive_int("every", every)
        self.log_dir, self.every = Path(log_dir), every
        self.writer = self.flow = None

    def on_fit_start(self, trainer, train) -> None:
        step = trainer.position.step
        self.writer = summary_writer(self.log_dir, purge_step=step or None)
        if recurrent_layers(trainer.model):
            self.flow = GradientFlowRecorder(probe_batch(train, trainer.config), every=self.every)
            if step == 0:
                self._record_flow(trainer, 0)

    def on_step_end(self, trainer, record: dict) -> None:
        step = record["step"]
        for key in ("loss", "grad_norm", "lr"):
            self.writer.add_scalar(f"train/{key}", record[key], step)
        if step % self.every == 0:
            for name, parameter in trainer.model.named_parameters():
                self.writer.add_histogram(f"weights/{name}", parameter.detach(), step)
                if parameter.grad is not None:
                    self.writer.add_histogram(f"grads/{name}", parameter.grad, step)
            if self.flow is not None:
                self._record_flow(trainer, step)

    def on_evaluate_end(self, trainer, record: dict) -> None:
        for key, value in record.items():
            if isinstance(value, float) and key not in ("seconds",):
                self.writer.add_scalar(f"val/{key}", value, record["step"])

    def on_fit_end(self, trainer) -> None:
        self.writer.close()

    def _record_flow(self, trainer, step: int) -> None:
        flow = self.flow.record(trainer, step)
        for name, norms in flow.hidden.items():
            if len(norms) > 1 and float(norms[-1]) > 0:
                self.writer.add_scalar(f"gradient_flow/{name}", decay_ratio(norms), step)
        for name, value in flow.parameters.items():
            self.writer.add_scalar(f"param_grad_norm/{name}", value, step)
        self.writer.add_scalar("gradient_flow/probe_loss", flow.loss, step)


def probe_batch(train, config) -> tuple:
    """The first training batch, cut to its first truncated-BPTT window: what gradient flow is measured on."""
    from rnnkit.training.trainer import _time_length, _time_slice

    inputs, targets = next(iter(train.batches(0)))
    if config.tbptt_k1:
        end = min(config.tbptt_k1, _time_length(inputs, config.time_dim))
        inputs, targets = _time_slice(inputs, 0, end, config.time_dim), _time_slice(targets, 0, end, config.time_dim)
    return inputs, targets
