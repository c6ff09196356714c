"""Training: the trainer, truncated BPTT, checkpoints, callbacks, data parallelism."""

from rnnkit.training.callbacks import Callback, CSVLogger, EarlyStopping, LossPlot, ProgressBar
from rnnkit.training.checkpoint import CheckpointError, WriteError, load_checkpoint, save_checkpoint
from rnnkit.training.diagnostics import GradientFlowRecorder, measure_gradient_flow, probe_hidden_states
from rnnkit.training.distributed import DistributedContext
from rnnkit.training.trainer import NonFiniteLossError, Position, Trainer, TrainerConfig, seed_everything
from rnnkit.training.transfer import (GradualUnfreezing, discriminative_param_groups, freeze, layer_groups, load_encoder, one_cycle,
                                      slanted_triangular)  # fmt: skip

__all__ = [
    "CSVLogger", "Callback", "GradualUnfreezing", "discriminative_param_groups", "freeze", "layer_groups", "load_encoder",
    "one_cycle", "slanted_triangular", "CheckpointError", "DistributedContext", "EarlyStopping", "GradientFlowRecorder", "LossPlot",
    "NonFiniteLossError", "Position", "ProgressBar", "Trainer", "TrainerConfig", "load_checkpoint",
    "measure_gradient_flow", "probe_hidden_states", "save_checkpoint", "seed_everything", "WriteError",
]  # fmt: skip
