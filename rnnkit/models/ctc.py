r"""Many-to-many, unaligned: label sequences read off frame sequences with CTC (Graves et al., 2006).

Shapes: N batch, T input frames, F features per frame, k the subsampling
factor, T' = ceil(T / k) output frames, H hidden size, D = 2 directions,
V labels and C = V + 1 classes (class 0 is the blank, labels are 1..V).

.. math::

    z_{t'} = [x_{k t'}; \dots; x_{k t' + k - 1}]         \quad (N, T', kF)\ \text{(stacked frames)}
    h_{1..T'} = \mathrm{BiRNN}(z_{1..T'})                 \quad (N, T', D H)
    \log y_{t'} = \mathrm{log\,softmax}(W h_{t'} + b)     \quad (N, T', C)\ \text{(the model's output)}

A path :math:`\pi \in \{0..V\}^{T'}` maps to a label sequence by
:math:`\mathcal{B}`: merge repeated symbols, then drop blanks. CTC scores a
label sequence l (length S <= T') by summing over every path that maps to it,

.. math::

    p(l \mid x) = \sum_{\pi \in \mathcal{B}^{-1}(l)} \prod_{t'=1}^{T'} y_{t'}(\pi_{t'}),
    \qquad \mathcal{L} = -\log p(l \mid x),

computed by the forward algorithm over l with blanks around and between its
labels (2S + 1 states, O(T' S) time; Graves et al., 2006, section 4.1).
:meth:`CTCMixin.loss` uses ``torch.nn.functional.ctc_loss``: each utterance's
loss is divided by its S, then averaged over the batch; an utterance too
short for its labels (T' below S plus the number of adjacent repeats in l)
has p = 0 and counts as zero (``zero_infinity``), so that it cannot poison a
batch.

Subsampling (stacking k frames, as in Sak et al., 2015) cuts the recurrence's
steps by k: the BiLSTM runs k times faster, and speech at 100 frames a second
still leaves several output frames per word. Decoding: greedy (best path) or
prefix beam search, both in :mod:`rnnkit.models.decoding`.

* :class:`CTCRecognizer`: a stacked bidirectional rnnkit layer, the model.
* :class:`CTCFrameMLP`: an MLP over a fixed window of stacked frames around
  each output frame, the same loss and decoders: what a model without
  recurrence does with the same inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.models import decoding
from rnnkit.models.common import RecurrentConfig, make_layer, register, split_inputs, valid_mask

BLANK = 0


class CTCOutput(NamedTuple):
    log_probs: Tensor  # (N, T', C), log-softmax over the blank and the labels
    lengths: Tensor  # (N,) valid output frames per row


def edit_distance(reference: list, hypothesis: list) -> int:
    """Levenshtein distance: the fewest substitutions, insertions and deletions that turn one sequence into the other."""
    previous = list(range(len(hypothesis) + 1))
    for i, r in enumerate(reference, 1):
        current = [i]
        for j, h in enumerate(hypothesis, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (r != h)))
        previous = current
    return previous[-1]


def stack_frames(x: Tensor, lengths: Tensor | None, k: int) -> tuple[Tensor, Tensor]:
    """(N, T, F) -> (N, ceil(T / k), k F): each output frame is k input frames side by side; lengths likewise.

    Frames past a row's length are zeroed first, so that whatever padding a
    batch holds never leaks into the row's last stacked frame.
    """
    n, t, f = x.shape
    lengths = torch.full((n,), t, dtype=torch.long) if lengths is None else torch.as_tensor(lengths, dtype=torch.long).cpu()
    if k == 1:
        return x, lengths
    x = F.pad(x * valid_mask(lengths, n, t, x.device).unsqueeze(-1), (0, 0, 0, (-t) % k))
    return x.reshape(n, x.shape[1] // k, k * f), (lengths + k - 1) // k


class CTCMixin:
    """CTC loss, label error rate and decoding for a model whose outputs are a :class:`CTCOutput`.

    Targets are label ids (N, S) in 1..V, right-padded with 0 (the blank, which
    is never a label); a row's count of non-zero ids is its length.
    """

    def loss(self, outputs: CTCOutput, targets: Tensor) -> Tensor:
        target_lengths = (targets != BLANK).sum(1)
        return F.ctc_loss(outputs.log_probs.transpose(0, 1).float(), targets, outputs.lengths, target_lengths,
                          blank=BLANK, reduction="mean", zero_infinity=True)  # fmt: skip

    def metrics(self, outputs: CTCOutput, targets: Tensor) -> dict[str, float]:
        """Label error rate of greedy decoding: edit distance over the reference labels."""
        references = [[t for t in row if t != BLANK] for row in targets.tolist()]
        hypotheses = decoding.ctc_greedy(outputs.log_probs, outputs.lengths, BLANK)
        errors_ = sum(edit_distance(r, h) for r, h in zip(references, hypotheses))
        return {"label_error_rate": errors_ / max(sum(map(len, references)), 1)}

    @torch.no_grad()
    def transcribe(self, inputs, beam_size: int | None = None, prune: float | None = None) -> list[list[int]]:
        """Label ids per row: greedy when ``beam_size`` is None, else prefix beam search (see ``decoding``)."""
        self.eval()
        outputs, _ = self(inputs)
        return self.decode(outputs, beam_size, prune)

    @staticmethod
    def decode(outputs: CTCOutput, beam_size: int | None = None, prune: float | None = None) -> list[list[int]]:
        """Label ids per row of given outputs (the model's, or posteriors combined from several passes); as ``transcribe``."""
        if beam_size is None:
            return decoding.ctc_greedy(outputs.log_probs, outputs.lengths, BLANK)
        return [decoding.ctc_prefix_beam_search(row[:n], beam_size, BLANK, prune)[0][0]
                for row, n in zip(outputs.log_probs, outputs.lengths.tolist())]  # fmt: skip


def _check_sizes(config) -> None:
    for name in ("feature_size", "vocab_size", "subsample"):
        errors.check_positive_int(name, getattr(config, name))


@dataclass
class CTCRecognizerConfig:
    feature_size: int  # F
    vocab_size: int  # V, the blank not included: outputs have V + 1 classes
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="lstm", hidden_size=64, num_layers=2, bidirectional=True))
    subsample: int = 1  # k: frames stacked into one recurrent step
    dropout: float = 0.0  # on the stacked inputs and the recurrent outputs

    def __post_init__(self) -> None:
        _check_sizes(self)


