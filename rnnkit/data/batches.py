"""Batch sources for the trainer: shuffled mini-batches and contiguous streams.

A batch source has ``batches(epoch) -> iterator of (inputs, targets)`` and
``__len__`` (batches per epoch). Both sources here are deterministic functions
of ``(seed, epoch)``, never of the global RNG, so that a resumed run sees
exactly the batches an uninterrupted run would have, and both can shard their
batches across data-parallel ranks.
"""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from rnnkit import errors


class TensorBatches:
    """Mini-batches of rows of ``inputs`` and ``targets``, reshuffled every epoch.

    Args:
        inputs, targets: tensors (or tuples of tensors for inputs) with the
            examples along dimension 0 (``example_dim`` to change).
        batch_size: the global batch size.
        shuffle: draw a new permutation per epoch from ``(seed, epoch)``.
        drop_last: drop a final short batch (keeps data-parallel shards equal).
        rank, world_size: data-parallel shard; each rank gets an equal,
            contiguous slice of every global batch.
    """

    def __init__(self, inputs, targets: Tensor, batch_size: int, *, shuffle: bool = True, seed: int = 0,
                 drop_last: bool = False, rank: int = 0, world_size: int = 1) -> None:  # fmt: skip
        errors.check_positive_int("batch_size", batch_size)
        count = len(targets)
        for i, t in enumerate(inputs if isinstance(inputs, tuple) else (inputs,)):
            if len(t) != count:
                raise errors.fail(f"inputs[{i}]", f"{count} examples, as many as targets", len(t))
        if batch_size % world_size:
            raise errors.fail("batch_size", f"a multiple of world_size={world_size}", batch_size)
        self.inputs, self.targets = inputs, targets
        self.batch_size, self.shuffle, self.seed, self.drop_last = batch_size, shuffle, seed, drop_last
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        full, rest = divmod(len(self.targets), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def batches(self, epoch: int) -> Iterator[tuple]:
        count = len(self.targets)
        if self.shuffle:
            order = torch.randperm(count, generator=torch.Generator().manual_seed(self.seed * 1_000_003 + epoch))
        else:
            order = torch.arange(count)
        for b in range(len(self)):
            index = order[b * self.batch_size : (b + 1) * self.batch_size]
            shard = len(index) // self.world_size
            index = index[self.rank * shard : (self.rank + 1) * shard] if self.world_size > 1 else index
            yield _take(self.inputs, index), self.targets[index]


class StreamBatches:
    """char-rnn's layout for truncated BPTT: a long sequence cut into contiguous streams.

    ``tokens`` (T, ...) becomes ``num_streams`` streams of length T // num_streams,
    laid out time-major as (T // num_streams, num_streams, ...). Every epoch yields
    one batch, ``(inputs, targets) = (streams[:-1], streams[1:])``; the trainer
    cuts its time axis into windows and carries the state across them. Stream b
    of one window continues stream b of the previous window exactly, which is
    what makes the carried state correct. Never shuffled, for the same reason.

    ``dropped_tokens`` counts the tail that did not fill a stream. With
    ``batch_first=True`` batches are (num_streams, T, ...), for batch-first
    models such as :mod:`rnnkit.models`; then set ``TrainerConfig(time_dim=1)``.
    """

    def __init__(self, tokens: Tensor, num_streams: int, *, batch_first: bool = False, rank: int = 0, world_size: int = 1) -> None:
        errors.check_positive_int("num_streams", num_streams)
        if num_streams % world_size:
            raise errors.fail("num_streams", f"a multiple of world_size={world_size}", num_streams)
        length = len(tokens) // num_streams
        if length < 2:
            raise errors.fail("tokens", f"at least {2 * num_streams} items for {num_streams} streams", len(tokens))
        self.dropped_tokens = len(tokens) - length * num_streams
        streams = tokens[: length * num_streams].reshape(num_streams, length, *tokens.shape[1:]).transpose(0, 1)
        per_rank = num_streams // world_size
        self.streams = streams[:, rank * per_rank : (rank + 1) * per_rank]  # time-major (T, B, ...)
        self.batch_first = batch_first

    def __len__(self) -> int:
        return 1

    def batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        inputs, targets = self.streams[:-1], self.streams[1:]
        if self.batch_first:
            inputs, targets = inputs.transpose(0, 1), targets.transpose(0, 1)
        yield inputs, targets


def _take(inputs, index: Tensor):
    return tuple(t[index] for t in inputs) if isinstance(inputs, tuple) else inputs[index]
