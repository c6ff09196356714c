"""On CUDA, the configurations cuDNN computes exactly go to torch's own RNN kernels (cuDNN).

For a plain RNN, LSTM or GRU (with or without ``proj_size``, padded by ``lengths=`` or packed)
rnnkit's math *is* torch.nn's, and on CUDA torch.nn runs it with cuDNN's fused kernels, which
nothing written per step can beat. So ``engine="auto"`` hands such a layer to the same
function torch.nn.LSTM/GRU/RNN call, ``torch._VF.lstm/gru/rnn_tanh/rnn_relu``, with the layer's
own weights in torch.nn's order. Padded batches go in packed (what torch.nn does with a
PackedSequence), so the outputs past a sequence's end are zeros and its final state is the one at
its last valid step, as rnnkit's engines define them.

Everything else runs rnnkit's kernels, and :func:`declines` says why: an explicit
``engine="fused"`` or ``"reference"``, another device, the LayerNorm variants, the regularisers
(``zoneout``, ``weight_drop``), a swapped ``run_direction`` (diagnostics' probes), autocast
(rnnkit keeps the recurrence in float32 there; cuDNN would run it in half precision), and a
program being recorded or a torch.func transform (they need rnnkit's op, its exporters and its
transform rules). Double backward: cuDNN's backward is not differentiable again and PyTorch says
so when asked; ``engine="fused"`` has a second derivative.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn.utils.rnn import PackedSequence, pack_padded_sequence, pad_packed_sequence

from rnnkit.engine import fused, transforms

# torch._VF's function per cell family (what torch.nn.RNNBase.forward calls).
FUNCTIONS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn_tanh", "rnn_relu": "rnn_relu"}


def declines(layer, device_type: str | None = None) -> str | None:
    """Why a layer's next forward would *not* go to torch's cuDNN kernels, or None when it would.

    ``device_type`` defaults to the device of the layer's parameters; passing it lets the rule be
    read (and tested) without a GPU.
    """
    if device_type is None:
        parameter = next(layer.parameters(), None)
        device_type = "cpu" if parameter is None else parameter.device.type
    if getattr(layer, "engine", "auto") != "auto":
        return f"engine={layer.engine!r} was asked for"
    if device_type != "cuda":
        return f"cuDNN is for CUDA tensors; parameters are on {device_type}"
    spec = getattr(layer, "spec", None)
    if spec is None or spec.name not in FUNCTIONS:
        return f"cuDNN has no {getattr(spec, 'name', type(layer).__name__)!r} cell"
    if getattr(layer, "layer_norm", False):
        return "cuDNN has no LayerNorm variant"
    for regulariser in ("zoneout", "weight_drop"):
        if getattr(layer, regulariser, 0):
            return f"cuDNN has no {regulariser}"
    if getattr(layer, "run_direction", fused.run_direction) is not fused.run_direction:
        return "the layer's run_direction was swapped (e.g. by diagnostics)"
    if torch.is_autocast_enabled(device_type):
        return "autocast is on (rnnkit keeps the recurrence in float32; cuDNN would run it in half precision)"
    if transforms.recorded() or transforms.functorch_active():
        return "a program is being recorded or a torch.func transform runs (they need rnnkit's op)"
    return None


def flatten(layer) -> None:
    """Make a plain layer's CUDA weights views of one buffer in cuDNN's layout, as torch.nn.RNNBase.flatten_parameters.

    cuDNN then reads them in place; otherwise every call copies them into such a buffer (and
    PyTorch warns so). A no-op for anything cuDNN would not take: CPU weights, mixed dtypes,
    aliased weights, the LayerNorm variants (their gains are no part of cuDNN's layout).
    """
    if layer.spec.name not in FUNCTIONS or getattr(layer, "layer_norm", False):
        return
    weights = layer._flat_weights
    if not weights or not all(isinstance(w, Tensor) for w in weights) or len({w.data_ptr() for w in weights}) != len(weights):
        return
    dtype = weights[0].dtype
    if not all(w.dtype == dtype and w.is_cuda and torch.backends.cudnn.is_acceptable(w) for w in weights):
        return
    import torch.backends.cudnn.rnn as cudnn_rnn

    with torch.cuda.device_of(weights[0]), torch.no_grad():
        if torch._use_cudnn_rnn_flatten_weight():
            per_cell = (4 if layer.bias else 2) + (1 if layer.proj_size else 0)
            torch._cudnn_rnn_flatten_weight(
                weights, per_cell, layer.input_size, cudnn_rnn.get_cudnn_mode(layer.mode), layer.hidden_size,
                layer.proj_size, layer.num_layers, layer.batch_first, bool(layer.bidirectional),
            )  # fmt: skip


def run_layers(layer, x: Tensor, states: list[tuple[Tensor, ...]], lengths: Tensor | None) -> tuple[Tensor, list[tuple[Tensor, ...]]]:
    """All of ``layer``'s layers and directions by torch's RNN kernel: (L, N, D*H_out) output and each final state.

    ``x`` is time-major (L, N, H_in); ``states`` one tuple of (N, size) tensors per (layer, direction);
    ``lengths`` (N,) CPU lengths when some sequence is padded, else None.
    """
    parts = list(zip(*states))  # per state tensor: one (N, size) per (layer, direction)
    hx = [torch.stack(p) for p in parts]
    params = [w for layer_i in range(layer.num_layers) for d in range(layer.num_directions) for w in layer.cell_weights(layer_i, d)[:5] if w is not None]
    kernel = getattr(torch._VF, FUNCTIONS[layer.spec.name])
    state_arg = tuple(hx) if len(hx) == 2 else hx[0]
    options = (layer.bias, layer.num_layers, float(layer.dropout), layer.training, layer.bidirectional)
    if lengths is None:
        out, *finals = kernel(x, state_arg, params, *options, False)
    else:
        packed = pack_padded_sequence(x, lengths, enforce_sorted=False)
        order, inverse = packed.sorted_indices, packed.unsorted_indices
        sorted_state = tuple(h.index_select(1, order) for h in hx)
        data, *finals = kernel(packed.data, packed.batch_sizes, sorted_state if len(hx) == 2 else sorted_state[0], params, *options)
        out, _ = pad_packed_sequence(PackedSequence(data, packed.batch_sizes, order, inverse), total_length=x.shape[0])
        finals = [f.index_select(1, inverse) for f in finals]
    return out, list(zip(*(f.unbind(0) for f in finals)))
