"""Tiny trained runs of every task, for the server's tests: trained through the tasks' own code with small overrides.

Sentiment and charlm are trained until they work (the browser test reads their
answers: "not" must count against "good"); the others train a step or an
epoch, enough to exercise their endpoints with real run folders.
"""

from __future__ import annotations

from pathlib import Path

from unittest import mock

from rnnkit import tasks
from rnnkit.tasks import speech
from tests.test_tasks_captioning import write_digits
from tests.test_tasks_charlm import write_text
from tests.test_tasks_forecasting import write_series
from tests.test_tasks_music import write_corpus
from tests.test_tasks_sentiment import write_reviews
from tests.test_tasks_translation import reversed_cipher

QUIET = ["trainer.progress=False"]


def train_tiny_runs(folder: Path, names: tuple[str, ...] = ("sentiment", "charlm", "co2", "translation", "captioning", "music", "speech")) -> dict[str, Path]:
    """Train the named tasks' runs into ``folder/<task>``; returns ``{task: run folder}``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "data"
    data.mkdir(exist_ok=True)
    recipes = {
        "sentiment": lambda: (write_reviews(data / "reviews.csv"), data / "reviews.csv",
                              ["trainer.max_epochs=5", "model.rnn.hidden_size=24", "model.dropout=0", "optim.lr=0.01"])[1:],
        "charlm": lambda: (write_text(data / "text.txt", n=6000), data / "text.txt",
                           ["trainer.max_steps=30", "trainer.eval_every=30", "data.eval_chars=None", "optim.lr=0.01"])[1:],
        "co2": lambda: (write_series(data / "series.csv"), data / "series.csv",
                        ["data.season=12", "data.window=24", "data.horizon=6", "trainer.max_epochs=1", "model.rnn.hidden_size=8"])[1:],
        "translation": lambda: (Path(reversed_cipher(data, 120)), ["data.max_pairs=null", "trainer.max_epochs=1", "model.rnn.hidden_size=8", "model.embedding_dim=8"]),
        "captioning": lambda: (write_digits(data / "digits.csv", n=200), data / "digits.csv", ["trainer.max_epochs=1"])[1:],
        "music": lambda: (write_corpus(data / "corpus", count=12), data / "corpus", ["trainer.max_epochs=1", "batch_size=8"])[1:],
        "speech": lambda: (None, ["data.train_utterances=8", "data.val_utterances=2", "data.test_utterances=2", "trainer.max_epochs=1",
                                  "model.rnn.hidden_size=8", "baseline.hidden_size=8"]),
    }  # fmt: skip
    runs = {}
    for name in names:
        path, overrides = recipes[name]()
        task = tasks.get(name)
        config = task.config("fast", [*overrides, *QUIET], data=None if path is None else str(path))
        with mock.patch.object(speech, "find_tidigits", lambda data: None):  # speech reports on synthetic voices only: faster
            task.train(config, folder / name, say=lambda message: None)
        runs[name] = folder / name
    return runs
