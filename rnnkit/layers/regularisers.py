r"""The recurrent layers' regularisers: weight drop, locked (variational) dropout and zoneout.

Every option is a float p in [0, 1); 0 is off and leaves the layer exactly as it was.
Masks come from a counter-based generator seeded from torch's global generator (:mod:`rnnkit.ops.random_masks`), drawn by the layer (``RecurrentLayer._run_layers``) in a fixed
order whatever the engine, so a seed fixes them and the RNG state in a checkpoint resumes
them (docs/design/regularisers.md). Shapes: L steps, N batch, F features, H_out the layer's
output size per direction.

* ``weight_drop`` (DropConnect on ``weight_hh_l{k}``, AWD-LSTM's WeightDrop, Merity et al.
  2018, §4.1): ``W̃_hh = W_hh ⊙ M / (1-p)``, ``M ~ Bernoulli(1-p)`` entrywise, one M per forward
  call, layer and direction, shared by every step. Eval mode: ``W_hh``.
* ``input_dropout``, ``layer_dropout``, ``output_dropout`` (locked dropout, Gal & Ghahramani
  2016; Merity et al. 2018, §4.2) on the layer's input, between stacked layers and on the last
  layer's output: ``x̃_t = x_t ⊙ m / (1-p)`` with one ``m ~ Bernoulli(1-p)`` of shape (1, N, F)
  for all t. Eval mode: the identity. torch.nn's ``dropout`` (a new mask per element,
  between layers) keeps its meaning and can be combined with them.
* ``zoneout`` (Krueger et al. 2017, §2): per step and unit the hidden state keeps its previous
  value with probability p, ``h_t = m_t ⊙ h_{t-1} + (1-m_t) ⊙ h̃_t``, ``m_t ~ Bernoulli(p)``
  of shape (L, N, H_out), ``h̃_t`` the cell's new state; the output is ``h_t``. Eval mode uses
  the expectation ``m_t = p`` (the paper's test-time rule, and haste's), so it is not the
  identity. The LSTM's cell state ``c`` is not zoned out (as in haste; the paper zones it out
  with a rate of its own). The engines apply it per step (:func:`rnnkit.engine.reference.run_direction`).

Masks are per forward call: a sequence fed one step per call in training mode draws new masks
at every step (feed whole windows; truncated BPTT windows each draw their own, as AWD-LSTM's
batches do).

Reference loop of one stacked layer in training mode (what the layer computes)::

    x = x * locked_mask(x, input_dropout)
    for k in range(num_layers):
        W_hh = dropout(W_hh_k, weight_drop)                  # once per call
        m = bernoulli(zoneout, (L, N, H_out))
        for t: h̃ = cell(x_t, h, W_hh); h = m_t*h + (1-m_t)*h̃; y_t = h
        x = y;  if k < num_layers-1: x = dropout(x); x = x * locked_mask(x, layer_dropout)
    x = x * locked_mask(x, output_dropout)
"""

from __future__ import annotations

import numbers
import torch
from torch import Tensor

from rnnkit import errors
from rnnkit.cells.base import CellWeights
from rnnkit.ops import random_masks

NAMES = ("weight_drop", "input_dropout", "layer_dropout", "output_dropout", "zoneout")


