"""``rnnkit.quantize_dynamic(model)``: a copy of a model whose rnnkit layers and cells run int8 inference.

What it converts, and how (the math is in :mod:`rnnkit.engine.int8`):

* every :class:`rnnkit.RNN` / ``LSTM`` / ``GRU`` layer and every ``RNNCell`` / ``LSTMCell`` /
  ``GRUCell``: ``W_ih`` and ``W_hh`` become int8 with one float32 scale per output channel,
  the biases stay float32, activations are quantized on the fly, the state stays float32;
* ``nn.Linear`` only with ``linear=True`` (off by default: the heads of rnnkit's models are a
  small part of their time, and their logits feed losses and samplers directly, so they stay
  float32 unless asked);
* everything else is left alone (embeddings, LayerNorm, convolutions, attention).

It refuses, with ValueError naming the module, what it cannot convert: the LayerNorm variants
(``layer_norm=True``: the normalisation of the recurrent product needs its float values),
``proj_size`` (not implemented), non-float32 or non-CPU parameters.

The converted model is for inference: its int8 weights have no gradient (a call that autograd
would record raises) and it has no ``dropout`` between layers in effect (eval). Its state dict
holds the int8 weights under the float model's names plus ``<name>_scale`` rows, so it saves and
loads through :func:`rnnkit.models.save_model` / ``load_model`` (safetensors + JSON, which record
``quantized: int8`` and rebuild the model by converting a fresh one first).
"""

from __future__ import annotations

import copy

import torch
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.cells.base import RecurrentCell
from rnnkit.engine import int8
from rnnkit.engine.fused_loops import KINDS, LSTM
from rnnkit.layers import regularisers
from rnnkit.layers.recurrent import RecurrentLayer

SCHEME = "int8"  # the value of ``quantized`` in a checkpoint's metadata


def quantize_dynamic(model: nn.Module, linear: bool = False) -> nn.Module:
    """A copy of ``model`` in eval mode with its rnnkit layers and cells (and, with ``linear``, its nn.Linear) in int8.

    The original is not changed. Raises ValueError for a module it cannot convert (see the module docstring).
    """
    errors.check_bool("linear", linear)
    converted = copy.deepcopy(model)
    if _convertible(converted, linear):
        return _convert(converted, "model")
    _convert_children(converted, linear, "model")
    return converted.eval()  # for inference: dropout off everywhere, as the int8 modules are


def is_quantized(model: nn.Module) -> bool:
    """Whether a model holds a module converted by :func:`quantize_dynamic`."""
    return any(isinstance(m, (QuantizedLayer, QuantizedCell, QuantizedLinear)) for m in model.modules())


def _convertible(module: nn.Module, linear: bool) -> bool:
    return isinstance(module, (RecurrentLayer, RecurrentCell)) or (linear and type(module) is nn.Linear)


def _convert_children(module: nn.Module, linear: bool, path: str) -> None:
    for name, child in module.named_children():
        if _convertible(child, linear):
            setattr(module, name, _convert(child, f"{path}.{name}"))
        else:
            _convert_children(child, linear, f"{path}.{name}")


def _convert(module: nn.Module, path: str) -> nn.Module:
    if isinstance(module, (QuantizedLayer, QuantizedCell, QuantizedLinear)):
        raise errors.fail(path, "a float module to quantize", "one that is already int8")
    for name, p in module.named_parameters():
        if p.dtype != torch.float32 or p.device.type != "cpu":
            raise errors.fail(f"{path}.{name}", "a float32 CPU parameter for int8 inference", f"{p.dtype} on {p.device}")
    if isinstance(module, nn.Linear):
        return QuantizedLinear(module)
    spec = module.spec
    if spec.name not in KINDS or getattr(module, "layer_norm", False):
        raise errors.fail(path, "an RNN, LSTM or GRU without layer_norm for int8 inference (the LayerNorm of the recurrent product needs floats)", f"{type(module).__name__} with cell {spec.name!r}")
    if module.proj_size:
        raise errors.fail(f"{path}.proj_size", "0 for int8 inference (projections are not quantized)", module.proj_size)
    return _quantized_class(type(module)).from_float(module)


class _Int8Weights(nn.Module):
    """Stores int8 weights with their per-channel scales as buffers, and the run-time packing derived from them."""

    def _store(self, names: list[tuple[str, str, str, str]], float_module: nn.Module) -> None:
        """``names``: per direction (weight_ih, weight_hh, bias_ih, bias_hh) names in the float module."""
        self._directions = names
        for w_ih, w_hh, b_ih, b_hh in names:
            for weight in (w_ih, w_hh):
                q, scale = int8.quantize_weight(getattr(float_module, weight))
                self.register_buffer(weight, q)
                self.register_buffer(f"{weight}_scale", scale)
            for bias in (b_ih, b_hh):
                value = getattr(float_module, bias, None)
                self.register_buffer(bias, None if value is None else value.detach().clone())
        self._packed: list[int8.Int8Direction] | None = None
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_packed", None))

    def _direction(self, index: int) -> int8.Int8Direction:
        if self._packed is None:
            kind = KINDS[self.spec.name]
            b = self._buffers
            self._packed = [
                int8.prepare(kind, b[w_ih], b[f"{w_ih}_scale"], b[w_hh], b[f"{w_hh}_scale"], b[b_ih], b[b_hh])
                for w_ih, w_hh, b_ih, b_hh in self._directions
            ]  # fmt: skip
        return self._packed[index]

    def train(self, mode: bool = True):
        if mode:
            raise ValueError(f"{type(self).__name__}: expected inference (eval mode) for an int8 module, got train(True); train the float model")
        return super().train(False)


