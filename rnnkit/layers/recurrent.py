"""One generic layer that drives any cell through time, direction, lengths and stacking.

:class:`RecurrentLayer` owns everything a cell does not: the loop over time
(through an engine), the reverse direction, variable lengths, stacked layers
with dropout between them, and torch.nn's input and state layouts. The cell
family only supplies its step function and :class:`~rnnkit.cells.CellSpec`.

Shapes, as in torch.nn:

* N: batch size, L: sequence length, D: 2 if bidirectional else 1
* H_in: input_size, H: hidden_size, H_out: proj_size if set else hidden_size
* input: (L, N, H_in), (N, L, H_in) if batch_first, or (L, H_in) unbatched
* output: (L, N, D*H_out) in the input's layout
* h_0, h_n: (D*num_layers, N, H_out); c_0, c_n (LSTM): (D*num_layers, N, H)

Layer ``k``'s direction ``d`` reads weights named like torch.nn's
(``weight_ih_l{k}``, ``weight_hh_l{k}_reverse``, ``bias_ih_l{k}``,
``weight_hr_l{k}``), so state dicts load in both directions.
"""

from __future__ import annotations

import contextlib
import functools
import numbers
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import PackedSequence

from rnnkit import engine as engines
from rnnkit import errors
from rnnkit.cells.base import CellSpec, CellWeights, LayerNormWeights, State, init_uniform_, registered_or_attribute
from rnnkit.engine import cudnn, fused
from rnnkit.layers import regularisers, streaming
from rnnkit.layers.sequence import to_time_major


