"""Sentiment: the loader on real and bad files, the contrast set's rules, and training end to end at a tiny size."""

from __future__ import annotations

import csv
import random

import pytest

from rnnkit import tasks
from rnnkit.tasks import sentiment
from rnnkit.tasks.common import DataError
from tests.test_tasks_common import require_real_data

POSITIVE, NEGATIVE = ["good", "great", "fine", "lovely", "superb"], ["bad", "awful", "poor", "dull", "weak"]


def write_reviews(path, n: int = 600, seed: int = 0) -> None:
    """Synthetic reviews whose label depends on word order: "the film is (not) ADJ", negation flips the adjective."""
    rng = random.Random(seed)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id", "text", "label"])
        for i in range(n):
            positive, negated = rng.random() < 0.5, rng.random() < 0.5
            adjective = rng.choice(POSITIVE if positive else NEGATIVE)
            text = f"the {rng.choice(['film', 'movie', 'plot', 'cast'])} is {'not ' if negated else ''}{rng.choice(['', 'really ', 'quite '])}{adjective} ."
            writer.writerow([i, text, "positive" if positive != negated else "-1"])


def test_loader_reads_a_csv_of_your_own(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('label,text\n1,"a witty, gorgeous film"\nneg,it drags\n0,meh\nPOSITIVE,yes\n')
    assert sentiment.load_corpus(str(path)) == [("a witty, gorgeous film", 1), ("it drags", 0), ("meh", 0), ("yes", 1)]


@pytest.mark.parametrize("content,message", [
    (b"", r"expected a CSV of labelled sentences, found an empty file"),
    (b"label,review\n1,good\n", r"expected a header row with the columns \['label', 'text'\], found \['label', 'review'\]"),
    (b"label,text\n1,caf\xe9\n", r"expected UTF-8 text \(a CSV of labelled sentences\), found byte 0xe9 at line 2"),
    (b"label,text\n1,good\n5,bad\n", r"line 3: expected a label among .*, found '5'"),
])  # fmt: skip
def test_loader_rejects_bad_files_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    with pytest.raises(DataError, match=rf"{path}.*{message}"):
        sentiment.load_corpus(str(path))


def test_loader_reads_the_real_corpus():
    require_real_data(sentiment.ARCHIVE)
    corpus = sentiment.load_corpus()
    assert len(corpus) == 4000 and sum(label for _, label in corpus) == 2000
    assert corpus[0][0].startswith("the rock is destined to be the 21st century's new") and corpus[0][1] == 1
    assert corpus[-1] == ("it all feels like a monty python sketch gone horribly wrong .", 0)


def test_encoding_pads_and_maps_rare_words_to_unknown():
    vocabulary = sentiment.build_vocabulary(["a good film .", "a bad film !", "a film"], min_count=2)
    assert vocabulary == ["<pad>", "<unk>", "a", "film"]
    tokens, lengths = sentiment.encode(["a good film", "film"], vocabulary, max_length=60)
    assert tokens.tolist() == [[2, 1, 3], [3, 0, 0]] and lengths.tolist() == [3, 1]


def test_contrast_set_flips_sentences_by_rule():
    vocabulary = ["<pad>", "<unk>", "bad", "good", "dull"]
    pairs = [("The cast is really good .", 1), ("a fun ride", 1), ("good but bad", 1), ("not good", 1), ("a good film", 0)]
    edits = sentiment.contrast_set(pairs, vocabulary)
    # "a fun ride": the antonym "dull"... is known, so swapped; "good but bad" has two cues, "not good" a negator,
    # and "a good film" is labelled against its cue: all three are left out.
    assert [(e.edited, 1 - e.label, e.rule) for e in edits] == [
        ("the cast is really bad .", 0, "antonym"),
        ("the cast is not really good .", 0, "negation"),
        ("a dull ride", 0, "antonym"),
    ]
    assert [e.rule for e in sentiment.contrast_set(pairs, ["<pad>", "<unk>"])] == ["negation"]  # no unknown antonyms


def test_trains_end_to_end_and_beats_the_majority_class(tmp_path):
    write_reviews(tmp_path / "reviews.csv")
    task = tasks.get("sentiment")
    overrides = ["trainer.max_epochs=5", "model.rnn.hidden_size=24", "model.dropout=0", "optim.lr=0.01"]
    config = task.config("fast", overrides, data=str(tmp_path / "reviews.csv"))
    run = tmp_path / "run"
    report = task.train(config, run, say=lambda message: None)
    rnn, _, nbsvm, majority = report.rows.values()
    assert rnn["accuracy"] >= 0.9 and majority["accuracy"] <= 0.6  # the stated check: far above the majority class
    assert nbsvm["accuracy"] >= majority["accuracy"] + 0.1  # bigrams read "not good", though not "not really good"
    for row in (rnn, nbsvm, majority):  # sqrt(a (1 - a) / n) on the 120 test sentences
        assert row["std error"] == pytest.approx((row["accuracy"] * (1 - row["accuracy"]) / 120) ** 0.5)
    assert majority["std error"] > 0.04
    assert rnn["negations"] >= 0.8  # "the film is good" -> "the film is not good", label flipped: the RNN reads it
    for name in ("config.json", "model.safetensors", "baseline/model.safetensors", "metrics.csv", "loss.png", "REPORT.md", "results.json"):
        assert (run / name).is_file(), name
    assert sentiment.evaluate(config, run).rows == report.rows  # reloaded from disk: the same numbers
    assert sentiment.predict(config, run, "the plot is not great .").startswith("negative (probability ")


def test_explain_gives_each_word_the_change_in_probability_when_it_is_removed():
    vocabulary = ["<pad>", "<unk>", "the", "film", "is", "not", "good", "."]
    rnn, _ = sentiment.build_models(sentiment.Config(), len(vocabulary))
    rnn.eval()
    p, words = sentiment.explain(rnn, "The film is NOT good, really", vocabulary)
    assert [(w.word, w.known) for w in words] == [("the", True), ("film", True), ("is", True), ("not", True), ("good", True),
                                                 (",", False), ("really", False)]  # fmt: skip
    (full,) = sentiment.probabilities(rnn, ["the film is not good , really"], vocabulary)
    assert p == pytest.approx(full, abs=1e-6)
    for i, w in enumerate(words):  # one sentence at a time, against the batched occlusion
        rest = ["the", "film", "is", "not", "good", ",", "really"][:i] + ["the", "film", "is", "not", "good", ",", "really"][i + 1 :]
        assert w.contribution == pytest.approx(full - sentiment.probabilities(rnn, [" ".join(rest)], vocabulary)[0], abs=1e-6)
    (alone,) = sentiment.explain(rnn, "good", vocabulary)[1]
    assert alone.contribution == pytest.approx(sentiment.probabilities(rnn, ["good", "<unk>"], vocabulary)[0]
                                               - sentiment.probabilities(rnn, ["zzz"], vocabulary)[0], abs=1e-6)  # fmt: skip
    with pytest.raises(DataError, match=r"text: expected a sentence with at least one word, got '  '"):
        sentiment.explain(rnn, "  ", vocabulary)


def test_counterfactual_edits_join_the_training_split_with_copies_of_the_negations():
    vocabulary = ["<pad>", "<unk>", "bad", "good", "dull", "fun"]
    train = [("The cast is really good .", 1), ("a fun ride", 1), ("it is bad", 0)]
    data = sentiment.DataConfig(counterfactuals=["negation", "antonym"], negation_copies=3)
    out = sentiment.with_counterfactuals(train, vocabulary, data, say=lambda _: None)
    negations = [("the cast is not really good .", 0)] * 3 + [("it is not bad", 1)] * 3
    assert out[:3] == train and sorted(out[3:]) == sorted([("the cast is really bad .", 0), ("a dull ride", 0), ("it is good", 1), *negations])
    only_swaps = sentiment.DataConfig(counterfactuals=["antonym"], negation_copies=3)
    assert sentiment.with_counterfactuals(train, vocabulary, only_swaps, say=lambda _: None)[3:] == [("the cast is really bad .", 0), ("a dull ride", 0), ("it is good", 1)]
    with pytest.raises(DataError, match=r"data.negation_copies: expected a number of copies of at least 1, got 0"):
        sentiment.with_counterfactuals(train, vocabulary, sentiment.DataConfig(counterfactuals=["negation"], negation_copies=0), say=lambda _: None)
