r"""Test-time vocal tract length normalisation for :mod:`rnnkit.tasks.speech`: hear each utterance at the warps that suit it.

Training covers voices with vocal tract length perturbation (each utterance's
frequency axis scaled by up to ``data.warp``), but a human speaker can lie
outside what the synthetic voices span: the TIDIGITS man's formants sit lower
than any of them. Recognisers have long met this at test time by searching
over warp factors and keeping the one the model scores best (Lee & Rose,
1996, "Speaker normalization using efficient frequency warping procedures",
section 3: the warp that maximises the likelihood, no transcript needed).

The files we test on hold cepstra, not audio, so the warp is done on the
cepstra: they are a truncated orthonormal DCT of the log mel energies, so they
define a smooth log spectrum at any (fractional) filter position p,

.. math::

    \ell(p) = \sum_{i < C} c_i \, s_i \cos\!\big(\pi i (p + \tfrac12) / N\big),
    \qquad s_0 = \sqrt{1/N},\ s_{i>0} = \sqrt{2/N},

and warping by :math:`\alpha` reads filter j's energy at :math:`\alpha f_j`
instead of its centre :math:`f_j` (as the front end's ``warp`` does with the
audio), then applies the DCT again: :math:`c' = D\,B_\alpha\,c`, with
:math:`B_\alpha[j, i] = s_i \cos(\pi i (p_j + \frac12) / N)` and :math:`p_j`
the filter position of :math:`\alpha f_j` on the mel scale, held inside the
first and last centres (nothing was measured beyond them). One (C, C) matrix
per warp: VTLN as a linear transform of the cepstra (Pitz & Ney, 2005). It
is not exact (13 cepstra describe the spectrum only smoothly): on synthetic
speech warped by 0.9 and 1.1, its squared distance to the features the audio
gives at that warp is under half the unwarped features' for every utterance,
and about a fifth on average (tested).

The search, per utterance, with ``warps`` the candidates and ``top`` = k:

.. code-block:: python

    for a in warps:
        x_a = normalize(cepstra @ warp_matrix(f, a).T)           # CMVN after the warp
        log_probs[a] = model(x_a)                               # (T', classes)
        score[a] = log p(greedy(log_probs[a]) | x_a) / T'       # CTC: the model's belief in what it heard
    best = the k warps of highest score
    posteriors = mean over best of exp(log_probs[a])            # then greedy or beam search as usual

Taking the top k rather than the single best smooths a choice made on one
utterance's score. With ``warps=[1.0]`` it is the plain decoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.utils.rnn import pad_sequence

from rnnkit.models.ctc import BLANK, CTCOutput
from rnnkit.models.decoding import ctc_greedy
from rnnkit.tasks.speech_features import FeatureConfig, dct_matrix, hz_to_mel, mel_to_hz, normalize


def check_warps(warps: list[float], top: int, transform: str | None = None) -> None:
    """The search's settings, ``decode.warps`` and ``decode.warp_top``; with ``transform``, also whether they fit each other and it.

    Without ``transform`` (a config being built, one override at a time) each is checked alone.
    """
    if not isinstance(warps, list) or not warps or any(isinstance(a, bool) or not isinstance(a, (int, float)) or not 0.5 <= a <= 2
                                                       for a in warps):  # fmt: skip
        raise ValueError(f"decode.warps: expected a non-empty list of warp factors in [0.5, 2], got {warps!r}")
    if isinstance(top, bool) or not isinstance(top, int) or top < 1:
        raise ValueError(f"decode.warp_top: expected a positive int, got {top!r}")
    if transform is None:
        return
    if top > len(warps):
        raise ValueError(f"decode.warp_top: expected at most len(decode.warps) = {len(warps)}, got {top}")
    if transform != "dct":
        raise ValueError(f"decode.warp_search: a warp search needs features.transform='dct' (it inverts the orthonormal DCT), "
                         f"got {transform!r}; set decode.warp_search=false to decode without one")  # fmt: skip


def searched_warps(decode, f: FeatureConfig) -> tuple[list[float], int]:
    """The warps a decoder (the speech task's ``DecodeConfig``) hears each utterance at, and how many it keeps; checked against ``f``."""
    if not decode.warp_search:
        return [1.0], 1
    check_warps(decode.warps, decode.warp_top, f.transform)
    return decode.warps, decode.warp_top


def warp_matrix(f: FeatureConfig, warp: float) -> torch.Tensor:
    """(C, C): raw cepstra c (a row vector per frame) to those of the spectrum read at ``warp`` times each filter's centre: ``c @ M.T``."""
    if f.transform != "dct":
        raise ValueError(f"features.transform: expected 'dct' for a cepstral warp, got {f.transform!r}")
    n = f.num_filters
    edges = np.linspace(hz_to_mel(f.low_hz), hz_to_mel(f.high_hz), n + 2)
    centres = mel_to_hz(edges[1:-1])
    read_at = hz_to_mel(np.clip(centres * warp, centres[0], centres[-1]))
    positions = np.interp(read_at, edges[1:-1], np.arange(n))
    order = np.arange(f.num_cepstra)
    scale = np.where(order == 0, math.sqrt(1 / n), math.sqrt(2 / n))
    basis = np.cos(np.pi * order[None, :] * (positions[:, None] + 0.5) / n) * scale  # (N, C): the smooth spectrum at p_j
    return (dct_matrix(f).double() @ torch.from_numpy(basis)).float()


@torch.no_grad()
def warp_search(model, cepstra: list[torch.Tensor], f: FeatureConfig, warps: list[float], top: int) -> CTCOutput:
    """Log of the mean posteriors under each utterance's ``top`` best warps: (N, T', classes) and lengths (N,)."""
    model.eval()
    log_probs, scores, lengths = [], [], None
    for warp in warps:
        matrix = warp_matrix(f, warp) if warp != 1.0 else None
        inputs = [normalize(c if matrix is None else c @ matrix.T, f.normalize) for c in cepstra]
        outputs, _ = model((pad_sequence(inputs, batch_first=True), torch.tensor([len(x) for x in inputs])))
        lengths = outputs.lengths
        log_probs.append(outputs.log_probs)
        scores.append(_belief(outputs.log_probs, lengths))
    if len(warps) == 1:
        return CTCOutput(log_probs[0], lengths)
    stacked, scores = torch.stack(log_probs), torch.stack(scores)  # (W, N, T', classes), (W, N)
    best = scores.topk(top, dim=0).indices  # (top, N)
    chosen = stacked.gather(0, best[:, :, None, None].expand(-1, -1, *stacked.shape[2:]))
    return CTCOutput(chosen.logsumexp(0) - math.log(top), lengths)


def _belief(log_probs: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """(N,) per-frame CTC log-likelihood of each row's own greedy transcript."""
    heard = ctc_greedy(log_probs, lengths, BLANK)
    targets = torch.zeros(len(heard), max(1, max(map(len, heard))), dtype=torch.long)
    for row, ids in enumerate(heard):
        targets[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
    nll = F.ctc_loss(log_probs.transpose(0, 1).float(), targets, lengths, torch.tensor([len(h) for h in heard]),
                     blank=BLANK, reduction="none", zero_infinity=True)  # fmt: skip
    return -nll / lengths.clamp(min=1)
