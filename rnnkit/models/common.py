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
from rnnkit.layers import quantized, regularisers
from rnnkit.training.checkpoint import CheckpointError, check_state_dict, load_checkpoint, save_checkpoint

LAYERS = {"lstm": rnnkit.LSTM, "gru": rnnkit.GRU, "rnn": rnnkit.RNN, "mingru": rnnkit.MinGRU, "minlstm": rnnkit.MinLSTM, "rglru": rnnkit.RGLRU}


@dataclass
class RecurrentConfig:
    """The recurrent core of a model: any rnnkit layer by name, with its options."""

    cell: Literal["lstm", "gru", "rnn", "mingru", "minlstm", "rglru"] = "lstm"  # the last three: linear recurrences, scanned in parallel
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
        for name in (*regularisers.NAMES, "dropout"):  # dropout too: with one layer it is not used, but never nonsense
            setattr(self, name, regularisers.check_rate(f"rnn.{name}", getattr(self, name)))


@dataclass
class InputConfig:
    """Tokens through an embedding (``vocab_size`` set) or continuous features (``feature_size``)."""

    vocab_size: int | None = None
    embedding_dim: int = 32
    feature_size: int | None = None
    padding_idx: int | None = 0
    embedding_dropout: float = 0.0  # whole words (AWD-LSTM); tokens only, see InputEncoder

    def __post_init__(self) -> None:
        if (self.vocab_size is None) == (self.feature_size is None):
            raise errors.fail("input", "exactly one of vocab_size (tokens) or feature_size (continuous)",
                              f"vocab_size={self.vocab_size}, feature_size={self.feature_size}")  # fmt: skip
        check_embedding_dropout(self.embedding_dropout)
        if self.embedding_dropout and self.vocab_size is None:
            raise errors.fail("embedding_dropout", "0 for continuous features (it drops whole words of a vocabulary)", self.embedding_dropout)

    @property
    def output_size(self) -> int:
        return self.embedding_dim if self.vocab_size is not None else self.feature_size


def check_embedding_dropout(p: object) -> None:
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0 <= p < 1:
        raise errors.fail("embedding_dropout", "a probability in [0, 1)", p)


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
    r"""Embeds tokens, or passes continuous features through, then applies dropout.

    Embedding dropout (Gal & Ghahramani, 2016, section 4; AWD-LSTM, Merity et
    al., 2018, section 4.3), in training only: each word w of the vocabulary
    keeps its embedding row with probability 1 - p, scaled by 1 / (1 - p),
    and is zeroed otherwise, :math:`E' = \mathrm{diag}(m) E / (1 - p)`, with
    :math:`m_w \sim \mathrm{Bernoulli}(1 - p)` drawn once per forward call. A
    dropped word is dropped at every position and in every sequence of the
    batch, so the model cannot lean on any single word; the expectation of
    each row is unchanged. In eval mode it is the identity.
    """

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
            return self.dropout(self.embed(x))
        if x.dim() != 3 or x.shape[-1] != self.config.feature_size:
            raise errors.fail("inputs", f"features of shape (batch, time, {self.config.feature_size})", f"shape {tuple(x.shape)}")
        return self.dropout(x)

    def embed(self, x: Tensor) -> Tensor:
        """The embedding of token ids ``x``, with whole-word dropout in training (see the class docstring)."""
        p, weight = self.config.embedding_dropout, self.embedding.weight
        if not (self.training and p):
            return self.embedding(x)
        keep = torch.empty(weight.shape[0], 1, dtype=weight.dtype, device=weight.device).bernoulli_(1 - p) / (1 - p)
        return F.embedding(x, weight * keep, self.embedding.padding_idx)


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
    if quantized.is_quantized(model):  # load_model converts a fresh model the same way before loading the int8 weights
        metadata["quantized"] = {"scheme": quantized.SCHEME, "linear": any(isinstance(m, quantized.QuantizedLinear) for m in model.modules())}
    save_checkpoint(path, {f"model.{k}": v for k, v in model.state_dict().items()}, metadata)


def _quantized_twin(model: nn.Module, recorded: dict, path) -> nn.Module:
    if not isinstance(recorded, dict) or recorded.get("scheme") != quantized.SCHEME or not isinstance(recorded.get("linear"), bool):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected quantized metadata {{'scheme': {quantized.SCHEME!r}, 'linear': bool}}, got {recorded!r}")
    return quantized.quantize_dynamic(model, linear=recorded["linear"])


def load_model(path, device="cpu") -> tuple[nn.Module, dict]:
    """Rebuild a model saved by :func:`save_model` (or by the trainer); returns ``(model, extra)``."""
    tensors, metadata = load_checkpoint(path)
    name = metadata.get("model_class")
    if name not in MODEL_REGISTRY:
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a model class among {sorted(MODEL_REGISTRY)}, got {name!r}")
    cls = MODEL_REGISTRY[name]
    if not isinstance(metadata.get("model_config"), dict) or not isinstance(metadata.get("extra", {}), dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: expected a model_config and extra data as mappings in its metadata, "
                              f"got {type(metadata.get('model_config')).__name__} and {type(metadata.get('extra')).__name__}")  # fmt: skip
    config = configs.from_dict(cls.config_class, metadata["model_config"])
    model = cls(config)
    if "quantized" in metadata:
        model = _quantized_twin(model, metadata["quantized"], path)
    weights = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
    check_state_dict(model.state_dict(), weights, f"checkpoint {str(path)!r}")
    if "quantized" in metadata:  # load_state_dict would cast silently: an int8 weight must come as int8
        for name, tensor in model.state_dict().items():
            if weights[name].dtype != tensor.dtype:
                raise CheckpointError(f"checkpoint {str(path)!r}: expected {name} of dtype {tensor.dtype} (an int8 model), got {weights[name].dtype}")
    model.load_state_dict(weights)
    return model.to(device), SavedExtra(metadata.get("extra", {}), path)


class SavedExtra(dict):
    """A checkpoint's extra data (vocabularies, labels, scalers): a key the reader needs and the checkpoint lacks, as
    in a model of another task copied into a run, is a CheckpointError naming both, not a KeyError."""

    def __init__(self, data: dict, path) -> None:
        super().__init__(data)
        self.path = path

    def __missing__(self, key):
        raise CheckpointError(f"checkpoint {str(self.path)!r}: expected {key!r} in its extra data (written by the task that "
                              f"trained it), got {sorted(self) or 'none'}; is it a model of another task?")  # fmt: skip


