"""The negator edits of training sentences (rnnkit.tasks.sentiment_edits), their lexicon, and how they join the training split."""

from __future__ import annotations

import pytest

from rnnkit.tasks import sentiment
from rnnkit.tasks.common import DataError
from rnnkit.tasks.sentiment_edits import RAISING_FRAMES, aside_edits, balanced, negator_edits, neutral_asides, polarity_lexicon, raise_edits

LEXICON = {"good": 1, "funny": 1, "clever": 1, "dull": 0, "predictable": 0, "bad": 0}


def edits(*pairs):
    return [(e.edited, 1 - e.label, e.rule) for e in negator_edits(list(pairs), LEXICON)]


def test_a_negator_goes_after_the_copula_before_the_cue_words_and_flips_the_label():
    (edit,) = edits(("The plot is dull and predictable .", 0))
    assert edit[1:] == (1, "insert_negator")
    assert edit[0] in {"the plot is not dull and predictable .", "the plot isn't dull and predictable .", "the plot is never dull and predictable ."}
    nouns = ("film", "cast", "plot", "story", "script", "end", "score", "lead")
    negated = {edits((f"the {noun} was very funny", 1))[0][0].replace(noun, "X") for noun in nouns}
    assert negated == {"the X was not very funny", "the X wasn't very funny", "the X was never very funny"}  # varies with the sentence
    assert edits(("the film 's good", 1))[0][0] in {"the film 's not good", "the film 's never good"}  # no contraction of "'s"
    modal = {edits((f"it will seem funny to {noun} fans", 1))[0][0].replace(noun, "X") for noun in nouns}
    assert modal == {"it will not seem funny to X fans", "it won't seem funny to X fans"}  # "never" only after a copula
    assert edits(("they did a good job", 1)) == []  # "did" may be the main verb: "did not a good job" is no sentence


def test_the_insertion_needs_agreeing_cues_in_scope_of_one_copula():
    assert edits(("the film is good but the plot is dull", 1)) == []  # a cue of the other polarity
    assert edits(("the film is , in the end , good", 1)) == []  # a clause break before the cue
    assert edits(("the film is long and slow and very good", 1)) == []  # the first cue more than three words on
    assert edits(("a good film", 1)) == []  # no copula
    assert edits(("the film is quite long", 1)) == []  # no cue word
    assert edits(("the film is not good", 0))[0][2] == "remove_negator"  # a negator already: never a second


def test_a_negator_that_flips_every_cue_is_removed_and_the_label_flips():
    assert edits(("it's not bad at all .", 1)) == [("it's bad at all .", 0, "remove_negator")]
    assert edits(("the jokes aren't funny", 0)) == [("the jokes are funny", 1, "remove_negator")]
    assert edits(("it can't be dull", 1)) == [("it can be dull", 0, "remove_negator")]
    assert edits(("it is never predictable", 1)) == [("it is predictable", 0, "remove_negator")]
    assert edits(("it is not bad but dull", 1)) == []  # a cue outside the negator's clause
    assert edits(("not bad , and good too", 1)) == []  # a cue that agrees with the label: the negator is not what decides
    assert edits(("nothing here is funny", 0)) == []  # "nothing" cannot simply go
    assert edits(("i did not , after all , like it and it was not good", 0)) == []  # two negators


def test_the_lexicon_is_the_words_whose_sentences_lean_to_one_label():
    pairs = [("a good film", 1)] * 6 + [("a bad film", 0)] * 6 + [("good , not bad", 1)] * 2 + [("rare", 1)] * 2
    assert polarity_lexicon(pairs, min_count=5, min_odds=3.0) == {"good": 1, "bad": 0}  # "a", "film" even; "not" never; "rare" too rare
    assert polarity_lexicon(pairs, min_count=2, min_odds=3.0) == {"good": 1, "bad": 0, "rare": 1}
    assert "bad" not in polarity_lexicon(pairs, min_count=5, min_odds=8.0)  # 7 / (6 + 1): below odds of 8
    with pytest.raises(ValueError, match=r"polarity_lexicon: expected min_count >= 1 and min_odds > 1, got 5 and 1.0"):
        polarity_lexicon(pairs, min_count=5, min_odds=1.0)