class RecurrentLayer(nn.Module):
    """Stacked, optionally bidirectional recurrence of one cell family.

    Use :class:`rnnkit.RNN`, :class:`rnnkit.LSTM` or :class:`rnnkit.GRU`; they
    fix ``spec`` and take exactly torch.nn's constructor arguments, plus:

    Args:
        layer_norm: use the spec's LayerNorm variant; adds the gains
            ``ln_gain_ih_l{k}``, ``ln_gain_hh_l{k}`` (and, for LSTM,
            ``ln_gain_cell_l{k}``, ``ln_bias_cell_l{k}``). LSTM and GRU only.
        check_finite: raise ``ValueError`` on NaN or Inf in the input or the
            initial state, naming the batch index and time step.
        engine: ``"auto"`` or a name from :data:`rnnkit.engine.ENGINES`.
        weight_drop, input_dropout, layer_dropout, output_dropout, zoneout:
            the AWD-LSTM / haste regularisers, each a float in [0, 1), 0 = off
            (math, masks and eval behaviour in :mod:`rnnkit.layers.regularisers`).
            They are attributes, checked when set, and may be changed between calls.
    """

    # The regularisers' rates, checked whenever they are set.
    weight_drop = regularisers.rate_property("weight_drop")
    input_dropout = regularisers.rate_property("input_dropout")
    layer_dropout = regularisers.rate_property("layer_dropout")
    output_dropout = regularisers.rate_property("output_dropout")
    zoneout = regularisers.rate_property("zoneout")

    def __init__(
        self,
        spec: CellSpec,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        proj_size: int = 0,
        device=None,
        dtype=None,
        *,
        layer_norm: bool = False,
        check_finite: bool = False,
        engine: str = "auto",
        weight_drop: float = 0.0,
        input_dropout: float = 0.0,
        layer_dropout: float = 0.0,
        output_dropout: float = 0.0,
        zoneout: float = 0.0,
    ) -> None:
        super().__init__()
        self.weight_drop, self.input_dropout, self.layer_dropout = weight_drop, input_dropout, layer_dropout  # checked properties
        self.output_dropout, self.zoneout = output_dropout, zoneout
        errors.check_positive_int("input_size", input_size)
        errors.check_positive_int("hidden_size", hidden_size)
        errors.check_positive_int("num_layers", num_layers)
        for name, flag in (("bias", bias), ("batch_first", batch_first), ("bidirectional", bidirectional), ("layer_norm", layer_norm), ("check_finite", check_finite)):
            errors.check_bool(name, flag)
        if isinstance(dropout, bool) or not isinstance(dropout, numbers.Real) or not 0 <= dropout <= 1:
            raise errors.fail("dropout", "a number in [0, 1]", repr(dropout))
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not 0 <= proj_size < hidden_size:
            raise errors.fail("proj_size", f"an int in [0, hidden_size={hidden_size})", repr(proj_size))
        if dropout > 0 and num_layers == 1:
            warnings.warn(
                "dropout adds dropout after all but the last recurrent layer, so non-zero dropout "
                f"expects num_layers greater than 1, but got dropout={dropout} and num_layers={num_layers}",
                UserWarning,
                stacklevel=3,
            )
        self.spec = spec
        self.mode = spec.name.upper()
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.num_layers = num_layers
        self.bias = bias
        self.batch_first = batch_first
        self.dropout = float(dropout)
        self.bidirectional = bidirectional
        self.proj_size = proj_size
        self.layer_norm = layer_norm
        self.check_finite = check_finite
        self.engine = engine
        # The engine function this layer calls once per layer and direction. Public on
        # purpose: tools may swap it for a while (diagnostics add gradient probes so).
        self.run_direction = engines.resolve(engine)

        factory = {"device": device, "dtype": dtype}
        directions = 2 if bidirectional else 1
        output_size = proj_size or hidden_size
        gate_size = spec.gates * hidden_size
        self._flat_weights_names: list[str] = []
        for layer in range(num_layers):
            layer_input = input_size if layer == 0 else output_size * directions
            for direction in range(directions):
                recurrent = spec.recurrent_weights  # the linear-recurrence families have no weight_hh/bias_hh
                shapes = {
                    "weight_ih": (gate_size, layer_input),
                    **({"weight_hh": (gate_size, output_size)} if recurrent else {}),
                    **({"bias_ih": (gate_size,)} if bias else {}),
                    **({"bias_hh": (gate_size,)} if bias and recurrent else {}),
                    **({"weight_hr": (proj_size, hidden_size)} if proj_size else {}),
                    **({"decay_logit": (hidden_size,)} if spec.init_decay_logit is not None else {}),
                    **(self._layer_norm_shapes(gate_size) if layer_norm else {}),
                }
                for kind, shape in shapes.items():
                    name = self._param_name(kind, layer, direction)
                    self.register_parameter(name, nn.Parameter(torch.empty(shape, **factory)))
                    self._flat_weights_names.append(name)
        # Each cell's parameter names, looked up on every call (a plain list: torch.compile traces it as it is).
        self._cell_names = [
            _cell_weight_names(layer, direction, bias, bool(proj_size), layer_norm, spec.state_count == 2, spec.recurrent_weights,
                               spec.init_decay_logit is not None)
            for layer in range(num_layers) for direction in range(directions)
        ]  # fmt: skip
        self.reset_parameters()
        self.flatten_parameters()  # built on CUDA: cuDNN's layout from the start

    # -- parameters ---------------------------------------------------------

    @staticmethod
    def _param_name(kind: str, layer: int, direction: int) -> str:
        return f"{kind}_l{layer}{'_reverse' if direction else ''}"

    @property
    def num_directions(self) -> int:
        return 2 if self.bidirectional else 1

    def _layer_norm_shapes(self, gate_size: int) -> dict[str, tuple[int]]:
        shapes = {"ln_gain_ih": (gate_size,), "ln_gain_hh": (gate_size,)}
        if self.spec.state_count == 2:  # the LSTM's cell state is normalised too
            shapes.update(ln_gain_cell=(self.hidden_size,), ln_bias_cell=(self.hidden_size,))
        return shapes

    def reset_parameters(self) -> None:
        """torch.nn's U(-1/sqrt(H), 1/sqrt(H)) for weights and biases; LayerNorm gains 1, shifts 0."""
        init_uniform_(self.parameters(), self.hidden_size)
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.startswith("ln_gain"):
                    p.fill_(1.0)
                elif name.startswith("ln_bias"):
                    p.zero_()
                elif name.startswith("decay_logit"):
                    self.spec.init_decay_logit(p)

    def cell_weights(self, layer: int, direction: int) -> CellWeights:
        parameters = self._parameters
        names = self._cell_names[layer * self.num_directions + direction]
        # Only the names this configuration has: a missing one would cost an AttributeError in nn.Module.__getattr__.
        w = [None if name is None else registered_or_attribute(self, parameters, name) for name in names]
        return CellWeights(*w[:5], LayerNormWeights(*w[6:]) if self.layer_norm else None, w[5])

    @property
    def _flat_weights(self) -> list[Tensor]:
        """torch.nn's flat list of the weights, in ``_flat_weights_names`` order (third-party code reads it)."""
        return [getattr(self, name) for name in self._flat_weights_names]

    def __prepare_scriptable__(self):
        raise RuntimeError(
            f"torch.jit.script cannot compile rnnkit.{type(self).__name__}: its engines are Python and registered ops. "
            "Use torch.jit.trace (it records the rnnkit::recurrence op), torch.export or torch.compile instead."
        )

    @property
    def all_weights(self) -> list[list[nn.Parameter]]:
        """Parameters grouped per layer and direction, in torch.nn's order."""
        per_cell = len(self._flat_weights_names) // (self.num_layers * self.num_directions)
        names = self._flat_weights_names
        return [[getattr(self, n) for n in names[i : i + per_cell]] for i in range(0, len(names), per_cell)]

    def flatten_parameters(self) -> None:
        """As torch.nn's: on CUDA, make the weights of a layer that goes to cuDNN views of one buffer in its
        layout (:func:`rnnkit.engine.cudnn.flatten`); elsewhere a no-op. Called after ``.to()``/``.cuda()``."""
        cudnn.flatten(self)

    def _apply(self, fn, recurse=True):
        moved = super()._apply(fn, recurse)
        streaming.forget_plan(self)
        self.flatten_parameters()  # as torch.nn.RNNBase after a move: the new tensors are not flat
        return moved

    def __getstate__(self):
        """For pickle and copy: without the single-step path's cached plan, which holds the compiled op (rebuilt on use)."""
        state = super().__getstate__()
        state.pop("_step_plan", None)
        return state

    # -- forward ------------------------------------------------------------

    def forward(self, input: Tensor | PackedSequence, hx=None, lengths=None):
        """Run the layer.

        Args:
            input: see the module docstring for the layouts; or a PackedSequence.
            hx: initial state, zeros if None: ``h_0`` for RNN and GRU,
                ``(h_0, c_0)`` for LSTM.
            lengths: optional valid length of each sequence (list or integer
                tensor, any device). Outputs past a sequence's length are zero
                and its final state is taken at its last valid step, in both
                directions.

        Returns:
            ``(output, h_n)`` for RNN and GRU, ``(output, (h_n, c_n))`` for LSTM.
        """
        if lengths is None and (stepped := self._inference_step(input, hx)) is not None:
            return stepped
        regularisers.refuse_recording(self, self.training)
        with _checks_at_trace_time():
            x, valid, layout = to_time_major(input, self.batch_first, lengths)
            self._check_input(x)
            if self.check_finite:
                errors.check_finite("input", x, valid)
            states = self._initial_states(hx, x, layout.unbatched)
        if x.device.type == "cuda" and cudnn.declines(self, "cuda") is None:  # what cuDNN computes exactly: torch's kernels
            x, finals = cudnn.run_layers(self, x, states, layout.lengths if valid is not None else None)
        else:
            x, finals = self._run_layers(x, states, valid, self.run_direction)
        if layout.packed is not None and self.spec.state_count == 2 and x.device.type == "cpu" and torch.is_autocast_enabled("cpu"):
            # torch.nn's packed LSTM (ATen's lstm.data) is not on CPU autocast's lower-precision list: float32 out
            x, finals = x.float(), [tuple(s.float() for s in final) for final in finals]
        return layout.output(x), streaming.final_state(finals, layout.unbatched)

    def _inference_step(self, input, hx):
        """``forward`` for a single time step without autograd, or None where the general path must run
        (:func:`rnnkit.layers.streaming.inference_step`)."""
        return streaming.inference_step(self, input, hx)

    def _run_layers(self, x: Tensor, states: list[State], valid: Tensor | None, run_direction) -> tuple[Tensor, list[State]]:
        """Run x through every layer and direction with dropout between layers: the last layer's output and each
        (layer, direction)'s final state. ``run_direction`` has the engine's signature.

        The regularisers' masks are drawn here, in this order, whatever the engine: the input's, then per layer
        and direction the weight mask and the zoneout mask, then the masks between layers, then the output's.
        An engine that applies the locked mask after a layer inside its loops (:func:`regularisers.fused_mask`)
        gets it drawn before the layer runs, in the same place in that order (running draws nothing)."""
        finals: list[State] = []
        directions = self.num_directions
        regularised = regularisers.active(self, self.training)
        if regularised:
            x = regularisers.locked_dropout(x, self.input_dropout, self.training)
        output_size = self.proj_size or self.hidden_size
        for layer in range(self.num_layers):
            last = layer == self.num_layers - 1
            calls = []
            for direction in range(directions):
                weights, extra = self.cell_weights(layer, direction), {}
                if regularised:
                    weights = regularisers.drop_weights(weights, self.weight_drop, self.training)
                    if self.zoneout > 0:  # passed only when on: an engine without zoneout then fails loudly
                        extra["zoneout"] = regularisers.zoneout_mask(x, output_size, self.zoneout, self.training)
                calls.append((weights, extra))
            after = regularisers.fused_mask(self, x, last, directions * output_size, run_direction) if regularised else None
            outputs = []
            for direction, (weights, extra) in enumerate(calls):
                if after is not None:  # this direction's columns of the mask
                    extra["output_mask"] = after if directions == 1 else after[:, direction * output_size : (direction + 1) * output_size]
                y, final = run_direction(self.spec, x, states[layer * directions + direction], weights, valid, reverse=direction == 1, **extra)
                outputs.append(y)
                finals.append(final)
            x = outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=-1)
            if self.training and not last and self.dropout != 0.0:
                x = F.dropout(x, self.dropout, training=True)
            if regularised and after is None:
                x = regularisers.locked_dropout(x, self.output_dropout if last else self.layer_dropout, self.training)
        return x, finals

    def _check_input(self, x: Tensor) -> None:
        if x.shape[-1] != self.input_size:
            raise errors.fail("input", f"last dimension input_size={self.input_size}", f"{x.shape[-1]}")
        weight = registered_or_attribute(self, self._parameters, "weight_ih_l0")
        if not _autocast_compatible(x, weight):
            errors.check_like("input", x, weight, "the layer's parameters")

    def _state_names(self) -> tuple[str, ...]:
        return ("hx",) if self.spec.state_count == 1 else ("hx[0] (h_0)", "hx[1] (c_0)")

    def _initial_states(self, hx, x: Tensor, unbatched: bool) -> list[State]:
        """Check ``hx`` and split it into one state tuple per (layer, direction), each part (N, size).

        ``x`` is the input as (..., N, H_in): time-major (L, N, H_in), or one step (N, H_in).
        """
        stacked = self.num_layers * self.num_directions
        batch = x.shape[-2]
        sizes = self.spec.state_sizes(self.hidden_size, self.proj_size or self.hidden_size)
        if hx is None:
            return [tuple(x.new_zeros(batch, size) for size in sizes)] * stacked
        if self.spec.state_count == 1:
            if not isinstance(hx, Tensor):
                raise errors.fail("hx", "a Tensor h_0", type(hx).__name__)
            parts = (hx,)
        else:
            if not isinstance(hx, (tuple, list)) or len(hx) != 2 or not (isinstance(hx[0], Tensor) and isinstance(hx[1], Tensor)):
                raise errors.fail("hx", "a tuple (h_0, c_0) of two Tensors", type(hx).__name__)
            parts = hx
        checked = []
        for name, tensor, size in zip(self._state_names(), parts, sizes):
            expected = (stacked, size) if unbatched else (stacked, batch, size)
            if tensor.shape != expected or (tensor.dtype != x.dtype and not _autocast_compatible(tensor, x)) or tensor.device != x.device:
                self._reject_state(name, tensor, expected, x, unbatched)
            if self.check_finite:
                errors.check_finite(name, tensor.unsqueeze(1) if unbatched else tensor, first_dim="layer*direction index")
            checked.append(tensor.split(1) if unbatched else tensor.unbind(0))  # unbatched: (1, size) parts, a batch of one
        return list(zip(*checked))

    @staticmethod
    def _reject_state(name: str, tensor: Tensor, expected: tuple[int, ...], x: Tensor, unbatched: bool) -> None:
        """Raise the error that says what is wrong with a state tensor that is not ``expected`` or not like ``x``."""
        rank = len(expected)
        legend = "(num_layers * num_directions, hidden)" if unbatched else "(num_layers * num_directions, batch, hidden)"
        if tensor.dim() != rank:
            kind = "unbatched" if unbatched else "batched"
            raise errors.fail(name, f"a {rank}-D tensor {legend} for {kind} input", f"{tensor.dim()}-D shape {tuple(tensor.shape)}")
        if not unbatched and tensor.shape[1] != expected[1]:
            raise errors.fail(name, f"batch size {expected[1]} to match input", f"{tensor.shape[1]} (shape {tuple(tensor.shape)})")
        errors.check_shape(name, tensor, expected, legend)
        if not _autocast_compatible(tensor, x):
            errors.check_like(name, tensor, x, "input")
        errors.check_like(name, tensor.to(x.dtype), x, "input")  # the device
        raise AssertionError(f"{name}: rejected without a reason")  # unreachable: the caller saw a difference

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        defaults = {"num_layers": 1, "bias": True, "batch_first": False, "dropout": 0.0, "bidirectional": False, "proj_size": 0, "layer_norm": False, "engine": "auto"}
        defaults.update(dict.fromkeys(regularisers.NAMES, 0.0))
        for key, default in defaults.items():
            value = getattr(self, key)
            if value != default:
                s += f", {key}={value!r}"
        return s


