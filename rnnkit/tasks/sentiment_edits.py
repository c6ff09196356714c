"""Counterfactual negation edits of training sentences, with a polarity lexicon learnt from the training labels.

The contrast set's rules (rnnkit.tasks.sentiment_contrast) use a 110-word hand lexicon and want exactly
one such word, so they edit few sentences, and most of their "not" edits turn a positive sentence
negative: "not" then reads as a negative word ("not bad" negative). These two rules edit many more real
training sentences, in both directions, so that "not" is as often followed by a positive word as by a
negative one, and only the pair carries the label:

* ``insert_negator``: a sentence with no negator whose cue words all agree with its label, and all
  follow one copula ("is", "was", ...) or modal verb ("would", "can", ...) within its clause, the
  first within three words of it, gets a negator after that verb and the opposite label:
  "the plot is dull and predictable ." (negative) -> "the plot is not dull and predictable ." (positive).
  The negator varies with the sentence, so that "isn't" and "never" are learnt beside "not":
  "is not", "isn't", "is never"; "would not", "wouldn't".
* ``remove_negator``: a sentence with one negator, whose cue words all follow it within its clause
  (the first within three words) and all disagree with its label, loses the negator and takes the
  opposite label: "it's not bad at all" (positive) -> "it's bad at all" (negative);
  "isn't funny" (negative) -> "is funny" (positive).
* ``raise`` (opt-in): negation raising. "I don't think it is good" means "I think it is not good" (Horn, "A natural
  history of negation", 1989), and puts the negator far from its cue. A sentence of the task's own with no negator, a
  copula or modal verb, no sentence break before its end, and cue words that all agree with its label goes under a
  negated raising verb, and takes the opposite label: "the jokes are flat ." (negative) -> "i don't think the jokes are
  flat ." (positive). The frame varies with the sentence (:data:`RAISING_FRAMES`), and every other edit has a neutral
  aside after the frame's verb: "i can't say , in the end , that the jokes are flat ."

The cue words are the lexicon's (:func:`polarity_lexicon`): the training words, seen in at least
``min_count`` sentences, whose sentences are at least ``min_odds`` times as often of one label as of
the other (add-one smoothed counts, the label sizes evened out), less negators, copulas and
punctuation. Nothing of this is in the model: it changes which sentences the model is trained on.
Counterfactually augmented data: Kaushik, Hovy & Lipton, "Learning the difference that makes a
difference with counterfactually-augmented data", ICLR 2020 (edits by people; these are by rule).
"""

from __future__ import annotations

import collections
import zlib

from rnnkit.tasks.common import DataError
from rnnkit.tasks.sentiment_contrast import COPULAS, NEGATORS, POLARITY, Edit, contrast_set, tokenize

CLAUSE_BREAKS = {",", ";", ":", ".", "!", "?", "but", "though", "although", "yet", "-", "--", "—"}
CONTRACTED = {"is": "isn't", "was": "wasn't", "are": "aren't", "were": "weren't"}
# Modal verbs take the negator as copulas do ("would recommend" -> "wouldn't recommend"); "never" stays with the copulas.
# "do", "did", "has" and "had" are left out: as main verbs ("did a fine job") they would make "did not a fine job".
AUXILIARIES = {"would": "wouldn't", "could": "couldn't", "can": "can't", "will": "won't", "should": "shouldn't"}
UNCONTRACTED = {"can't": "can", "won't": "will", "ain't": "is", "cannot": "can"}
# Negated verbs that raise their negation into the clause they govern; Pang & Lee's sentences keep "n't" on its word.
RAISING_FRAMES = ("i don't think", "i do not believe", "i didn't feel that", "i can't say that", "i never thought that", "i wouldn't say")
SCOPE = 3  # the first cue word follows the copula (or the negator) within this many words


def is_negator(word: str) -> bool:
    return word in NEGATORS or word.endswith("n't") or word == "cannot"


def polarity_lexicon(pairs: list[tuple[str, int]], min_count: int = 10, min_odds: float = 3.0) -> dict[str, int]:
    """``{word: 1 or 0}``: the words whose sentences lean to one label by ``min_odds`` to 1 or more (see the module docstring)."""
    if min_count < 1 or min_odds <= 1:
        raise ValueError(f"polarity_lexicon: expected min_count >= 1 and min_odds > 1, got {min_count} and {min_odds}")
    seen, positive = collections.Counter(), collections.Counter()
    for sentence, label in pairs:
        for word in set(tokenize(sentence)):
            seen[word] += 1
            positive[word] += label
    n_positive = sum(label for _, label in pairs)
    scale = n_positive / max(len(pairs) - n_positive, 1)  # evens out the label sizes
    lexicon = {}
    for word, n in seen.items():
        if n < min_count or not word.isalpha() or is_negator(word) or word in COPULAS:
            continue
        odds = (positive[word] + 1) / (scale * (n - positive[word]) + 1)
        if odds >= min_odds or 1 / odds >= min_odds:
            lexicon[word] = int(odds > 1)
    return lexicon


