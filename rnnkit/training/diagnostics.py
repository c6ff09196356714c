r"""Gradient-flow diagnostics: how far back in time a loss's gradient reaches.

For a recurrence ``h_t = F(h_{t-1}, x_t)`` read out by a loss ``L``, the total
derivative with respect to a hidden state sums the direct path through the
output ``y_t = h_t`` and the path through every later state::

    ∂L/∂h_t = ∂ℓ/∂y_t + J_{t+1}^T ∂L/∂h_{t+1},    J_s = ∂h_s/∂h_{s-1}

so the part of ``∂L/∂h_t`` that comes from a loss at step T carries the
product ``J_{t+1}^T ⋯ J_T^T``. For the Elman RNN, ``J_s = diag(1 - h_s²) W_hh``:
when its norm stays below 1 (torch.nn's initialisation gives ``W_hh`` a
spectral radius near 1/√3), ``‖∂L/∂h_t‖`` shrinks geometrically with the
distance ``T - t`` (vanishing gradients; Hochreiter, 1991; Bengio et al.,
1994); when ``W_hh`` is scaled up, it can grow geometrically instead
(exploding gradients; Pascanu et al., 2013, §2). The LSTM's cell state and the GRU's
update gate add a nearly additive path: the direct part of ``∂c_t/∂c_{t-1}``
is ``diag(f_t)``, that of the GRU's ``∂h_t/∂h_{t-1}`` is ``diag(z_t)``, and a
gate held near 1 carries the gradient back almost undiminished.

**How it is measured.** :func:`probe_hidden_states` adds a zero tensor
``δ_t`` with ``requires_grad`` to every hidden state, ``h_t ← h_t + δ_t``. The
forward pass is unchanged (adding zero is exact) and ``∂L/∂δ_t = ∂L/∂h_t``,
the total derivative above, from one ordinary backward pass. It works by
swapping, for the duration of a ``with`` block, the layer's engine for a
per-step loop that adds the probes; everything else (layouts, ``lengths=``,
stacking, both directions, dropout) is the layer's own forward. ``‖·‖`` is the
Frobenius norm of the (N, H_out) gradient of a whole batch at one step.

Also here, for a trainer's run: :func:`measure_gradient_flow` (hidden-state and
per-layer parameter gradient norms of a model under the trainer's contract),
:class:`GradientFlowRecorder` (a callback writing them to CSV during
training), and the long-range tasks that make the difference visible:
:func:`rnnkit.data.synthetic.adding_problem` and :func:`~rnnkit.data.synthetic.copy_task`,
learned by :class:`rnnkit.models.long_range.AddingModel` and :class:`~rnnkit.models.long_range.CopyModel`.
"""

from __future__ import annotations

import contextlib
import csv
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.cells.base import CellSpec, CellWeights, State
from rnnkit.layers import RecurrentLayer
from rnnkit.training.callbacks import Callback

# -- probing hidden states --------------------------------------------------------------


class HiddenStateProbes:
    """The probes ``δ_t`` added to one layer's hidden states while probing is on.

    Probes are grouped by recurrent layer and direction, named as the layer's
    parameters are (``"l0"``, ``"l1_reverse"``). If the layer runs several
    times inside the ``with`` block (a model that streams chunks), each
    name's probes are concatenated along time in call order.
    """

    def __init__(self, layer: RecurrentLayer) -> None:
        # The engine receives a CellWeights, not a (layer, direction) index; the
        # identity of weight_hh tells which one it is running.
        self._names = {
            id(layer.cell_weights(k, d).weight_hh): f"l{k}{'_reverse' if d else ''}"
            for k in range(layer.num_layers)
            for d in range(layer.num_directions)
        }
        self._probes: dict[str, list[Tensor]] = {}

    @property
    def tensors(self) -> list[Tensor]:
        """Every probe, in a fixed order (name, then time): what to differentiate against."""
        return [p for probes in self._probes.values() for p in probes]

    def split(self, grads) -> dict[str, Tensor]:
        """Regroup gradients given in :attr:`tensors` order: name -> (L, N, H_out), time-major.

        A None gradient (a state the loss does not depend on, such as a reverse
        direction the model never reads) becomes zeros.
        """
        grouped, i = {}, 0
        for name, probes in self._probes.items():
            pairs = zip(grads[i : i + len(probes)], probes)
            grouped[name] = torch.stack([torch.zeros_like(p) if g is None else g for g, p in pairs])
            i += len(probes)
        return grouped

    def gradients(self, loss: Tensor, retain_graph: bool = False) -> dict[str, Tensor]:
        """``∂loss/∂h_t`` for every probed step: name -> (L, N, H_out), time-major."""
        if not self._probes:
            raise errors.fail("probes", "at least one forward pass of the layer inside the with block", "none")
        return self.split(torch.autograd.grad(loss, self.tensors, retain_graph=retain_graph, allow_unused=True))

    def run_direction(self, spec: CellSpec, x: Tensor, state: State, weights: CellWeights, valid: Tensor | None, reverse: bool, zoneout=None):
        """The reference engine's loop (:func:`rnnkit.engine.reference.run_direction`) plus ``h_t + δ_t``."""
        if zoneout is not None:
            raise errors.fail("zoneout", "0 while probing gradients (the probes do not model zoneout); set layer.zoneout = 0", "a mask")
        if not torch.is_grad_enabled():
            raise errors.fail("probing", "gradient recording enabled (not inside torch.no_grad())", "grad mode off")
        name = self._names.get(id(weights.weight_hh))
        if name is None:  # e.g. torch.func.functional_call substituted the weights
            raise errors.fail("weights", "the probed layer's own weight_hh parameters", "other tensors")
        steps = x.unbind(0)
        masks = valid.unsqueeze(-1).unbind(0) if valid is not None else None
        order = range(len(steps) - 1, -1, -1) if reverse else range(len(steps))
        outputs: list[Tensor] = [x] * len(steps)  # placeholders, every slot is overwritten
        probes: list[Tensor] = [x] * len(steps)
        for t in order:
            y, new_state = spec.step(steps[t], state, weights)
            if y is not new_state[0]:
                raise errors.fail("layer", "a cell whose output y_t is its hidden state h_t", f"cell {spec.name!r}")
            probe = torch.zeros_like(y, requires_grad=True)
            y = y + probe  # adds exactly zero: the value is unchanged, the gradient is ∂L/∂h_t
            new_state = (y, *new_state[1:])
            if masks is not None:  # padding keeps the state, as in the reference engine; its probe gets 0
                keep = masks[t]
                y = torch.where(keep, y, torch.zeros((), dtype=y.dtype, device=y.device))
                new_state = tuple(torch.where(keep, new, old) for new, old in zip(new_state, state))
            outputs[t], probes[t], state = y, probe, new_state
        self._probes.setdefault(name, []).extend(probes)
        return torch.stack(outputs), state