@register
class CTCRecognizer(CTCMixin, nn.Module):
    """Frames (N, T, F), or ``(frames, lengths)``, to per-frame label log-probabilities, trained with CTC."""

    config_class = CTCRecognizerConfig

    def __init__(self, config: CTCRecognizerConfig) -> None:
        super().__init__()
        self.config = config
        self.dropout = nn.Dropout(config.dropout)
        self.rnn = make_layer(config.rnn, config.feature_size * config.subsample)
        directions = 2 if config.rnn.bidirectional else 1
        self.head = nn.Linear(config.rnn.hidden_size * directions, config.vocab_size + 1)

    def forward(self, inputs, state=None):
        x, lengths = _check_features(inputs, self.config.feature_size)
        z, lengths = stack_frames(x, lengths, self.config.subsample)
        h, _ = self.rnn(self.dropout(z), lengths=lengths)
        return CTCOutput(self.head(self.dropout(h)).log_softmax(-1), lengths), None


@dataclass
class CTCFrameMLPConfig:
    feature_size: int
    vocab_size: int
    context: int = 4  # stacked frames seen on each side of the output frame
    hidden_size: int = 128
    num_layers: int = 2
    subsample: int = 1
    dropout: float = 0.0

    def __post_init__(self) -> None:
        _check_sizes(self)
        errors.check_positive_int("num_layers", self.num_layers)
        if self.context < 0:
            raise errors.fail("context", "a non-negative int", self.context)


@register
class CTCFrameMLP(CTCMixin, nn.Module):
    """No recurrence: each output frame sees only the 2 context + 1 stacked frames around it (zeros past the edges)."""

    config_class = CTCFrameMLPConfig

    def __init__(self, config: CTCFrameMLPConfig) -> None:
        super().__init__()
        self.config = config
        layers, width = [], config.feature_size * config.subsample * (2 * config.context + 1)
        for _ in range(config.num_layers):
            layers += [nn.Linear(width, config.hidden_size), nn.ReLU(), nn.Dropout(config.dropout)]
            width = config.hidden_size
        self.mlp = nn.Sequential(*layers, nn.Linear(width, config.vocab_size + 1))

    def forward(self, inputs, state=None):
        x, lengths = _check_features(inputs, self.config.feature_size)
        z, lengths = stack_frames(x, lengths, self.config.subsample)
        c = self.config.context
        windows = F.pad(z, (0, 0, c, c)).unfold(1, 2 * c + 1, 1)  # (N, T', kF, 2c + 1)
        return CTCOutput(self.mlp(windows.flatten(2)).log_softmax(-1), lengths), None


def _check_features(inputs, feature_size: int) -> tuple[Tensor, Tensor | None]:
    x, lengths = split_inputs(inputs)
    if x.dim() != 3 or x.shape[-1] != feature_size:
        raise errors.fail("inputs", f"features of shape (batch, time, {feature_size})", f"shape {tuple(x.shape)}")
    return x, lengths
