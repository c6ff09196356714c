"""The word-level LM task and the sentiment task's transfer recipe, through the command line, at tiny sizes.

`rnnkit train lm --data FILE...`, `rnnkit train sentiment --init RUN`, `rnnkit predict RUN --file FILE`,
`rnnkit explain` with its PNG; the negation set, NB-SVM and the overlap check.
"""

from __future__ import annotations

import json

import pytest
import torch

from rnnkit.cli.main import main
from rnnkit.models import load_model
from rnnkit.tasks import lm, sentiment, sentiment_eval, sentiment_transfer
from tests.test_tasks_sentiment import write_reviews

TINY_LM = ["--size", "fast", "model.embedding_dim=16", "model.rnn.hidden_size=16", "trainer.max_steps=4", "data.min_count=1"]
TINY_SENTIMENT = ["--size", "fast", "pretrain.enabled=true", "pretrain.finetune_epochs=1", "trainer.max_epochs=3"]


def write_lines(path, n: int, seed: int) -> None:
    """Unlabelled film talk, in the reviews' words (each line one document)."""
    rng = __import__("random").Random(seed)
    # no "." : every review ends with one, so no line can hold a whole validation or test sentence (which --init refuses)
    words = ["the film is", "not", "really", "good", "bad", "great", "dull", "and", "a", "plot", "cast"]
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(rng.randint(5, 15))) for _ in range(n)) + "\n")


@pytest.fixture(scope="module")
def transfer_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("transfer")
    write_lines(root / "a.txt", 120, 0)
    write_lines(root / "b.txt", 80, 1)
    write_reviews(root / "reviews.csv", n=200)
    # `--data` takes several files, and overrides may follow them
    assert main(["train", "lm", "--data", str(root / "a.txt"), str(root / "b.txt"), "trainer.max_steps=4", *TINY_LM, "--out", str(root / "lm")]) == 0
    assert main(["train", "sentiment", "--data", str(root / "reviews.csv"), "--init", str(root / "lm"), *TINY_SENTIMENT,
                 "--out", str(root / "sentiment")]) == 0  # fmt: skip
    return root


def test_train_lm_reads_every_file_and_reports_perplexity_beside_ngrams(transfer_runs, capsys):
    config = json.loads((transfer_runs / "lm" / "config.json").read_text())["config"]
    assert [p.rsplit("/", 1)[-1] for p in config["data"]["paths"]] == ["a.txt", "b.txt"]
    assert config["trainer"]["tbptt_k1"] == 35 and config["trainer"]["max_steps"] == 4
    results = json.loads((transfer_runs / "lm" / "results.json").read_text())
    assert set(results["rows"]) == {"LSTM language model", "bigram, Witten-Bell", "unigram, add-one"}
    model, extra = load_model(transfer_runs / "lm" / "model.safetensors")
    assert extra["vocabulary"][:3] == ["<pad>", "<unk>", "<eos>"] and "plot" in extra["vocabulary"]
    assert all(0 < row["perplexity"] < len(extra["vocabulary"]) * 2 for row in results["rows"].values())
    capsys.readouterr()
    assert main(["eval", str(transfer_runs / "lm")]) == 0  # reloaded: the same held-out perplexity
    assert f"{results['rows']['LSTM language model']['perplexity']:.2f}" in capsys.readouterr().out


def test_sentiment_init_starts_from_the_language_model_and_fine_tunes_it(transfer_runs):
    classifier, extra = load_model(transfer_runs / "sentiment" / "model.safetensors")
    language_model, lm_extra = load_model(transfer_runs / "lm" / "model.safetensors")
    assert extra["vocabulary"] == lm_extra["vocabulary"]  # the classifier reads with the LM's vocabulary
    assert classifier.rnn.weight_hh_l0.shape == language_model.rnn.weight_hh_l0.shape
    assert not torch.equal(classifier.rnn.weight_hh_l0, language_model.rnn.weight_hh_l0)  # stages 2 and 3 trained it
    assert (transfer_runs / "sentiment" / "lm-finetuned" / "metrics.csv").is_file()
    results = json.loads((transfer_runs / "sentiment" / "results.json").read_text())
    name = "LSTM classifier (pretrained LM)"
    assert {name, "bag-of-words MLP", "NB-SVM (uni+bigrams)"} <= set(results["rows"])
    assert 0 <= results["rows"][name]["negation set"] <= 1 and results["rows"][name]["std error"] > 0


def test_init_refuses_a_run_that_is_not_a_language_model(transfer_runs, capsys):
    assert main(["train", "sentiment", "--init", str(transfer_runs / "nowhere"), "--out", str(transfer_runs / "x")]) == 2
    assert "--init: expected a run folder of `rnnkit train lm`" in capsys.readouterr().err
    assert main(["train", "co2", "--init", str(transfer_runs / "lm"), "--out", str(transfer_runs / "y")]) == 2
    assert "--init: expected it with `train sentiment`" in capsys.readouterr().err
    assert main(["train", "sentiment", "--data", "a.csv", "b.csv", "--out", str(transfer_runs / "z")]) == 2
    assert "--data: expected one file for this task, got 2" in capsys.readouterr().err


