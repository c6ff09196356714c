"""ONNX export of the fused engine's ops as native ONNX ``LSTM``, ``GRU`` and ``RNN`` nodes.

``rnnkit::recurrence`` (one layer and direction) maps onto one ONNX node with
``direction="forward"`` or ``"reverse"``:

* weights ``W = W_ih``, ``R = W_hh`` and ``B = [b_ih, b_hh]`` with a leading direction axis, and
  the gate blocks reordered: torch's LSTM ``i f g o`` is ONNX's ``i o f c``; torch's GRU ``r z n``
  is ONNX's ``z r h``, with ``linear_before_reset=1`` (torch applies the reset gate to
  ``W_hn h + b_hn``);
* ``sequence_lens`` from the validity mask (``lengths=``), ``initial_h`` / ``initial_c`` from the
  state; ONNX, like rnnkit, zeroes the output past a sequence's end and starts the reverse
  direction at its last valid step;
* outputs ``Y`` (L, 1, N, H) squeezed to the output, ``Y_h``/``Y_c`` to the final state.

Two exporters, two registrations:

* ``torch.onnx.export(..., dynamo=False)`` (TorchScript): :func:`register_symbolic`, done on import;
* ``torch.onnx.export(..., dynamo=True)``: pass ``custom_translation_table=rnnkit.onnx_translation_table()``.
  Without it the exporter has no rule for the op and fails.

Not exportable as native nodes, and refused with an error that says so: ``proj_size`` (ONNX's
LSTM has no projection), ``zoneout`` (no such input) and the LayerNorm variants (``rnnkit::layer_norm_lstm``, and the
hoisted loop of the LayerNorm GRU, which records every step).
"""

from __future__ import annotations

import torch

from rnnkit.ops.kinds import GRU, LSTM, RNN_RELU, RNN_TANH

# Position in torch's gate layout of each ONNX gate block, in ONNX's order.
ONNX_GATE_ORDER = {LSTM: (0, 3, 1, 2), GRU: (1, 0, 2), RNN_TANH: (0,), RNN_RELU: (0,)}
NO_PROJECTION = "proj_size has no native ONNX node (ONNX's LSTM has no projection); export a model without proj_size"
NO_ZONEOUT = "zoneout has no native ONNX node (ONNX's LSTM, GRU and RNN have no such input); export a model with zoneout=0"
NO_OUTPUT_MASK = "a locked dropout mask on the output is training noise, not part of a deployed model; call model.eval() before exporting"
OPSET = 18


def _symbolic(g, kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, valid, reverse, zoneout=None, output_mask=None):
    from torch.onnx import symbolic_helper as helper

    if zoneout is not None and not helper._is_none(zoneout):
        raise torch.onnx.errors.SymbolicValueError(NO_ZONEOUT, x)
    if output_mask is not None and not helper._is_none(output_mask):
        raise torch.onnx.errors.SymbolicValueError(NO_OUTPUT_MASK, x)
    kind = helper._get_const(kind, "i", "kind")
    reverse = helper._get_const(reverse, "b", "reverse")
    if not helper._is_none(w_hr):
        raise torch.onnx.errors.SymbolicValueError(NO_PROJECTION, x)
    hidden = helper._get_tensor_sizes(w_hh)[1]
    order = ONNX_GATE_ORDER[kind]

    def reordered(w):
        if len(order) == 1:
            return w
        blocks = [helper._slice_helper(g, w, axes=[0], starts=[i * hidden], ends=[(i + 1) * hidden]) for i in order]
        return g.op("Concat", *blocks, axis_i=0)

    def unsqueezed(v):
        return helper._unsqueeze_helper(g, v, [0])

    def absent():
        node = g.op("prim::Constant")  # a None of optional type: the exporter leaves the input empty
        node.setType(torch._C.OptionalType.ofTensor())
        return node

    bias = absent() if helper._is_none(b_ih) else unsqueezed(g.op("Concat", reordered(b_ih), reordered(b_hh), axis_i=0))
    lengths = absent()
    if not helper._is_none(valid):
        as_int = g.op("Cast", valid, to_i=torch.onnx.TensorProtoDataType.INT32)
        lengths = g.op("ReduceSum", as_int, g.op("Constant", value_t=torch.tensor([0])), keepdims_i=0)
    inputs = [x, unsqueezed(reordered(w_ih)), unsqueezed(reordered(w_hh)), bias, lengths, unsqueezed(h0)]
    attributes = {"hidden_size_i": hidden, "direction_s": "reverse" if reverse else "forward"}
    if kind == LSTM:
        y, h_n, c_n = g.op("LSTM", *inputs, unsqueezed(c0), outputs=3, **attributes)
        c_n = helper._squeeze_helper(g, c_n, [0])
    else:
        if kind == GRU:
            y, h_n = g.op("GRU", *inputs, outputs=2, linear_before_reset_i=1, **attributes)
        else:
            y, h_n = g.op("RNN", *inputs, outputs=2, activations_s=["Tanh" if kind == RNN_TANH else "Relu"], **attributes)
        c_n = g.op("Constant", value_t=torch.empty(0))
    return helper._squeeze_helper(g, y, [1]), helper._squeeze_helper(g, h_n, [0]), c_n