def test_balanced_repeats_the_rarer_label_in_turn():
    pairs = [("a", 0), ("b", 0), ("c", 0), ("d", 0), ("e", 0), ("x", 1), ("y", 1)]
    out = balanced(pairs)
    assert sorted(out) == sorted(pairs[:5] + [("x", 1), ("y", 1), ("x", 1), ("y", 1), ("x", 1)])
    assert balanced([("a", 0)]) == [("a", 0)]


def test_the_negator_edits_join_the_training_split_balanced_by_direction():
    train = [("the film is dull", 0), ("the cast was predictable", 0), ("it is not funny", 0), ("the plot is good", 1)]
    data = sentiment.DataConfig(counterfactuals=["insert_negator", "remove_negator"], negation_copies=1, balance_negations=True)
    out = sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], data, say=lambda _: None, lexicon=LEXICON)
    assert out[:4] == train
    added = out[4:]
    assert [y for _, y in added].count(0) == [y for _, y in added].count(1) == 3  # 3 edits to positive, 1 (repeated) to negative
    assert ("it is funny", 1) in added and sum(text.startswith("the plot") for text, _ in added) == 3
    unbalanced = sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], sentiment.DataConfig(counterfactuals=["remove_negator"], negation_copies=2, balance_negations=False),
                                                say=lambda _: None, lexicon=LEXICON)  # fmt: skip
    assert unbalanced[4:] == [("it is funny", 1)] * 2


def test_asides_are_the_neutral_phrases_between_two_commas():
    pairs = [("the film , in the end , works", 1), ("it is , sadly , dull", 0), ("a , b , c", 1), ("so , for 2 hours , we sat", 0),
             ("the plot , not the cast , fails", 0), ("it was , as far as i could tell from my seat at the back , long", 0)]
    # "sadly" alone is one word; "not the cast" has a negator; "for 2 hours" a number; the last is nine words long
    assert neutral_asides(pairs, LEXICON) == ["in the end"]
    assert neutral_asides([("it is , very good indeed , fine", 1)], LEXICON) == []  # a cue word: the aside would say something


def test_an_aside_goes_after_a_negator_that_governs_the_cues_and_keeps_the_label():
    asides = ["in the end", "as usual"]
    out = aside_edits([("the film is not funny", 0), ("it isn't dull at all", 1)], LEXICON, asides)
    assert [y for _, y in out] == [0, 1]
    assert out[0][0] in {f"the film is not , {a} , funny" for a in asides} and out[1][0] in {f"it isn't , {a} , dull at all" for a in asides}
    assert aside_edits([("the film is funny", 1)], LEXICON, asides) == []  # no negator
    assert aside_edits([("it is not what i expected , but it is funny", 1)], LEXICON, asides) == []  # the cue is in another clause
    assert aside_edits([("it is not funny and not clever", 0)], LEXICON, asides) == []  # two negators
    assert aside_edits([("the film is not funny", 0)], LEXICON, []) == []  # no asides to put in
    assert aside_edits([("the film is not funny", 0)], LEXICON, asides) == aside_edits([("the film is not funny", 0)], LEXICON, asides)


def test_aside_edits_join_the_training_split_from_the_task_s_own_asides():
    train = [("the film , in the end , works", 1), ("the plot is dull", 0)]
    data = sentiment.DataConfig(counterfactuals=["insert_negator", "aside"], negation_copies=2, balance_negations=False)
    out = sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], data, say=lambda _: None, lexicon=LEXICON)
    negated = [text for text, y in out[2:] if "in the end" not in text]
    with_aside = [text for text, y in out[2:] if "in the end" in text]
    assert len(negated) == 2 and len(set(negated)) == 1 and all(y == 1 for _, y in out[2:])  # "the plot is not dull", twice
    assert with_aside == [negated[0].replace(" dull", " , in the end , dull")] * 2  # the edit, the aside after its negator
    others = sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], data, say=lambda _: None, lexicon=LEXICON, aside_source=[("no asides", 1)])
    assert not any("in the end" in text for text, _ in others[2:])  # the asides come from aside_source when it is given