def check_rate(name: str, value: object) -> float:
    """``value`` as a float, if it is a probability in [0, 1); else the standard error naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 <= value < 1:
        raise errors.fail(name, "a float in [0, 1) (0 turns it off)", repr(value))
    return float(value)


def rate_property(name: str) -> property:
    """An attribute that holds a rate and checks every value assigned to it (``layer.zoneout = 1.5`` fails there)."""
    slot = f"_{name}_rate"

    def get(self) -> float:
        return self.__dict__[slot]

    def set(self, value) -> None:
        self.__dict__[slot] = check_rate(name, value)

    return property(get, set, doc=f"The layer's {name} rate, in [0, 1); see :mod:`rnnkit.layers.regularisers`.")


def active(owner, training: bool) -> bool:
    """Whether a forward call of ``owner`` (a layer, or anything with the five rates as attributes) in this mode draws a
    mask or mixes a state (zoneout acts in eval mode too, with its expectation)."""
    return owner.zoneout > 0 or (training and (owner.weight_drop > 0 or owner.input_dropout > 0 or owner.layer_dropout > 0 or owner.output_dropout > 0))


def settings(owner) -> dict[str, float]:
    """The rates of ``owner`` that are on."""
    return {name: getattr(owner, name) for name in NAMES if getattr(owner, name) > 0}


def bernoulli(shape, p: float, like: Tensor) -> Tensor:
    """1.0 with probability p, else 0.0, in ``like``'s dtype and device, from the counter-based generator
    (:mod:`rnnkit.ops.random_masks`; one seed drawn from torch's generator per mask)."""
    return _mask(shape, p, 1.0, 0.0, like)


def scaled_keep(shape, p: float, like: Tensor) -> Tensor:
    """A dropout mask: 1/(1-p) with probability 1-p, else 0, so that its mean is 1."""
    return _mask(shape, p, 0.0, 1 / (1 - p), like)


def _mask(shape, p: float, below: float, above: float, like: Tensor) -> Tensor:
    """Masks are made in float32 for a low-precision ``like`` (under autocast a layer's input can be the previous
    layer's bf16 output) and then cast, so that a seed draws the same masks with and without autocast."""
    dtype = like.dtype if like.dtype in (torch.float32, torch.float64) else torch.float32
    mask = random_masks.random_mask(random_masks.draw_seed(like.device), shape, p, below, above, dtype, like.device)
    return mask.to(like.dtype)


def locked_dropout(x: Tensor, p: float, training: bool) -> Tensor:
    """``x`` (L, N, F) or one step (N, F) times one (N, F) mask of Bernoulli(1-p)/(1-p), the same at every step."""
    if not training or p == 0:
        return x
    return x * scaled_keep(x.shape[-2:], p, x)


def drop_weights(weights: CellWeights, p: float, training: bool) -> CellWeights:
    """The cell's weights with DropConnect on ``weight_hh`` (one mask for the whole call); the same weights otherwise."""
    if not training or p == 0:
        return weights
    w_hh = weights.weight_hh
    return weights._replace(weight_hh=w_hh * scaled_keep(w_hh.shape, p, w_hh))


def zoneout_mask(x: Tensor, size: int, p: float, training: bool) -> Tensor | None:
    """Keep-previous masks (L, N, size) for ``x`` (L, N, F); None if off. Training: bool flags, True with probability p
    (the same draw as :func:`bernoulli`'s 1.0s; a quarter of a float32 mask's memory, and the engines read them as
    0/1 weights). Eval: the constant weight p, in ``x``'s dtype."""
    if p == 0:
        return None
    shape = (x.shape[0], x.shape[1], size)
    if training:
        return random_masks.random_mask(random_masks.draw_seed(x.device), shape, p, 1.0, 0.0, torch.bool, x.device)
    return torch.full(shape, p, dtype=x.dtype, device=x.device)


def fused_mask(owner, x: Tensor, last: bool, size: int, run_direction) -> Tensor | None:
    """The locked dropout mask (N, size) after a layer (the output's after the last, else ``layer_dropout``'s), drawn now
    for ``run_direction`` to apply as its loops write the output (and to the output's gradient), or None where the
    layer applies it after the layer: the engine does not declare ``fuses_output_mask``, the rate is 0, torch.nn's
    ``dropout`` would draw between the layer and the mask, or autocast changes the output's dtype."""
    p = owner.output_dropout if last else owner.layer_dropout
    if not owner.training or p == 0 or not getattr(run_direction, "fuses_output_mask", False):
        return None
    if (not last and owner.dropout != 0) or torch.is_autocast_enabled(x.device.type):
        return None
    return scaled_keep((x.shape[-2], size), p, x)


def refuse_recording(owner, training: bool) -> None:
    """Refuse torch.jit.trace and torch.export (and the ONNX exporters built on them) of a layer in training mode with
    random masks: a recorded program would either freeze one draw or carry training noise into deployment."""
    if training and active(owner, True) and (torch.jit.is_tracing() or torch.compiler.is_exporting()):
        on = ", ".join(f"{name}={value}" for name, value in settings(owner).items())
        raise ValueError(
            f"rnnkit layer with {on} in training mode cannot be traced or exported: its masks are random per call; "
            "call model.eval() before exporting (torch.compile of a training step is supported)"
        )
