"""Pieces every model shares: the recurrent layer by name, the input encoder, pooling, save/load.

Conventions of all models in :mod:`rnnkit.models`:

* batch-first: tokens (N, L), features (N, L, F);
* ``inputs`` is a tensor, or ``(tensor, lengths)`` for padded batches;
* the trainer's contract: ``outputs, state = model(inputs, state)`` and
  ``loss = model.loss(outputs, targets)``, plus ``metrics(outputs, targets)``;
* a ``config`` dataclass attribute, from which :func:`load_model` rebuilds the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

import rnnkit
from rnnkit import config as configs
from rnnkit import errors
from rnnkit.layers import regularisers
from rnnkit.training.checkpoint import CheckpointError, check_state_dict, load_checkpoint, save_checkpoint

LAYERS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN}


@dataclass
class RecurrentConfig:
    """The recurrent core of a model: any rnnkit layer by name, with its options."""

    cell: Literal["lstm", "gru", "rnn"] = "lstm"
    hidden_size: int = 64
    num_layers: int = 1
    dropout: float = 0.0  # between recurrent layers, and on the model's outputs
    bidirectional: bool = False
    layer_norm: bool = False  # LSTM and GRU only
    nonlinearity: Literal["tanh", "relu"] = "tanh"  # RNN only
    engine: str = "auto"
    # The layer's regularisers (rnnkit.layers.regularisers), each in [0, 1), 0 = off.
    weight_drop: float = 0.0  # DropConnect on weight_hh, one mask per call
    input_dropout: float = 0.0  # locked dropout: one mask per sequence, all steps
    layer_dropout: float = 0.0
    output_dropout: float = 0.0
    zoneout: float = 0.0  # keep each unit's previous hidden state with this probability

    def __post_init__(self) -> None:
        for name in regularisers.NAMES:
            setattr(self, name, regularisers.check_rate(f"rnn.{name}", getattr(self, name)))


@dataclass
class InputConfig:
    """Tokens through an embedding (``vocab_size`` set) or continuous features (``feature_size``)."""

    vocab_size: int | None = None
    embedding_dim: int = 32
    feature_size: int | None = None
    padding_idx: int | None = 0

    def __post_init__(self) -> None:
        if (self.vocab_size is None) == (self.feature_size is None):
            raise errors.fail("input", "exactly one of vocab_size (tokens) or feature_size (continuous)",
                              f"vocab_size={self.vocab_size}, feature_size={self.feature_size}")  # fmt: skip

    @property
    def output_size(self) -> int:
        return self.embedding_dim if self.vocab_size is not None else self.feature_size


def make_layer(rnn: RecurrentConfig, input_size: int) -> rnnkit.RecurrentLayer:
    layer = LAYERS[rnn.cell]
    kwargs = dict(num_layers=rnn.num_layers, batch_first=True, bidirectional=rnn.bidirectional, engine=rnn.engine,
                  dropout=rnn.dropout if rnn.num_layers > 1 else 0.0,
                  **{name: getattr(rnn, name) for name in regularisers.NAMES})  # fmt: skip
    if rnn.cell == "rnn":
        if rnn.layer_norm:
            raise errors.fail("layer_norm", "False for cell='rnn' (LayerNorm variants exist for LSTM and GRU)", True)
        kwargs["nonlinearity"] = rnn.nonlinearity
    else:
        kwargs["layer_norm"] = rnn.layer_norm
    return layer(input_size, rnn.hidden_size, **kwargs)


class InputEncoder(nn.Module):
    """Embeds tokens, or passes continuous features through, then applies dropout."""

    def __init__(self, config: InputConfig, dropout: float = 0.0) -> None:
        super().__init__()
        self.config = config
        if config.vocab_size is not None:
            self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.padding_idx)
        else:
            self.embedding = None
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        if self.embedding is not None:
            if x.dtype.is_floating_point:
                raise errors.fail("inputs", "integer token ids for a model with vocab_size", f"dtype {x.dtype}")
            return self.dropout(self.embedding(x))
        if x.dim() != 3 or x.shape[-1] != self.config.feature_size:
            raise errors.fail("inputs", f"features of shape (batch, time, {self.config.feature_size})", f"shape {tuple(x.shape)}")
        return self.dropout(x)


def split_inputs(inputs) -> tuple[Tensor, Tensor | None]:
    """``x`` or ``(x, lengths)`` -> ``(x, lengths or None)``."""
    if isinstance(inputs, (tuple, list)):
        if len(inputs) != 2:
            raise errors.fail("inputs", "a tensor or a pair (tensor, lengths)", f"a sequence of {len(inputs)} items")
        return inputs[0], inputs[1]
    return inputs, None


def valid_mask(lengths: Tensor | None, batch: int, length: int, device) -> Tensor:
    """(N, L) bool, True at positions before each sequence's length."""
    if lengths is None:
        return torch.ones(batch, length, dtype=torch.bool, device=device)
    lengths = torch.as_tensor(lengths, device=device)
    return torch.arange(length, device=device).unsqueeze(0) < lengths.unsqueeze(1)


class ClassifierMixin:
    """Cross-entropy loss, accuracy and probabilities for a model whose outputs are class logits (N, C)."""

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits, targets)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return {"accuracy": (logits.argmax(-1) == targets).float().mean().item()}

    @torch.no_grad()
    def predict_proba(self, inputs) -> Tensor:
        self.eval()
        return self(inputs)[0].softmax(-1)


# -- save and load ----------------------------------------------------------------

MODEL_REGISTRY: dict[str, type[nn.Module]] = {}


def register(cls):
    """Class decorator: make a model loadable by :func:`load_model` from its class name."""
    MODEL_REGISTRY[cls.__name__] = cls
    return cls


def save_model(model: nn.Module, path, extra: dict | None = None) -> None:
    """Write weights (safetensors) and config (JSON) through the checkpoint format; ``extra`` may hold a vocabulary."""
    metadata = {"model_class": type(model).__name__, "model_config": configs.to_dict(model.config), "extra": extra or {}}
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()}, metadata)


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` (or by the trainer); returns ``(model, extra)``."""
    tensors, metadata = load_checkpoint(path)
    name = metadata.get("model_class")
    if name not in MODEL_REGISTRY:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a model class among {sorted(MODEL_REGISTRY)}, got {name!r}")
    cls = MODEL_REGISTRY[name]
    config = configs.from_dict(cls.config_class, metadata["model_config"])
    model = cls(config)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict(model.state_dict(), weights, f"checkpoint {str(path)!r}")
    model.load_state_dict(weights)
    return model.to(device), metadata.get("extra", {})