def _clause_end(words: list[str], start: int) -> int:
    return next((k for k in range(start, len(words)) if words[k] in CLAUSE_BREAKS), len(words))


def _scoped(words: list[str], at: int, cues: list[int], scope: int) -> bool:
    """Whether every cue follows position ``at`` in its clause, the first within ``scope`` words."""
    return bool(cues) and cues[0] > at and cues[0] - at <= scope and cues[-1] < _clause_end(words, at + 1)


def negator_edits(pairs: list[tuple[str, int]], lexicon: dict[str, int], scope: int = SCOPE) -> list[Edit]:
    """The ``insert_negator`` and ``remove_negator`` edits of ``pairs`` (the module docstring has the rules; ``scope`` is its three words)."""
    out = []
    for sentence, label in pairs:
        words = tokenize(sentence)
        cues = [i for i, w in enumerate(words) if w in lexicon]
        negators = [i for i, w in enumerate(words) if is_negator(w)]
        if not negators and all(lexicon[words[i]] == label for i in cues):
            edited = _with_negator(sentence, words, cues, scope)
        elif len(negators) == 1 and all(lexicon[words[i]] != label for i in cues):
            edited = _without_negator(words, negators[0], cues, scope)
        else:
            continue
        if edited is not None:
            out.append(Edit(sentence, label, edited, "remove_negator" if negators else "insert_negator"))
    return out


def _with_negator(sentence: str, words: list[str], cues: list[int], scope: int) -> str | None:
    verbs = [j for j in range(max(0, cues[0] - scope), cues[0]) if words[j] in COPULAS or words[j] in AUXILIARIES] if cues else []
    if not verbs or not _scoped(words, verbs[-1], cues, scope):
        return None
    j = verbs[-1]
    form = zlib.crc32(sentence.encode()) % 3  # a stable choice of "is not", "isn't" or "is never"
    contracted = {**CONTRACTED, **AUXILIARIES}.get(words[j])
    if form == 1 and contracted:
        negated = [contracted]
    else:
        negated = [words[j], "never" if form == 2 and words[j] in COPULAS else "not"]
    return " ".join(words[:j] + negated + words[j + 1 :])


def _without_negator(words: list[str], k: int, cues: list[int], scope: int) -> str | None:
    word = words[k]
    if not _scoped(words, k, cues, scope):
        return None
    if word in UNCONTRACTED or (word.endswith("n't") and len(word) > 3):
        kept = [UNCONTRACTED.get(word, word[:-3])]  # "can't" -> "can", "isn't" -> "is"
    elif word in {"not", "never"}:
        kept = []
    else:
        return None  # "nothing" or "no" cannot simply go
    return " ".join(words[:k] + kept + words[k + 1 :])


def neutral_asides(pairs: list[tuple[str, int]], lexicon: dict[str, int], min_words: int = 2, max_words: int = 8) -> list[str]:
    """The phrases between two commas of ``pairs``' sentences, ``min_words`` to ``max_words`` long, with no cue word,
    negator or clause break: asides that say nothing of the label ("for all its running time", "in the end")."""
    asides = set()
    for sentence, _ in pairs:
        words = tokenize(sentence)
        commas = [i for i, w in enumerate(words) if w == ","]
        for start, stop in zip(commas, commas[1:]):
            inner = words[start + 1 : stop]
            if min_words <= len(inner) <= max_words and all(w.replace("'", "").isalpha() and w not in lexicon and not is_negator(w) and w not in CLAUSE_BREAKS for w in inner):
                asides.add(" ".join(inner))
    return sorted(asides)


def aside_edits(pairs: list[tuple[str, int]], lexicon: dict[str, int], asides: list[str], scope: int = SCOPE) -> list[tuple[str, int]]:
    """``pairs`` whose one negator governs their cue words (all of them follow it in its clause, the first within
    ``scope`` words), with an aside put after the negator and the label kept: "is not , in the end , funny"."""
    out = []
    for sentence, label in pairs:
        words = tokenize(sentence)
        negators = [i for i, w in enumerate(words) if is_negator(w)]
        cues = [i for i, w in enumerate(words) if w in lexicon]
        if not asides or len(negators) != 1 or not _scoped(words, negators[0], cues, scope):
            continue
        k = negators[0]
        aside = asides[zlib.crc32(sentence.encode()) % len(asides)]  # a stable choice
        out.append((" ".join(words[: k + 1] + [",", aside, ","] + words[k + 1 :]), label))
    return out