def test_raising_puts_a_sentence_under_a_negated_raising_verb_and_flips_the_label():
    (edit,) = raise_edits([("The jokes are flat and dull .", 0)], {**LEXICON, "flat": 0})
    assert edit.rule == "raise" and 1 - edit.label == 1
    assert edit.edited in {f"{frame} the jokes are flat and dull ." for frame in RAISING_FRAMES}
    nouns = ("film", "cast", "plot", "story", "script", "end", "score", "lead", "ending", "music", "pace", "acting")
    raised = {raise_edits([(f"the {noun} is funny", 1)], LEXICON)[0].edited.replace(noun, "X") for noun in nouns}
    assert raised <= {f"{frame} the X is funny" for frame in RAISING_FRAMES} and len(raised) > 2  # varies with the sentence
    with_asides = {raise_edits([(f"the {noun} is funny", 1)], LEXICON, ["in the end"])[0].edited.replace(noun, "X") for noun in nouns}
    assert "i can't say , in the end , that the X is funny" in with_asides or "i don't think , in the end , the X is funny" in with_asides
    assert with_asides & raised  # every other one has no aside
    assert raise_edits([("the film is not funny", 0)], LEXICON) == []  # a negator already
    assert raise_edits([("the film isn't dull", 1)], LEXICON) == []
    assert raise_edits([("the film is funny but dull", 1)], LEXICON) == []  # a cue that disagrees with the label
    assert raise_edits([("the film is long", 1)], LEXICON) == []  # no cue word
    assert raise_edits([("a funny film", 1)], LEXICON) == []  # no copula or modal verb: no clause to raise
    assert raise_edits([("it is funny . then it ends", 1)], LEXICON) == []  # two sentences


def test_raise_edits_join_the_training_split_from_the_task_s_own_sentences_and_need_the_learnt_lexicon():
    train = [("the film is funny", 1), ("the plot is not dull", 1)]
    data = sentiment.DataConfig(counterfactuals=["remove_negator", "raise"], negation_copies=2, balance_negations=False)
    out = sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], data, say=lambda _: None, lexicon=LEXICON)
    raised = raise_edits(train[:1], LEXICON)[0].edited
    assert out[2:] == [("the plot is dull", 0)] * 2 + [(raised, 0)]  # the negations negation_copies times, the raised sentences once
    others = sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], data, say=lambda _: None, lexicon=LEXICON, aside_source=[("the plot is dull", 0)])
    assert not any(text == raised for text, _ in others) and any(text.endswith("the plot is dull") and y == 1 for text, y in others)
    with pytest.raises(DataError, match='"raise" uses the lexicon learnt for the negator edits'):
        sentiment.with_counterfactuals(train, ["<pad>", "<unk>"], sentiment.DataConfig(counterfactuals=["raise"]), say=lambda _: None, lexicon=LEXICON)


@pytest.mark.parametrize("option,value,message", [
    ("negation_copies", 0, "data.negation_copies: expected a number of copies of at least 1, got 0"),
    ("lexicon_min_count", 0, "data.lexicon_min_count: expected a count of at least 1, got 0"),
    ("lexicon_min_odds", 1.0, "data.lexicon_min_odds: expected odds above 1, got 1.0"),
    ("negator_scope", 0, "data.negator_scope: expected at least 1 word, got 0"),
])  # fmt: skip
def test_edit_options_that_would_make_no_edits_are_refused_by_name(option, value, message):
    data = sentiment.DataConfig(counterfactuals=["insert_negator"], **{option: value})
    with pytest.raises(DataError, match=message):
        sentiment.with_counterfactuals([("the film is good", 1)], ["<pad>", "<unk>"], data, say=lambda _: None, lexicon=LEXICON)