def test_init_refuses_a_language_model_that_saw_the_held_out_sentences(transfer_runs, capsys, tmp_path):
    # `rnnkit train lm` knows nothing of the sentiment task's split: a language model trained on text that holds its
    # validation or test sentences (here: every review, one per line) would carry them into the classifier
    import csv

    with open(transfer_runs / "reviews.csv", newline="") as f:
        (tmp_path / "leaky.txt").write_text("\n".join(row["text"] for row in csv.DictReader(f)) + "\n")
    assert main(["train", "lm", "--data", str(tmp_path / "leaky.txt"), *TINY_LM, "--out", str(tmp_path / "lm")]) == 0
    capsys.readouterr()
    assert main(["train", "sentiment", "--data", str(transfer_runs / "reviews.csv"), "--init", str(tmp_path / "lm"), *TINY_SENTIMENT,
                 "--out", str(tmp_path / "sentiment")]) == 1  # fmt: skip
    err = capsys.readouterr().err
    assert "pretrain.init: expected a language model that never saw this task's validation and test sentences" in err
    assert "document(s) with one" in err and "Traceback" not in err
    (tmp_path / "leaky.txt").unlink()  # the text is gone: the check cannot be made, and says so
    assert main(["train", "sentiment", "--data", str(transfer_runs / "reviews.csv"), "--init", str(tmp_path / "lm"), *TINY_SENTIMENT,
                 "--out", str(tmp_path / "sentiment2")]) == 1  # fmt: skip
    assert "cannot check that the language model" in capsys.readouterr().err


def test_predict_file_gives_one_prediction_per_line_as_predict_does(transfer_runs, capsys, tmp_path):
    lines = ["the film is really good .", "not good", "a dull plot and a bad cast ."] * 5
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    assert main(["predict", str(transfer_runs / "sentiment"), "--file", str(tmp_path / "in.txt")]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == len(lines)
    assert main(["predict", str(transfer_runs / "sentiment"), lines[1]]) == 0
    assert capsys.readouterr().out.strip() == out[1]
    (tmp_path / "blank.txt").write_text("good\n\nbad\n")
    assert main(["predict", str(transfer_runs / "sentiment"), "--file", str(tmp_path / "blank.txt")]) == 1
    assert "line 2: expected an input, got a blank line" in capsys.readouterr().err
    assert main(["predict", str(transfer_runs / "sentiment")]) == 2
    assert "TEXT/--file: expected exactly one of them, got neither" in capsys.readouterr().err


def test_explain_draws_the_heat_strip(transfer_runs, capsys, tmp_path):
    assert main(["explain", str(transfer_runs / "sentiment"), "the film is not good", "--png", str(tmp_path / "s.png")]) == 0
    assert "heat strip:" in capsys.readouterr().out
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# -- the pieces -------------------------------------------------------------------------------------


def test_the_negation_set_is_hand_written_balanced_and_large_enough():
    rows = sentiment_eval.negation_set()
    assert len(rows) >= 120 and len({t for t, _, _ in rows}) == len(rows)
    assert sum(y for _, y, _ in rows) * 2 == len(rows)
    categories = {c for _, _, c in rows}
    assert categories == {"negated positive", "negated negative", "but contrast", "negation at a distance"}
    for category in ("but contrast", "negation at a distance"):
        labels = [y for _, y, c in rows if c == category]
        assert sum(labels) * 2 == len(labels) >= 30
    assert all(y == 0 for _, y, c in rows if c == "negated positive") and all(y == 1 for _, y, c in rows if c == "negated negative")


def test_nbsvm_learns_bigrams_that_a_bag_of_words_cannot():
    train = [("not good", 0), ("good", 1), ("a good one", 1), ("not bad", 1), ("bad", 0), ("a bad one", 0)] * 10
    model = sentiment_eval.NBSVM(train, train[:12])
    assert model.accuracy(train) == 1.0
    assert sentiment_eval.standard_error(0.8, 100) == pytest.approx(0.04)


def test_held_out_overlap_finds_documents_that_contain_a_sentence():
    documents = ["It was fine. The plot is a total mess from start to end. Bye", "nothing here", "a total mess"]
    assert sentiment_transfer.held_out_overlap(documents, ["the plot is a total mess", "a total mess"]) == {0}


def test_pretraining_refuses_a_classifier_unlike_its_language_model():
    config = sentiment.Config()
    with pytest.raises(ValueError, match="pretrain.lm.model.embedding_dim: expected model.embedding_dim's value 128 .*got 64"):
        sentiment_transfer.check_same_architecture(config)  # the default classifier's embedding is wider than the default LM's
    config.model.embedding_dim = config.pretrain.lm.model.embedding_dim
    config.model.rnn.hidden_size = 67
    with pytest.raises(ValueError, match="pretrain.lm.model.rnn.hidden_size: expected model.rnn.hidden_size's value 67"):
        sentiment_transfer.check_same_architecture(config)
    config.model.rnn.hidden_size = config.pretrain.lm.model.rnn.hidden_size
    config.model.rnn.bidirectional = False
    sentiment_transfer.check_same_architecture(config)  # ULMFIT's overrides make them agree


def test_lm_vocabulary_keeps_the_most_frequent_words():
    tokens = lm.stream(["b a a c", "a b"])
    assert tokens == ["b", "a", "a", "c", "<eos>", "a", "b", "<eos>"]
    assert lm.build_vocabulary(tokens, min_count=2, max_vocab=4) == ["<pad>", "<unk>", "<eos>", "a"]