class QuantizedLayer(_Int8Weights, RecurrentLayer):
    """An rnnkit layer with int8 weights: the float layer's forward (layouts, lengths, states, stacking), int8 engine."""

    @classmethod
    def from_float(cls, layer: RecurrentLayer) -> QuantizedLayer:
        if layer.zoneout > 0:  # zoneout acts in eval mode too (the expectation p), and the int8 loop has none
            raise ValueError(f"{type(layer).__name__}: expected zoneout=0 for int8 inference (zoneout mixes the states in eval mode "
                             f"too, and the int8 engine has no zoneout), got zoneout={layer.zoneout}")  # fmt: skip
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for name in regularisers.NAMES:  # the dropouts are the identity in eval mode, the only mode an int8 layer has
            setattr(new, name, getattr(layer, name))
        for key in ("spec", "mode", "input_size", "hidden_size", "num_layers", "bias", "batch_first", "dropout", "bidirectional",
                    "proj_size", "layer_norm", "check_finite", "engine", "nonlinearity"):  # fmt: skip
            if hasattr(layer, key):
                setattr(new, key, getattr(layer, key))
        new.run_direction = int8.run_direction
        new._flat_weights_names = []
        suffix = [(layer._param_name("", k, d)) for k in range(layer.num_layers) for d in range(layer.num_directions)]
        new._store([(f"weight_ih{s}", f"weight_hh{s}", f"bias_ih{s}", f"bias_hh{s}") for s in suffix], layer)
        return new.train(False)

    def cell_weights(self, layer: int, direction: int) -> int8.Int8Direction:
        return self._direction(layer * self.num_directions + direction)

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise errors.fail("input", f"last dimension input_size={self.input_size}", f"{x.shape[-1]}")
        if x.dtype != torch.float32:
            raise errors.fail("input", "dtype torch.float32 for an int8 layer", x.dtype)


class QuantizedCell(_Int8Weights, RecurrentCell):
    """A stand-alone rnnkit cell with int8 weights: one step of the int8 kernel per call."""

    @classmethod
    def from_float(cls, cell: RecurrentCell) -> QuantizedCell:
        new = cls.__new__(cls)
        nn.Module.__init__(new)
        for key in ("spec", "input_size", "hidden_size", "bias", "proj_size", "nonlinearity"):
            if hasattr(cell, key):
                setattr(new, key, getattr(cell, key))
        new._store([("weight_ih", "weight_hh", "bias_ih", "bias_hh")], cell)
        return new.train(False)

    def initial_state(self, batch_size: int | None = None):
        batch = () if batch_size is None else (batch_size,)
        return tuple(torch.zeros(*batch, self.hidden_size) for _ in range(self.spec.state_count))

    def _run(self, input: Tensor, hx):
        if input.dim() not in (1, 2) or input.shape[-1] != self.input_size or input.dtype != torch.float32:
            raise errors.fail("input", f"a float32 (batch, {self.input_size}) or ({self.input_size},) tensor", f"{input.dtype} shape {tuple(input.shape)}")
        unbatched = input.dim() == 1
        x = input.view(1, 1, -1) if unbatched else input.unsqueeze(0)
        state = self.initial_state(None if unbatched else input.shape[0]) if hx is None else tuple(hx)
        state = tuple(s.reshape(x.shape[1], self.hidden_size) for s in state)
        _, final = int8.run_direction(self.spec, x, state, self._direction(0), None, False)
        return tuple(s.view(self.hidden_size) if unbatched else s for s in final)

    def step(self, x_t: Tensor, state):
        final = self._run(x_t, state)
        return final[0], final


class QuantizedLinear(nn.Module):
    """nn.Linear with int8 weights (per-output-channel scales) and activations quantized on the fly."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        q, scale = int8.quantize_weight(linear.weight)
        self.register_buffer("weight", q)
        self.register_buffer("weight_scale", scale)
        self.register_buffer("bias", None if linear.bias is None else linear.bias.detach().clone())
        self._packed = None
        self.register_load_state_dict_post_hook(lambda module, _keys: setattr(module, "_packed", None))

    def forward(self, x: Tensor) -> Tensor:
        if x.dtype != torch.float32 or x.device.type != "cpu":
            raise errors.fail("input", "a float32 CPU tensor for an int8 Linear", f"{x.dtype} on {x.device}")
        if self._packed is None:
            self._packed = int8.pack(self.weight, self.weight_scale)
        return int8.linear(x, self._packed, None if self.bias is None else self.bias.contiguous())

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8"


_CLASSES: dict[type, type] = {}


def _quantized_class(float_class: type) -> type:
    """``QuantizedLSTM`` for rnnkit.LSTM, ``QuantizedGRUCell`` for rnnkit.GRUCell, ...: the float class's forward
    conventions (what hx is, what comes back) with int8 weights."""
    if float_class not in _CLASSES:
        base = QuantizedLayer if issubclass(float_class, RecurrentLayer) else QuantizedCell
        _CLASSES[float_class] = type(f"Quantized{float_class.__name__}", (base, float_class), {"__module__": __name__})
    return _CLASSES[float_class]


__all__ = ["QuantizedCell", "QuantizedLayer", "QuantizedLinear", "SCHEME", "is_quantized", "quantize_dynamic"]