def _refuse_layer_norm(g, *args):
    raise torch.onnx.errors.SymbolicValueError(LAYER_NORM_REFUSED, args[0])


def _refuse_linear_recurrence(g, *args):
    raise torch.onnx.errors.SymbolicValueError(LINEAR_RECURRENCE_REFUSED, args[1])


def register_symbolic() -> None:
    """Register the TorchScript exporter's rules for rnnkit's ops (for ``dynamo=False``)."""
    for opset in range(14, 22):
        torch.onnx.register_custom_op_symbolic("rnnkit::recurrence", _symbolic, opset)
        torch.onnx.register_custom_op_symbolic("rnnkit::layer_norm_lstm", _refuse_layer_norm, opset)
        torch.onnx.register_custom_op_symbolic("rnnkit::hoisted_recurrence", _refuse_layer_norm, opset)
        torch.onnx.register_custom_op_symbolic("rnnkit::linear_recurrence", _refuse_linear_recurrence, opset)


def _translation(kind, x, h0, c0, w_ih, w_hh, b_ih, b_hh, w_hr, valid, reverse, zoneout=None, output_mask=None):
    """rnnkit::recurrence for the dynamo exporter, as onnxscript ops."""
    from onnxscript import opset18 as op

    if zoneout is not None:
        raise ValueError(NO_ZONEOUT)
    if output_mask is not None:
        raise ValueError(NO_OUTPUT_MASK)
    if w_hr is not None:
        raise ValueError(NO_PROJECTION)
    hidden = w_hh.shape[1]
    order = ONNX_GATE_ORDER[kind]

    def reordered(w):
        if len(order) == 1:
            return w
        blocks = [op.Slice(w, op.Constant(value_ints=[i * hidden]), op.Constant(value_ints=[(i + 1) * hidden]), op.Constant(value_ints=[0])) for i in order]
        return op.Concat(*blocks, axis=0)

    def unsqueezed(v):
        return op.Unsqueeze(v, op.Constant(value_ints=[0]))

    bias = None if b_ih is None else unsqueezed(op.Concat(reordered(b_ih), reordered(b_hh), axis=0))
    lengths = None if valid is None else op.ReduceSum(op.Cast(valid, to=6), op.Constant(value_ints=[0]), keepdims=0)  # 6: INT32
    weights = (x, unsqueezed(reordered(w_ih)), unsqueezed(reordered(w_hh)))
    optional = {"B": bias, "sequence_lens": lengths, "initial_h": unsqueezed(h0)}
    attributes = {"hidden_size": hidden, "direction": "reverse" if reverse else "forward"}
    squeeze = op.Constant(value_ints=[0])
    if kind == LSTM:
        y, h_n, c_n = op.LSTM(*weights, initial_c=unsqueezed(c0), **optional, **attributes)
        c_n = op.Squeeze(c_n, squeeze)
    else:
        if kind == GRU:
            y, h_n = op.GRU(*weights, linear_before_reset=1, **optional, **attributes)
        else:
            y, h_n = op.RNN(*weights, activations=["Tanh" if kind == RNN_TANH else "Relu"], **optional, **attributes)
        c_n = op.Constant(value_floats=[])
    return op.Squeeze(y, op.Constant(value_ints=[1])), op.Squeeze(h_n, squeeze), c_n


LAYER_NORM_REFUSED = "the LayerNorm variants have no native ONNX node; rnnkit refuses to export them rather than unroll them"


LINEAR_RECURRENCE_REFUSED = ("minGRU, minLSTM and RG-LRU have no native ONNX node, and rnnkit does not export them as an unrolled "
                             "loop; torch.export (rnnkit export --format pt2) keeps their scan as one op")


def _refuse_layer_norm_translation(*args, **kwargs):
    raise ValueError(LAYER_NORM_REFUSED)


def _refuse_linear_recurrence_translation(*args, **kwargs):
    raise ValueError(LINEAR_RECURRENCE_REFUSED)


def translation_table() -> dict:
    """``custom_translation_table`` for ``torch.onnx.export(..., dynamo=True)``: native ONNX nodes for rnnkit's ops,
    and a clear refusal for the LayerNorm variants' and the linear recurrences' ops."""
    refused = (torch.ops.rnnkit.layer_norm_lstm.default, torch.ops.rnnkit.hoisted_recurrence.default)
    return {torch.ops.rnnkit.recurrence.default: _translation, **{op: _refuse_layer_norm_translation for op in refused},
            torch.ops.rnnkit.linear_recurrence.default: _refuse_linear_recurrence_translation}  # fmt: skip