@contextlib.contextmanager
def probe_hidden_states(layer: RecurrentLayer):
    """Run ``layer`` with a zero probe added to every hidden state, inside a ``with`` block.

    Example::

        with probe_hidden_states(lstm) as probes:
            output, _ = lstm(x)
            loss = output[-1].pow(2).sum()
        grads = probes.gradients(loss)    # {"l0": (L, N, H_out)}: ∂loss/∂h_t, total derivative
        norms = grads["l0"].flatten(1).norm(dim=1)

    Outputs are those of the layer's reference engine (bitwise), and equal to
    the fused engine's within its tolerance. The engine is restored on exit.
    """
    if not isinstance(layer, RecurrentLayer):
        raise errors.fail("layer", "an rnnkit RecurrentLayer (rnnkit.RNN, LSTM or GRU)", type(layer).__name__)
    probes = HiddenStateProbes(layer)
    # The engine seam: the layer calls self.run_direction once per layer and direction.
    original = layer.run_direction
    layer.run_direction = probes.run_direction
    try:
        yield probes
    finally:
        layer.run_direction = original


# -- measuring a model under the trainer's contract ---------------------------------------


@dataclass
class GradientFlow:
    """One measurement on one batch.

    * ``loss``: the model's loss on the batch
    * ``hidden``: ``"<module>.l<k>[_reverse]"`` -> (L,) float64, ``‖∂L/∂h_t‖`` per step t
    * ``parameters``: parameter group -> ``‖∂L/∂θ‖`` over the group; a recurrent layer's
      group is one layer and direction (``"rnn.l0"``), any other module's is its own
      parameters (``"head"``)
    """

    loss: float
    hidden: dict[str, Tensor]
    parameters: dict[str, float]


def decay_ratio(norms: Tensor) -> float:
    """``‖∂L/∂h_1‖ / ‖∂L/∂h_T‖``: below 1 the gradient vanishes going back in time, above 1 it explodes."""
    return float(norms[0] / norms[-1])


def recurrent_layers(model: nn.Module) -> dict[str, RecurrentLayer]:
    """Every rnnkit recurrent layer in ``model``, by module path."""
    return {name: m for name, m in model.named_modules() if isinstance(m, RecurrentLayer)}


_LAYER_SUFFIX = re.compile(r"_(l\d+(?:_reverse)?)$")


def parameter_group(model: nn.Module, name: str, layers: dict[str, RecurrentLayer]) -> str:
    """The group of parameter ``name``: ``"rnn.l1"`` for a recurrent layer's, else its module's path."""
    module, _, leaf = name.rpartition(".")
    if module in layers:
        match = _LAYER_SUFFIX.search(leaf)
        if match:
            return f"{module}.{match.group(1)}" if module else match.group(1)
    return module or name


