"""Data: batch sources for training (task-specific loaders live in rnnkit.tasks)."""

from rnnkit.data.batches import StreamBatches, TensorBatches

__all__ = ["StreamBatches", "TensorBatches"]
