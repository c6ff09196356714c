"""The cell contract, shared by every cell family.

A cell is one time step, ``(x_t, state) -> (y_t, state)``. It knows nothing of
time, direction, padding or stacking: :class:`rnnkit.layers.RecurrentLayer` owns
those. Each family (``rnn.py``, ``lstm.py``, ``gru.py``) supplies

* a pure step function ``step(x_t, state, weights) -> (y_t, state)``, which is
  the whole of its math, and
* a :class:`CellSpec` that tells the layer and the engine how many gates the
  family has and how many tensors make up its state.

The step function takes its weights as an argument instead of reading them
from a module. That is what lets one layer own torch.nn-named parameters
(``weight_ih_l0``, ``weight_hh_l1_reverse``, ...) and still drive the same
math as the stand-alone cells, and what lets a faster engine replace the loop
without touching either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import errors, ops

State = tuple[Tensor, ...]


class LayerNormWeights(NamedTuple):
    """Parameters of the LayerNorm variants (haste's LayerNormLSTM and LayerNormGRU).

    * ``gain_ih``, ``gain_hh``: (G*H,), gains of the normalised input and recurrent projections
    * ``gain_cell``, ``bias_cell``: (H,), LSTM only, normalisation of the cell state
    """

    gain_ih: Tensor
    gain_hh: Tensor
    gain_cell: Tensor | None = None
    bias_cell: Tensor | None = None


class CellWeights(NamedTuple):
    """The weights of one cell: one layer in one direction.

    Shapes, with G the family's gate count, H the hidden size, H_in the input
    size and H_out the output size (``proj_size`` if set, else H):

    * ``weight_ih``: (G*H, H_in)
    * ``weight_hh``: (G*H, H_out)
    * ``bias_ih``, ``bias_hh``: (G*H,) or None
    * ``weight_hr``: (H_out, H), LSTM projection only, else None
    * ``layer_norm``: the LayerNorm variants' gains, else None
    * ``decay_logit``: (H,), RG-LRU's Λ (a = σ(Λ)), else None

    The linear-recurrence families (:mod:`rnnkit.cells.minimal`) have no recurrent
    weights: ``weight_hh`` and ``bias_hh`` are None there.
    """

    weight_ih: Tensor
    weight_hh: Tensor
    bias_ih: Tensor | None
    bias_hh: Tensor | None
    weight_hr: Tensor | None = None
    layer_norm: LayerNormWeights | None = None
    decay_logit: Tensor | None = None


StepFn = Callable[[Tensor, State, CellWeights], tuple[Tensor, State]]


@dataclass(frozen=True)
class CellSpec:
    """What the layer and the engine need to know about a cell family.

    ``name`` is the engine's key: ``"rnn_tanh"``, ``"rnn_relu"``, ``"lstm"`` or
    ``"gru"``. ``gates`` is G above. ``state_sizes`` maps (hidden_size,
    output_size) to the feature size of each state tensor, in order: ``(h,)``
    for RNN and GRU, ``(h, c)`` for LSTM.
    """

    name: str
    gates: int
    state_count: int
    step: StepFn
    # Optional split of ``step`` = ``recur(project_input(x_t, w), state, w)``. The input
    # projection does not depend on the state, so an engine may compute it for all
    # steps at once (one GEMM) and loop over ``recur`` only.
    project_input: Callable[[Tensor, CellWeights], Tensor] | None = None
    recur: StepFn | None = None
    # Linear-recurrence families only (minGRU, minLSTM, RG-LRU; rnnkit/cells/minimal.py): the step is
    # h_t = a_t * h_{t-1} + b_t with (a_t, b_t) = coefficients(project_input(x_t, w), w). Such a family
    # has no weight_hh/bias_hh, and an engine may scan the recurrence in parallel over time.
    coefficients: Callable[[Tensor, CellWeights], tuple[Tensor, Tensor]] | None = None
    # Set for a family with a per-feature decay parameter Λ (H,), ``decay_logit``: initialises it in place.
    init_decay_logit: Callable[[Tensor], None] | None = None

    @property
    def recurrent_weights(self) -> bool:
        """Whether the family owns ``weight_hh`` and ``bias_hh`` (every family whose gates read h_{t-1})."""
        return self.coefficients is None

    def state_sizes(self, hidden_size: int, output_size: int) -> tuple[int, ...]:
        return (output_size, hidden_size)[: self.state_count]


def linear(x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
    """``x W^T + b``, the one matrix product every gate is built from (one fused GEMM with its bias)."""
    return F.linear(x, weight, bias)


LAYER_NORM_EPS = 1e-5


def normalized_linear(x: Tensor, weight: Tensor, gain: Tensor, bias: Tensor | None) -> Tensor:
    """``LN(x W^T) * gain + b``: the LayerNorm variants' projection, normalised over all G*H gates."""
    out = F.layer_norm(x @ weight.t(), (weight.shape[0],), gain, None, LAYER_NORM_EPS)
    return out if bias is None else out + bias


def init_uniform_(parameters, hidden_size: int) -> None:
    """torch.nn's RNN initialisation: every weight and bias ~ U(-1/sqrt(H), 1/sqrt(H))."""
    bound = 1.0 / math.sqrt(hidden_size) if hidden_size > 0 else 0.0  # as torch.nn for a zero-size cell
    with torch.no_grad():
        for p in parameters:
            p.uniform_(-bound, bound)


def registered_or_attribute(module: nn.Module, parameters: dict, name: str):
    """A parameter from the registry (no nn.Module.__getattr__: a single step is mostly overhead), else the
    attribute, for code that swaps a parameter for a plain tensor (weight dropout, as in AWD-LSTM)."""
    value = parameters.get(name)
    return value if value is not None else getattr(module, name, None)


class RecurrentCell(nn.Module):
    """Base of the stand-alone cells: owns weights, checks input, calls the step.

    Subclasses set ``spec`` and convert between torch.nn's forward convention
    (``hx`` is a tensor, or an ``(h, c)`` pair for LSTM) and the state tuple.
    """

    spec: CellSpec

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        bias: bool = True,
        proj_size: int = 0,
        device=None,
        dtype=None,
    ) -> None:
        super().__init__()
        errors.check_positive_int("input_size", input_size)
        if isinstance(hidden_size, bool) or not isinstance(hidden_size, int) or hidden_size < 0:  # 0 as torch.nn: (N, 0) states
            raise errors.fail("hidden_size", "a non-negative int", repr(hidden_size))
        errors.check_bool("bias", bias)
        if isinstance(proj_size, bool) or not isinstance(proj_size, int) or not (proj_size == 0 or 0 < proj_size < hidden_size):
            raise errors.fail("proj_size", f"an int in [0, hidden_size={hidden_size})", repr(proj_size))
        self.input_size = input_size
        self.hidden_size = hidden_size
        self.bias = bias
        self.proj_size = proj_size
        factory = {"device": device, "dtype": dtype}
        output_size = proj_size or hidden_size
        gate_size = self.spec.gates * hidden_size
        recurrent = self.spec.recurrent_weights
        self.weight_ih = nn.Parameter(torch.empty(gate_size, input_size, **factory))
        self.register_parameter("weight_hh", nn.Parameter(torch.empty(gate_size, output_size, **factory)) if recurrent else None)
        self.register_parameter("bias_ih", nn.Parameter(torch.empty(gate_size, **factory)) if bias else None)
        self.register_parameter("bias_hh", nn.Parameter(torch.empty(gate_size, **factory)) if bias and recurrent else None)
        decay = self.spec.init_decay_logit is not None
        self.register_parameter("decay_logit", nn.Parameter(torch.empty(hidden_size, **factory)) if decay else None)
        if proj_size:
            self.weight_hr = nn.Parameter(torch.empty(proj_size, hidden_size, **factory))
        else:
            self.register_parameter("weight_hr", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_uniform_(self.parameters(), self.hidden_size)
        if self.decay_logit is not None:
            self.spec.init_decay_logit(self.decay_logit)

    @property
    def weights(self) -> CellWeights:
        parameters = self._parameters  # not five nn.Module.__getattr__ calls: a single step is mostly overhead
        get = registered_or_attribute
        return CellWeights(get(self, parameters, "weight_ih"), get(self, parameters, "weight_hh"), get(self, parameters, "bias_ih"),
                           get(self, parameters, "bias_hh"), get(self, parameters, "weight_hr"), None,
                           get(self, parameters, "decay_logit"))  # fmt: skip

    def initial_state(self, batch_size: int | None = None) -> State:
        """Zero state; ``batch_size=None`` gives the unbatched form."""
        batch = () if batch_size is None else (batch_size,)
        sizes = self.spec.state_sizes(self.hidden_size, self.proj_size or self.hidden_size)
        return tuple(self.weight_ih.new_zeros(*batch, size) for size in sizes)

    def step(self, x_t: Tensor, state: State) -> tuple[Tensor, State]:
        """One step under the cell contract, ``(x_t, state) -> (y_t, state)``."""
        return self.spec.step(x_t, state, self.weights)

    def _run(self, input: Tensor, hx: State | None) -> State:
        if input.dim() not in (1, 2):
            raise errors.fail("input", "a 1-D (unbatched) or 2-D (batched) tensor", f"{input.dim()}-D shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise errors.fail("input", f"last dimension input_size={self.input_size}", f"shape {tuple(input.shape)}")
        errors.check_like("input", input, self.weight_ih, "the cell's parameters")
        batch = input.shape[0] if input.dim() == 2 else None
        if hx is None:
            state = self.initial_state(batch)
        else:
            sizes = self.spec.state_sizes(self.hidden_size, self.proj_size or self.hidden_size)
            names = ("hx", "cx")
            for name, tensor, size in zip(names, hx, sizes):
                expected = (size,) if batch is None else (batch, size)
                legend = "(hidden,)" if batch is None else "(batch, hidden)"
                errors.check_shape(name, tensor, expected, legend)
                errors.check_like(name, tensor, input, "input")
            state = tuple(hx)
        fast = self._compiled_step(input, state)
        return fast if fast is not None else self.step(input, state)[1]

    def _compiled_step(self, x: Tensor, state: State) -> State | None:
        """The new state from the fused engine's one-step kernel, or None where it does not apply
        (see :func:`rnnkit.ops.single_step`)."""
        if x.dim() == 2:
            return ops.single_step(self.spec.name, x, state, self.weights)
        stepped = ops.single_step(self.spec.name, x.unsqueeze(0), tuple(s.unsqueeze(0) for s in state), self.weights)
        return None if stepped is None else tuple(s.squeeze(0) for s in stepped)

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if not self.bias:
            s += ", bias=False"
        if self.proj_size:
            s += f", proj_size={self.proj_size}"
        return s