def measure_gradient_flow(model: nn.Module, inputs, targets) -> GradientFlow:
    """Hidden-state and parameter gradient norms of ``model.loss(model(inputs, None)[0], targets)``.

    ``model`` follows the trainer's contract and holds one or more rnnkit
    recurrent layers. Gradients come from :func:`torch.autograd.grad`, so
    nothing is accumulated into ``.grad``. The model runs in its current mode;
    :class:`GradientFlowRecorder` puts it in eval mode first.
    """
    layers = recurrent_layers(model)
    if not layers:
        raise errors.fail("model", "a module containing an rnnkit recurrent layer", type(model).__name__)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    with contextlib.ExitStack() as stack, torch.enable_grad():
        probes = {path: stack.enter_context(probe_hidden_states(layer)) for path, layer in layers.items()}
        outputs, _ = model(inputs, None)
        loss = model.loss(outputs, targets)
    probe_tensors = [t for p in probes.values() for t in p.tensors]
    grads = torch.autograd.grad(loss, probe_tensors + [p for _, p in named], allow_unused=True)
    hidden, i = {}, 0
    for path, p in probes.items():
        count = len(p.tensors)
        for name, g in p.split(grads[i : i + count]).items():
            hidden[f"{path}.{name}" if path else name] = g.flatten(1).double().norm(dim=1)
        i += count
    squares: dict[str, float] = {}
    for (name, _), g in zip(named, grads[i:]):
        group = parameter_group(model, name, layers)
        squares[group] = squares.get(group, 0.0) + (0.0 if g is None else float(g.double().pow(2).sum()))
    return GradientFlow(float(loss.detach()), hidden, {k: math.sqrt(v) for k, v in squares.items()})


class GradientFlowRecorder(Callback):
    """Records :func:`measure_gradient_flow` on a fixed batch every ``every`` steps.

    The first measurement is at step 0, before any update. Each writes rows to
    ``csv_path`` (if given; long format, columns :attr:`FIELDS`) and keeps
    ``(step, GradientFlow)`` in :attr:`history`:

    * ``quantity="loss"``: the model's loss on ``probe_batch``
    * ``quantity="hidden_grad_norm"``, ``name="rnn.l0"``, ``t``: ``‖∂L/∂h_t‖``
    * ``quantity="param_grad_norm"``, ``name`` a parameter group: ``‖∂L/∂θ‖``

    The measurement leaves training exactly as it was: the model runs in eval
    mode (no dropout) and its mode is restored, gradients are taken with
    :func:`torch.autograd.grad` (nothing reaches ``.grad``), and the RNG
    state is restored, so a run's losses are bitwise those of a run without it.
    On resume, rows past the checkpoint's step are dropped, as in CSVLogger.
    """

    FIELDS = ("step", "quantity", "name", "t", "value")

    def __init__(self, probe_batch: tuple, every: int = 100, csv_path: str | Path | None = None) -> None:
        if not isinstance(probe_batch, (tuple, list)) or len(probe_batch) != 2:
            raise errors.fail("probe_batch", "an (inputs, targets) pair", type(probe_batch).__name__)
        errors.check_positive_int("every", every)
        self.probe_batch = tuple(probe_batch)
        self.every = every
        self.csv_path = None if csv_path is None else Path(csv_path)
        self.history: list[tuple[int, GradientFlow]] = []

    def on_fit_start(self, trainer, train) -> None:
        step = trainer.position.step
        if self.csv_path is not None and trainer.distributed.is_main:
            self.csv_path.parent.mkdir(parents=True, exist_ok=True)
            kept = [r for r in _read_rows(self.csv_path) if int(r["step"]) <= step] if step and self.csv_path.exists() else []
            with self.csv_path.open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=self.FIELDS)
                writer.writeheader()
                writer.writerows(kept)
        if step == 0:
            self.record(trainer, 0)

    def on_step_end(self, trainer, record: dict) -> None:
        if record["step"] % self.every == 0:
            self.record(trainer, record["step"])

    def record(self, trainer, step: int) -> GradientFlow:
        model = trainer.model
        modes = {module: module.training for module in model.modules()}  # per module: some may be frozen in eval
        cuda = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=cuda):
            model.eval()
            try:
                flow = measure_gradient_flow(model, *self.probe_batch)
            finally:
                for module, training in modes.items():
                    module.training = training
        self.history.append((step, flow))
        if self.csv_path is not None and trainer.distributed.is_main:
            with self.csv_path.open("a", newline="") as f:
                csv.writer(f).writerows(gradient_flow_rows(step, flow))
        return flow


def gradient_flow_rows(step: int, flow: GradientFlow) -> list[list]:
    """The CSV rows of one measurement, in :attr:`GradientFlowRecorder.FIELDS` order; floats as ``repr``."""
    rows = [[step, "loss", "", "", repr(flow.loss)]]
    for name, norms in flow.hidden.items():
        rows += [[step, "hidden_grad_norm", name, t, repr(float(v))] for t, v in enumerate(norms)]
    rows += [[step, "param_grad_norm", name, "", repr(v)] for name, v in flow.parameters.items()]
    return rows


def _read_rows(path: Path) -> list[dict]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


__all__ = [
    "GradientFlow", "GradientFlowRecorder", "HiddenStateProbes", "decay_ratio", "gradient_flow_rows", "measure_gradient_flow", "probe_hidden_states", "recurrent_layers",
]  # fmt: skip
