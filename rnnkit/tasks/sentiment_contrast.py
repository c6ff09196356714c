"""The negation contrast set of the sentiment task: held-out sentences edited by rule so that their sentiment flips.

The rules, applied only to sentences with exactly one word from a small polarity lexicon, agreeing with the
sentence's label, and no negation word: swap that word for its antonym if the antonym is in the vocabulary
("a good film" -> "a bad film"), and, where a copula comes up to three words before it, put "not" after the
copula ("is very funny" -> "is not very funny"). The same rules make the counterfactual training edits
(``data.counterfactuals`` in rnnkit.tasks.sentiment).
"""

from __future__ import annotations

from typing import NamedTuple

from rnnkit.tasks import lm

tokenize = lm.tokenize  # the sentiment task's tokeniser

ANTONYMS = dict(
    good="bad", great="terrible", best="worst", funny="unfunny", fun="dull", brilliant="awful", beautiful="ugly",
    enjoyable="tedious", entertaining="boring", interesting="uninteresting", smart="stupid", clever="dumb",
    wonderful="dreadful", excellent="poor", love="hate", likable="unlikable", charming="irritating", fresh="stale",
    compelling="unconvincing", moving="lifeless", delightful="annoying", masterpiece="mess", succeeds="fails",
    better="worse", engaging="dreary", original="derivative", strong="weak", solid="flimsy", gorgeous="hideous",
    perfect="flawed", powerful="feeble", amazing="dismal", fascinating="tiresome", impressive="unimpressive",
    memorable="forgettable", remarkable="unremarkable", satisfying="unsatisfying", effective="ineffective",
    intelligent="unintelligent", successful="unsuccessful", pleasant="unpleasant", hilarious="humorless",
    exciting="unexciting", appealing="unappealing", triumph="failure", surprising="predictable",
    meaningful="pointless", superb="mediocre", lively="bland", sharp="lame", sensible="silly",
    unpretentious="pretentious", deft="clumsy", natural="contrived", riveting="plodding", sincere="phony",
)  # fmt: skip
POLARITY = {**{w: 1 for w in ANTONYMS}, **{w: 0 for w in ANTONYMS.values()}}
SWAP = {**ANTONYMS, **{bad: good for good, bad in ANTONYMS.items()}}
NEGATORS = {"not", "no", "never", "nothing", "neither", "nor", "hardly", "without"}
COPULAS = {"is", "was", "are", "were", "'s", "be", "seems", "feels"}


class Edit(NamedTuple):
    original: str
    label: int  # the original's; the edit's label is 1 - label
    edited: str
    rule: str


def contrast_set(pairs: list[tuple[str, int]], vocabulary: list[str]) -> list[Edit]:
    """The rule-based edits of the sentences the rules apply to (the module docstring has the rules).

    An antonym swap is made only when the antonym is in the vocabulary: no model
    can judge a word it has never seen.
    """
    known = set(vocabulary)
    out = []
    for sentence, label in pairs:
        words = tokenize(sentence)
        cues = [i for i, w in enumerate(words) if w in POLARITY]
        if len(cues) != 1 or POLARITY[words[cues[0]]] != label or any(w in NEGATORS or w.endswith("n't") for w in words):
            continue
        i = cues[0]
        if SWAP[words[i]] in known:
            out.append(Edit(sentence, label, " ".join(words[:i] + [SWAP[words[i]]] + words[i + 1 :]), "antonym"))
        copulas = [j for j in range(max(0, i - 3), i) if words[j] in COPULAS]
        if copulas:  # "is (very) funny" -> "is not (very) funny"
            j = copulas[-1] + 1
            out.append(Edit(sentence, label, " ".join(words[:j] + ["not"] + words[j:]), "negation"))
    return out
