"""The sentiment task's evaluation: NB-SVM (the classic strong baseline), the hand-written negation set, standard errors.

NB-SVM (Wang & Manning, ACL 2012, section 2.3), here its logistic-regression
form (NB-LR, which the paper finds on par): binary uni- and bigram features
:math:`\\hat x \\in \\{0, 1\\}^F`, the log-count ratio
:math:`r = \\log \\frac{(p / \\lVert p \\rVert_1)}{(q / \\lVert q \\rVert_1)}` with
:math:`p = \\alpha + \\sum_{y=1} \\hat x`, :math:`q = \\alpha + \\sum_{y=0} \\hat x`,
α = 1, and a linear classifier on :math:`r \\circ \\hat x` with an L2 penalty
chosen on the validation split. Features are the training split's n-grams.

The negation set (``data/sentiment_negation.csv``, in this package) is 120+
sentences written by hand for this test, never used for training or model
selection: negated positives ("not a good movie" -> negative), negated
negatives ("not bad at all" -> positive), "but" contrasts whose second half
decides, and negation at a distance ("I don't think, after all the hype, that
it is any good"), each category half positive and half negative.
"""

from __future__ import annotations

import csv
import io
from importlib import resources

import torch
import torch.nn.functional as F

from rnnkit.tasks import lm

NEGATION_SET = "data/sentiment_negation.csv"


def negation_set() -> list[tuple[str, int, str]]:
    """``(sentence, label, category)`` rows of the hand-written negation set."""
    text = resources.files("rnnkit.tasks").joinpath(NEGATION_SET).read_text(encoding="utf-8")
    return [(row["text"], int(row["label"]), row["category"]) for row in csv.DictReader(io.StringIO(text))]


def standard_error(accuracy: float, n: int) -> float:
    """Of an accuracy measured on n independent examples: sqrt(a (1 - a) / n)."""
    return (accuracy * (1 - accuracy) / max(n, 1)) ** 0.5


def ngrams(sentence: str) -> set[str]:
    words = lm.tokenize(sentence)
    return set(words) | {f"{a} {b}" for a, b in zip(words, words[1:])}


class NBSVM:
    """Uni- and bigram naive-Bayes log-count ratios into an L2-regularised logistic regression (see the module docstring)."""

    def __init__(self, train_set: list[tuple[str, int]], val_set: list[tuple[str, int]], alpha: float = 1.0,
                 penalties=(1e-4, 1e-3, 1e-2), steps: int = 300, seed: int = 0) -> None:  # fmt: skip
        grams = [ngrams(s) for s, _ in train_set]
        self.index = {g: i for i, g in enumerate(sorted(set().union(*grams)))}
        labels = torch.tensor([y for _, y in train_set], dtype=torch.float64)
        x = self._features(grams)
        p = alpha + torch.sparse.mm(x.t(), labels.unsqueeze(1)).squeeze(1)
        q = alpha + torch.sparse.mm(x.t(), (1 - labels).unsqueeze(1)).squeeze(1)
        self.ratio = (torch.log(p / p.sum()) - torch.log(q / q.sum())).float()
        best = None
        for penalty in penalties:
            weights = self._fit(x, labels.float(), penalty, steps, seed)
            self.weight, self.bias = weights
            score = self.accuracy(val_set)
            if best is None or score > best[0]:
                best = (score, weights, penalty)
        _, (self.weight, self.bias), self.penalty = best

    def _features(self, grams: list[set[str]]) -> torch.Tensor:
        """A sparse (N, F) binary matrix of the known n-grams."""
        rows = [(i, self.index[g]) for i, gs in enumerate(grams) for g in gs if g in self.index]
        indices = torch.tensor(rows, dtype=torch.long).t() if rows else torch.zeros(2, 0, dtype=torch.long)
        return torch.sparse_coo_tensor(indices, torch.ones(indices.shape[1], dtype=torch.float64), (len(grams), len(self.index)),
                                       check_invariants=False).coalesce()

    def _fit(self, x, labels, penalty: float, steps: int, seed: int):
        torch.manual_seed(seed)
        features = x.float()
        weight = torch.zeros(len(self.index), requires_grad=True)
        bias = torch.zeros(1, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=steps, line_search_fn="strong_wolfe")

        def closure():
            optimizer.zero_grad()
            logits = torch.sparse.mm(features, (weight * self.ratio).unsqueeze(1)).squeeze(1) + bias
            loss = F.binary_cross_entropy_with_logits(logits, labels) + penalty * weight.pow(2).sum()
            loss.backward()
            return loss

        optimizer.step(closure)
        return weight.detach(), bias.detach()

    def probabilities(self, sentences: list[str]) -> list[float]:
        """P(positive) of each sentence."""
        x = self._features([ngrams(s) for s in sentences]).float()
        return torch.sigmoid(torch.sparse.mm(x, (self.weight * self.ratio).unsqueeze(1)).squeeze(1) + self.bias).tolist()

    def accuracy(self, pairs: list[tuple[str, int]]) -> float:
        p = self.probabilities([s for s, _ in pairs])
        return sum((pi > 0.5) == bool(y) for pi, (_, y) in zip(p, pairs)) / len(pairs)
