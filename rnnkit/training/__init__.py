"""Training: the trainer, truncated BPTT, checkpoints, callbacks, data parallelism."""

from rnnkit.training.callbacks import Callback, CSVLogger, EarlyStopping, LossPlot, ProgressBar
from rnnkit.training.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from rnnkit.training.distributed import DistributedContext
from rnnkit.training.trainer import NonFiniteLossError, Position, Trainer, TrainerConfig, seed_everything

__all__ = [
    "CSVLogger", "Callback", "CheckpointError", "DistributedContext", "EarlyStopping", "LossPlot",
    "NonFiniteLossError", "Position", "ProgressBar", "Trainer", "TrainerConfig", "load_checkpoint",
    "save_checkpoint", "seed_everything",
]  # fmt: skip
