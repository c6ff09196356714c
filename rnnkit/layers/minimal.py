"""The linear-recurrence layers: :class:`MinGRU`, :class:`MinLSTM` and :class:`RGLRU`.

Each fixes the cell family of :class:`~rnnkit.layers.recurrent.RecurrentLayer` and takes
exactly :class:`rnnkit.GRU`'s arguments, so everything the generic layer does (layouts,
``lengths=``, ``h0``, stacking, dropout, bidirectional, unbatched input, streaming by passing
``h_n`` back) works unchanged. The math is in :mod:`rnnkit.cells.minimal`; with
``engine="auto"`` (or ``"fused"``) each layer and direction is one GEMM and a parallel scan over
time (:mod:`rnnkit.engine.scan`), with ``"reference"`` the per-step loop that defines the results.

Parameters per layer ``k`` (``_reverse`` for the backward direction): ``weight_ih_l{k}``
(G*H, H_in) and ``bias_ih_l{k}`` (G*H,); RG-LRU adds ``decay_logit_l{k}`` (H,). There is no
``weight_hh``: the gates read only the input. ``h_0``/``h_n``: (D*num_layers, N, H). The regularisers of :class:`RecurrentLayer` apply
(``input_dropout``, ``layer_dropout``, ``output_dropout``, ``zoneout``: zoneout keeps the
recurrence linear, so the scan still runs), except ``weight_drop``: there is no ``weight_hh``.
"""

from __future__ import annotations

from rnnkit import errors
from rnnkit.cells.base import CellSpec
from rnnkit.cells.minimal import MINGRU, MINLSTM, RGLRU as RGLRU_SPEC
from rnnkit.layers.recurrent import RecurrentLayer


class _LinearRecurrentLayer(RecurrentLayer):
    spec_of_family: CellSpec

    def __init__(
        self,
        input_size: int,
        hidden_size: int,
        num_layers: int = 1,
        bias: bool = True,
        batch_first: bool = False,
        dropout: float = 0.0,
        bidirectional: bool = False,
        device=None,
        dtype=None,
        *,
        proj_size=None,
        layer_norm: bool = False,
        check_finite: bool = False,
        engine: str = "auto",
        weight_drop: float = 0.0,
        **regularisers,
    ) -> None:
        family = type(self).__name__
        if proj_size is not None:
            raise errors.fail("proj_size", f"no value: projections are LSTM-only, not supported by {family}", repr(proj_size))
        if layer_norm is not False:
            raise errors.fail("layer_norm", f"False: {family} has no LayerNorm variant", repr(layer_norm))
        if weight_drop != 0:  # DropConnect on weight_hh, which these families do not have
            raise errors.fail("weight_drop", f"0: {family}'s gates read only the input, it has no weight_hh to drop", repr(weight_drop))
        super().__init__(
            self.spec_of_family, input_size, hidden_size, num_layers, bias, batch_first, dropout, bidirectional,
            device=device, dtype=dtype, check_finite=check_finite, engine=engine, **regularisers,
        )  # fmt: skip


class MinGRU(_LinearRecurrentLayer):
    """minGRU (Feng et al., 2024, §3.1): ``h_t = (1 - z_t) ⊙ h_{t-1} + z_t ⊙ g(W_h x_t + b_h)``, z_t = σ(W_z x_t + b_z).

    Arguments and returns as :class:`rnnkit.GRU`; gates in ``weight_ih_l{k}`` in the order z, h̃.
    """

    spec_of_family = MINGRU


class MinLSTM(_LinearRecurrentLayer):
    """minLSTM (Feng et al., 2024, §3.2): ``h_t = f'_t ⊙ h_{t-1} + i'_t ⊙ g(W_h x_t + b_h)``, f', i' the normalised gates.

    Arguments and returns as :class:`rnnkit.GRU` (the state is h only); gates in the order f, i, h̃.
    """

    spec_of_family = MINLSTM


class RGLRU(_LinearRecurrentLayer):
    """RG-LRU (De et al., 2024, §2.4): ``h_t = a_t ⊙ h_{t-1} + √(1 - a_t²) ⊙ (i_t ⊙ u_t)``, a_t = σ(Λ)^(8 r_t).

    Arguments and returns as :class:`rnnkit.GRU`; gates in the order r, i, u; Λ is ``decay_logit_l{k}``.
    """

    spec_of_family = RGLRU_SPEC