def raise_edits(pairs: list[tuple[str, int]], lexicon: dict[str, int], asides: list[str] = ()) -> list[Edit]:
    """The ``raise`` edits of ``pairs`` (the module docstring has the rule), each with a frame and, for every other one,
    an aside from ``asides`` chosen by the sentence's crc32."""
    out = []
    for sentence, label in pairs:
        words = tokenize(sentence)
        cues = [w for w in words if w in lexicon]
        if (not cues or any(lexicon[w] != label for w in cues) or any(is_negator(w) for w in words)
                or not any(w in COPULAS or w in AUXILIARIES for w in words) or {".", "!", "?"} & set(words[:-1])):  # fmt: skip
            continue
        crc = zlib.crc32(sentence.encode())  # a stable choice of frame and aside
        frame = RAISING_FRAMES[crc % len(RAISING_FRAMES)].split()
        if asides and crc // len(RAISING_FRAMES) % 2:
            verb = len(frame) - (frame[-1] == "that")  # the aside goes before "that": "say , in the end , that"
            frame = frame[:verb] + [",", asides[crc // (2 * len(RAISING_FRAMES)) % len(asides)], ","] + frame[verb:]
        out.append(Edit(sentence, label, " ".join(frame + words), "raise"))
    return out


def check_edit_options(data) -> None:
    """Refuse edit options (rnnkit.tasks.sentiment's DataConfig) that would quietly make no edits, or nonsense ones."""
    if data.negation_copies < 1:
        raise DataError(f"data.negation_copies: expected a number of copies of at least 1, got {data.negation_copies}")
    if data.lexicon_min_count < 1:
        raise DataError(f"data.lexicon_min_count: expected a count of at least 1, got {data.lexicon_min_count}")
    if not data.lexicon_min_odds > 1:
        raise DataError(f"data.lexicon_min_odds: expected odds above 1, got {data.lexicon_min_odds}")
    if data.negator_scope < 1:
        raise DataError(f"data.negator_scope: expected at least 1 word, got {data.negator_scope}")
    if "raise" in (data.counterfactuals or []) and not {"insert_negator", "remove_negator"} & set(data.counterfactuals):
        raise DataError('data.counterfactuals: "raise" uses the lexicon learnt for the negator edits: add "insert_negator" or "remove_negator"')


def with_counterfactuals(train_set, vocabulary, data, say=print, lexicon=POLARITY, aside_source=None) -> list[tuple[str, int]]:
    """The training split, plus the edits of its sentences that ``data.counterfactuals`` asks for, labels flipped.

    Antonym swaps join once; every negation ``data.negation_copies`` times, then with
    ``data.balance_negations`` those of the rarer direction repeat until both are as common. The ``raise`` edits join
    once, after them: three copies of each outweighed the whole sentence it flips (docs/results.md).
    ``lexicon`` gives the negator edits' cue words. ``aside_source`` (default: ``train_set``) is the task's own sentences:
    the asides come from them, and only they are raised. ``data`` is rnnkit.tasks.sentiment's DataConfig.
    """
    if not data.counterfactuals:
        return train_set
    check_edit_options(data)
    own = train_set if aside_source is None else aside_source
    asides = neutral_asides(own, lexicon) if {"aside", "raise"} & set(data.counterfactuals) else []
    raised = [(e.edited, 1 - e.label) for e in raise_edits(own, lexicon, asides)] if "raise" in data.counterfactuals else []
    edits = [e for e in contrast_set(train_set, vocabulary) + negator_edits(train_set, lexicon, data.negator_scope) if e.rule in data.counterfactuals]
    negations = [(e.edited, 1 - e.label) for e in edits if e.rule != "antonym"] * data.negation_copies
    if data.balance_negations:
        negations = balanced(negations)
    if "aside" in data.counterfactuals:  # the negator and its cue apart: the training sentences' and the edits'
        distinct = list(dict.fromkeys(train_set + [(e.edited, 1 - e.label) for e in edits if e.rule != "antonym"]))
        negations += aside_edits(distinct, lexicon, asides, data.negator_scope) * data.negation_copies
    say(f"{len(edits)} counterfactual edits of training sentences ({', '.join(data.counterfactuals)}) join the training split"
        + (f", the negations as {len(negations)}" if len(negations) != sum(e.rule != "antonym" for e in edits) else "")
        + (f", and {len(raised)} raised sentences once" if raised else ""))
    return train_set + [(e.edited, 1 - e.label) for e in edits if e.rule == "antonym"] + negations + raised


def balanced(pairs: list[tuple[str, int]]) -> list[tuple[str, int]]:
    """``pairs`` with those of the rarer label repeated in turn until both labels are as common."""
    by_label = [[p for p in pairs if p[1] == label] for label in (0, 1)]
    rare, common_ = sorted(by_label, key=len)
    if not rare:
        return pairs
    return common_ + [rare[i % len(rare)] for i in range(len(common_))]
