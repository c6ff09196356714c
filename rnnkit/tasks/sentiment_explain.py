"""The sentiment task's explanations: each word's contribution to P(positive), by occlusion, printed and drawn as a heat strip."""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

from rnnkit.tasks.common import DataError
from rnnkit.tasks.sentiment import probabilities, tokenize
from rnnkit.training.checkpoint import save_figure


class Contribution(NamedTuple):
    word: str
    known: bool  # False: out of the vocabulary, read as <unk>
    contribution: float  # P(positive | sentence) - P(positive | sentence without this word)


def explain(model, text: str, vocabulary: list[str], max_length: int = 10_000) -> tuple[float, list[Contribution]]:
    r"""P(positive) of ``text`` and each word's contribution to it, by occlusion.

    For the words :math:`w_1 \dots w_n` (as :func:`tokenize` splits them, cut at
    ``max_length``) the contribution of :math:`w_i` is
    :math:`c_i = p(w_1 \dots w_n) - p(w_1 \dots w_{i-1} w_{i+1} \dots w_n)`, with p
    the model's P(positive): positive when the word pushes the sentence towards
    positive, negative when towards negative (Zeiler & Fergus, 2014, occlusion;
    here a word is removed rather than masked, so the model reads a shorter
    sentence and no <unk> it might have learnt a polarity for). A one-word
    sentence without its word is read as a lone <unk>. The n + 1 sentences go
    through the model in one batch. Contributions do not add up to p: removing
    "not" from "not good" can flip more than "not" alone holds.
    """
    words = tokenize(text)[:max_length]
    if not words:
        raise DataError(f"text: expected a sentence with at least one word, got {text!r}")
    variants = [" ".join(words)] + [" ".join(words[:i] + words[i + 1 :]) for i in range(len(words))]
    full, *occluded = probabilities(model, variants, vocabulary)
    known = set(vocabulary)
    return full, [Contribution(w, w in known, full - p) for w, p in zip(words, occluded)]


def plot_contributions(path: Path, probability: float, contributions: list[Contribution], title: str = "") -> None:
    """A heat strip of the words: green pushes towards positive, red towards negative, white neither."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    values = [c.contribution for c in contributions]
    scale = max(max(map(abs, values)), 1e-6)
    fig, ax = plt.subplots(figsize=(max(3.0, 0.9 * len(values)), 1.6))
    ax.imshow([values], cmap="RdYlGn", vmin=-scale, vmax=scale, aspect="auto")
    for i, c in enumerate(contributions):
        ax.text(i, 0, f"{c.word}{'' if c.known else '*'}\n{c.contribution:+.2f}", ha="center", va="center", fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"P(positive) = {probability:.3f}; each word: the change when it is removed (* out of vocabulary)", fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=100)
    plt.close(fig)
