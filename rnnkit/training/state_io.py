"""Save and restore a trainer's whole state through the checkpoint format.

Tensors (model weights, optimizer moments, the torch RNG state, the carried
TBPTT state) go to safetensors; everything else (configs, optimizer and
scheduler scalars, Python's and NumPy's RNG state, the position, callback
state) goes to JSON. Restoring all of it is what makes a resumed run's losses
bitwise equal to an uninterrupted run's on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import random

import numpy as np
import torch
from torch import Tensor

from rnnkit.training.checkpoint import CheckpointError, check_state_dict, load_checkpoint, save_checkpoint


def detach(state):
    """Detach a state: None, a tensor, or nested tuples/lists of tensors."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        return state.detach()
    return type(state)(detach(s) for s in state)


def flatten_state(prefix: str, state, tensors: dict[str, Tensor]):
    """Store a nested state's tensors under ``prefix.i.j`` and return its JSON structure."""
    if state is None:
        return None
    if isinstance(state, Tensor):
        tensors[prefix] = state
        return "tensor"
    return [flatten_state(f"{prefix}.{i}", s, tensors) for i, s in enumerate(state)]


def unflatten_state(prefix: str, structure, tensors: dict[str, Tensor], device):
    if structure is None:
        return None
    if structure == "tensor":
        return tensors[prefix].to(device)
    return tuple(unflatten_state(f"{prefix}.{i}", s, tensors, device) for i, s in enumerate(structure))


def model_config(model) -> dict | None:
    config = getattr(model, "config", None)
    return dataclasses.asdict(config) if dataclasses.is_dataclass(config) else None


def save_training_state(trainer, path):
    model, pos = trainer.model, trainer.position
    for name, p in model.named_parameters():
        if not torch.isfinite(p).all():
            raise CheckpointError(f"model parameter {name}: expected finite values to checkpoint, got NaN or Inf; the previous checkpoint is kept")
    tensors: dict[str, Tensor] = {f"model.{k}": v for k, v in model.state_dict().items()}
    optimizer = trainer.optimizer.state_dict()
    optimizer_scalars = {}
    for index, per_param in optimizer["state"].items():
        optimizer_scalars[str(index)] = {}
        for key, value in per_param.items():
            if isinstance(value, Tensor):
                tensors[f"optimizer.{index}.{key}"] = value
            else:
                optimizer_scalars[str(index)][key] = value
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{i}"] = s
    numpy_state = np.random.get_state()
    position = {f.name: getattr(pos, f.name) for f in dataclasses.fields(pos) if f.name not in ("carry", "lagged")}
    metadata = {
        "trainer_config": dataclasses.asdict(trainer.config),
        "model_config": model_config(model),
        "model_class": type(model).__name__,
        "optimizer": {"param_groups": optimizer["param_groups"], "state": optimizer_scalars},
        "scheduler": trainer.scheduler.state_dict() if trainer.scheduler is not None else None,
        "rng": {
            "python": [random.getstate()[0], list(random.getstate()[1]), random.getstate()[2]],
            "numpy": [numpy_state[0], numpy_state[1].tolist(), int(numpy_state[2]), int(numpy_state[3]), float(numpy_state[4])],
        },
        "position": position,
        "carry": flatten_state("carry", pos.carry, tensors),
        "lagged": flatten_state("lagged", pos.lagged, tensors),
        "callbacks": [cb.state_dict() for cb in trainer.callbacks],
    }
    return save_checkpoint(path, tensors, _finite_json(metadata))


def load_training_state(trainer, path) -> None:
    tensors, metadata = load_checkpoint(path)
    model = trainer.model
    stored_config, config = metadata.get("model_config"), model_config(model)
    if stored_config is not None and config is not None and stored_config != config:
        differing = sorted(k for k in set(stored_config) | set(config) if stored_config.get(k) != config.get(k))
        raise CheckpointError(f"checkpoint {str(path)!r}: expected the model config it was saved with, got differences in {differing}")
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict(model.state_dict(), weights, f"checkpoint {str(path)!r}")
    model.load_state_dict(weights)

    saved = metadata["optimizer"]
    if len(saved["param_groups"]) != len(trainer.optimizer.param_groups):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected {len(trainer.optimizer.param_groups)} optimizer param groups, got {len(saved['param_groups'])}")
    state: dict[int, dict] = {int(i): dict(scalars) for i, scalars in saved["state"].items()}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            state.setdefault(int(index), {})[name] = value
    trainer.optimizer.load_state_dict({"state": state, "param_groups": saved["param_groups"]})
    if trainer.scheduler is not None and metadata["scheduler"] is not None:
        trainer.scheduler.load_state_dict(metadata["scheduler"])

    torch.set_rng_state(tensors["rng.torch"])
    if torch.cuda.is_available():
        cuda_states = [tensors[k] for k in sorted(k for k in tensors if k.startswith("rng.cuda."))]
        if cuda_states:
            torch.cuda.set_rng_state_all(cuda_states)
    version, internal, gauss = metadata["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = metadata["rng"]["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))

    device = next(model.parameters()).device
    position = trainer.position
    for key, value in metadata["position"].items():
        setattr(position, "best_val" if key == "best_val_loss" else key, value)  # best_val_loss: checkpoints before monitor
    position.carry = unflatten_state("carry", metadata["carry"], tensors, device)
    position.lagged = unflatten_state("lagged", metadata["lagged"], tensors, device)
    for callback, callback_state in zip(trainer.callbacks, metadata["callbacks"]):
        callback.load_state_dict(callback_state)


def _finite_json(value):
    """Turn tuples into lists and refuse non-finite floats, which JSON cannot hold."""
    if isinstance(value, float) and not math.isfinite(value):
        raise CheckpointError(f"metadata: expected finite numbers, got {value}")
    if isinstance(value, dict):
        return {str(k): _finite_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_json(v) for v in value]
    return value