_WEIGHT_KINDS = ("weight_ih", "weight_hh", "bias_ih", "bias_hh", "weight_hr", "decay_logit")
_LAYER_NORM_KINDS = ("ln_gain_ih", "ln_gain_hh", "ln_gain_cell", "ln_bias_cell")


@functools.cache
def _cell_weight_names(layer: int, direction: int, bias: bool, projected: bool, layer_norm: bool, has_cell: bool,
                       recurrent: bool = True, decay: bool = False) -> tuple[str | None, ...]:  # fmt: skip
    """The parameter names of one cell: the five weights in :class:`CellWeights` order, ``decay_logit``, then,
    with ``layer_norm``, in :class:`LayerNormWeights` order; None for a kind that this configuration does not have."""
    present = {"weight_hh": recurrent, "bias_ih": bias, "bias_hh": bias and recurrent, "weight_hr": projected,
               "decay_logit": decay, "ln_gain_cell": has_cell, "ln_bias_cell": has_cell}  # fmt: skip
    kinds = _WEIGHT_KINDS + (_LAYER_NORM_KINDS if layer_norm else ())
    return tuple(RecurrentLayer._param_name(kind, layer, direction) if present.get(kind, True) else None for kind in kinds)


@contextlib.contextmanager
def _checks_at_trace_time():
    """Input checks under ``torch.jit.trace`` compare traced sizes with Python numbers, and the tracer warns that
    those comparisons are not recorded. That is what is meant: the checks validate the example input at trace
    time, and the recorded ops serve any batch size and length. Elsewhere this does nothing."""
    if not torch.jit.is_tracing():
        yield
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        yield


def _autocast_compatible(tensor: Tensor, reference: Tensor) -> bool:
    """Whether two tensors of different dtypes may meet because autocast casts them, as torch.nn allows:
    under autocast on their device, float32 and the autocast dtype mix (the engine keeps the state in float32)."""
    device = reference.device.type
    if tensor.device != reference.device or not torch.is_autocast_enabled(device):
        return False
    allowed = (torch.float32, torch.get_autocast_dtype(device))
    return tensor.dtype in allowed and reference.dtype in allowed
