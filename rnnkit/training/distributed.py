"""Data-parallel training with torch.distributed, launched by ``torchrun``.

``torchrun`` sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT;
:meth:`DistributedContext.from_env` reads them and joins the process group,
with gloo on the CPU and nccl on CUDA. The trainer wraps the model in
DistributedDataParallel, which averages gradients across processes. With
every process given an equal slice of each global batch and a mean-reduced
loss, one update equals single-process training on the whole global batch.

One node, two processes::

    torchrun --nproc-per-node 2 train.py

Two nodes, four processes each (run on every node, with its own --node-rank)::

    torchrun --nnodes 2 --nproc-per-node 4 --node-rank 0 \\
        --rdzv-backend c10d --rdzv-endpoint HOST_OF_NODE_0:29500 train.py
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistributedContext:
    rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")

    @classmethod
    def from_env(cls) -> DistributedContext:
        """Join the process group torchrun describes; a single process if WORLD_SIZE is unset or 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size == 1:
            return cls()
        use_cuda = torch.cuda.is_available()
        if use_cuda:
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        else:
            device = torch.device("cpu")
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        return cls(rank=dist.get_rank(), world_size=dist.get_world_size(), device=device)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return torch.nn.parallel.DistributedDataParallel(model, device_ids=device_ids)

    def mean(self, value: torch.Tensor) -> float:
        """The mean of a scalar over all processes (for logging the global loss)."""
        if self.world_size == 1:
            return value.item()
        value = value.detach().clone().to(self.device)
        dist.all_reduce(value)
        return value.item() / self.world_size

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        if self.world_size == 1:
            return values
        values = values.to(self.device)
        dist.all_reduce(values)
        return values.cpu()

    def close(self) -> None:
        """Leave the group once every process has reached here: a process that tore its connections down while
        another was still at work (rank 0 saving the weights) could abort that one (gloo: std::terminate)."""
        if self.world_size > 1 and dist.is_initialized():
            dist.barrier()
            dist.destroy_process_group()
