"""Captioning: the digits loader on real and bad files, strips and captions, the model's decoding, and training end to end."""

from __future__ import annotations

import gzip
import math

import matplotlib.image
import numpy as np
import pytest
import torch

from rnnkit import tasks
from rnnkit.models import ImageCaptioner, ImageCaptionerConfig, RecurrentConfig, decoding, load_model, save_model
from rnnkit.tasks import captioning as C
from rnnkit.tasks.common import DataError
from tests.test_tasks_common import require_real_data


def write_digits(path, n: int = 400, seed: int = 0) -> C.Digits:
    """Synthetic 8 x 8 "digits": ten random glyphs (mostly background, as real digits are), each image one of them
    plus pixel noise, as a headerless CSV."""
    rng = np.random.default_rng(seed)
    glyphs = rng.integers(4, 17, size=(10, 64)) * (rng.random((10, 64)) < 0.4)
    labels = rng.integers(0, 10, size=n)
    images = np.clip(glyphs[labels] + rng.integers(-3, 4, size=(n, 64)), 0, 16)
    path.write_text("".join(",".join(map(str, row)) + f",{label}\n" for row, label in zip(images, labels)))
    return C.Digits(images.reshape(n, 8, 8).astype(np.float32), labels)


def row(pixels=None, label="7") -> str:
    return ",".join(pixels or ["0"] * 64) + f",{label}\n"


# -- the loader ----------------------------------------------------------------------------------


def test_loader_reads_a_csv_of_your_own_plain_or_gzipped(tmp_path):
    written = write_digits(tmp_path / "d.csv", n=5)
    for path in (tmp_path / "d.csv", tmp_path / "d.csv.gz"):
        if path.suffix == ".gz":
            path.write_bytes(gzip.compress((tmp_path / "d.csv").read_bytes()))
        digits = C.load_digits(str(path))
        assert np.array_equal(digits.images, written.images) and digits.labels.tolist() == written.labels.tolist()


@pytest.mark.parametrize("content,message", [
    (b"", r"expected a CSV of 64 pixel values \(0 to 16\) and a label \(0 to 9\) per row, found an empty file"),
    (b"\x1f\x8b\x08broken", r"expected gzip-compressed CSV, found a broken gzip stream"),
    ("0," * 64 + "caf\xe9\n", r"expected UTF-8 text \(a CSV of 64 pixel values .*\), found byte 0xe9 at line 1"),
    (row() + "0," * 60 + "7\n", r"line 2: expected 65 fields \(64 pixel values, then a label\), found 61"),
    (",".join(f"p{i}" for i in range(64)) + ",label\n", r"line 1, field 1: expected a number \(the format has no header row\), found 'p0'"),
    (row() + row(["0"] * 4 + ["x"] + ["0"] * 59), r"line 2, field 5: expected a number, found 'x'"),
    (row(["0", "0", "17"] + ["0"] * 61), r"line 1, field 3: expected a pixel value from 0 to 16, found '17'"),
    (row(["-1"] + ["0"] * 63), r"line 1, field 1: expected a pixel value from 0 to 16, found '-1'"),
    (row(["nan"] + ["0"] * 63), r"line 1, field 1: expected a pixel value from 0 to 16, found 'nan'"),
    (row(label="10"), r"line 1, field 65: expected a label, a whole number from 0 to 9, found '10'"),
    (row(label="3.5"), r"line 1, field 65: expected a label, a whole number from 0 to 9, found '3.5'"),
])  # fmt: skip
def test_loader_rejects_bad_files_naming_them(tmp_path, content, message):
    path = tmp_path / "bad.csv"
    path.write_bytes(content.encode("latin-1") if isinstance(content, str) else content)
    with pytest.raises(DataError, match=rf"{path}.*{message}"):
        C.load_digits(str(path))


def test_too_few_images_for_three_splits_is_an_error(tmp_path):
    write_digits(tmp_path / "d.csv", n=2)
    with pytest.raises(DataError, match=r"data: expected enough images for train, validation and test splits, found 2"):
        C.build_strips(C.load_digits(str(tmp_path / "d.csv")), C.DataConfig())


def test_data_config_checks_its_values():
    with pytest.raises(ValueError, match=r"data.digits: expected a positive int, got 0"):
        C.DataConfig(digits=0)
    with pytest.raises(ValueError, match=r"expected positive fractions that sum to less than 1, got 0.5 and 0.5"):
        C.DataConfig(val_fraction=0.5, test_fraction=0.5)


def test_loader_reads_the_real_digits():
    require_real_data(C.ARCHIVE)
    digits = C.load_digits()
    assert digits.images.shape == (1797, 8, 8) and digits.images.max() == 16 and digits.images.min() == 0
    assert np.bincount(digits.labels).tolist() == [178, 182, 177, 183, 181, 182, 181, 179, 174, 180]
    assert digits.images[0, 0].tolist() == [0, 0, 5, 13, 9, 1, 0, 0] and digits.labels[0] == 0 and digits.labels[-1] == 8


# -- strips, captions, metrics ----------------------------------------------------------------


def test_strips_use_only_their_splits_images_laid_side_by_side(tmp_path):
    digits = write_digits(tmp_path / "d.csv")
    data = C.DataConfig(digits=3, train_strips=300, val_strips=50, test_strips=70)
    train, val, test = C.build_strips(digits, data)
    pools = [set(p.tolist()) for p in C.split_images(len(digits.labels), data)]
    used = [set(s.sources.reshape(-1).tolist()) for s in (train, val, test)]
    assert all(u <= p for u, p in zip(used, pools)) and not (used[0] & used[2]) and not (used[0] & used[1])  # test images unseen
    assert test.images.shape == (70, 1, 8, 24) and test.labels.shape == (70, 3)
    for k in range(3):
        assert torch.equal(test.images[:, 0, :, 8 * k : 8 * k + 8], torch.from_numpy(digits.images[test.sources[:, k]] / 16))
        assert test.labels[:, k].tolist() == digits.labels[test.sources[:, k]].tolist()
    again = C.build_strips(digits, data)[2]
    assert np.array_equal(again.sources, test.sources)  # seeded
    assert not np.array_equal(C.build_strips(digits, C.DataConfig(split_seed=1, test_strips=70))[2].sources, test.sources)


def test_captions_are_the_digits_words_and_teacher_forcing_shifts_them():
    labels = torch.tensor([[4, 1, 9], [0, 0, 7]])
    assert [C.caption(r) for r in labels] == [["four", "one", "nine"], ["zero", "zero", "seven"]]
    tokens_in, targets = C.teacher_forcing(labels)
    assert [[C.VOCABULARY[t] for t in r] for r in tokens_in.tolist()] == [["<bos>", "four", "one", "nine"], ["<bos>", "zero", "zero", "seven"]]
    assert [[C.VOCABULARY[t] for t in r] for r in targets.tolist()] == [["four", "one", "nine", "<eos>"], ["zero", "zero", "seven", "<eos>"]]
    eos, four, one = C.EOS, C.VOCABULARY.index("four"), C.VOCABULARY.index("one")
    assert C.decode_captions(torch.tensor([[four, one, eos, eos], [one, 0, one, one]])) == [["four", "one"], ["one", "<pad>", "one", "one"]]


def test_scores_exact_match_bleu_and_word_accuracy():
    references = [["four", "one", "nine"], ["two", "two", "three"], ["one", "two", "three"]]
    assert C.score(references, references) == pytest.approx({"exact match": 1.0, "BLEU-3": 100.0, "word accuracy": 1.0})
    hypotheses = [["four", "one", "nine"], ["two", "two"], ["three", "two", "one"]]
    result = C.score(hypotheses, references)
    assert result["exact match"] == pytest.approx(1 / 3) and result["word accuracy"] == pytest.approx(6 / 9)
    # by hand: n-gram matches 8/8, 3/5, 1/2; 8 words against 9, so the brevity penalty is exp(1 - 9/8)
    assert result["BLEU-3"] == pytest.approx(100 * math.exp(1 - 9 / 8) * (1 * 3 / 5 * 1 / 2) ** (1 / 3))


# -- the model ---------------------------------------------------------------------------------


def small_captioner(cell: str = "gru") -> ImageCaptioner:
    torch.manual_seed(0)
    return ImageCaptioner(ImageCaptionerConfig(8, 24, 13, [4, 8], 16, 8, RecurrentConfig(cell=cell, hidden_size=16))).eval()


@pytest.mark.parametrize("cell", ["gru", "lstm"])
def test_captioner_shapes_and_decoding_agree_with_teacher_forcing(cell):
    model, images = small_captioner(cell), torch.rand(5, 1, 8, 24)
    logits, _ = model((images, torch.randint(0, 13, (5, 4))))
    assert logits.shape == (5, 4, 13)
    greedy = model.generate(images, max_length=4)
    assert torch.equal(greedy, model.generate(images, max_length=4, beam_size=1))
    assert torch.equal(greedy, decoding.beam_search(model, *model.decode_start(images), beam_size=1, max_length=4, eos=2)[0])
    # decoding step by step (the state carried) picks what the whole-sequence forward pass would, fed its own tokens
    teacher, _ = model((images, torch.cat([torch.ones(5, 1, dtype=torch.long), greedy[:, :-1]], dim=1)))
    assert torch.equal(teacher.argmax(-1)[:, 0], greedy[:, 0])
    upto_eos = torch.cumsum((greedy == 2).long(), dim=1) - (greedy == 2).long() == 0
    assert torch.equal(teacher.argmax(-1)[upto_eos], greedy[upto_eos])
    assert model.generate(images, max_length=4, beam_size=3).shape[0] == 5


def test_captioner_save_load_round_trip_gives_identical_outputs(tmp_path):
    model, images, tokens = small_captioner(), torch.rand(3, 1, 8, 24), torch.randint(0, 13, (3, 4))
    save_model(model, tmp_path / "m.safetensors", extra={"vocabulary": C.VOCABULARY})
    loaded, extra = load_model(tmp_path / "m.safetensors")
    assert type(loaded) is ImageCaptioner and loaded.config == model.config and extra["vocabulary"] == C.VOCABULARY
    assert torch.equal(loaded.eval()((images, tokens))[0], model((images, tokens))[0])
    assert torch.equal(loaded.generate(images, 4, beam_size=3), model.generate(images, 4, beam_size=3))


def test_captioner_rejects_bad_images_and_configs():
    model = small_captioner()
    with pytest.raises(ValueError, match=r"images: expected a tensor of shape \(batch, 1, 8, 24\), got shape \(2, 1, 8, 23\)"):
        model((torch.rand(2, 1, 8, 23), torch.zeros(2, 4, dtype=torch.long)))
    with pytest.raises(ValueError, match=r"images: expected floating-point pixels, got dtype torch.int64"):
        model.generate(torch.zeros(2, 1, 8, 24, dtype=torch.long), 4)
    with pytest.raises(ValueError, match=r"image_height, image_width: expected at least 8 pixels each for 3 pooling blocks, got 7 x 24"):
        ImageCaptionerConfig(7, 24, 13, channels=[4, 4, 4])


# -- images for predict -------------------------------------------------------------------------


@pytest.mark.parametrize("cmap,scale", [("gray_r", 10), ("gray", 1)])
def test_read_image_turns_a_png_back_into_a_strip(tmp_path, cmap, scale):
    rng = np.random.default_rng(0)
    strip = rng.integers(0, 17, size=(8, 24)) * (rng.random((8, 24)) < 0.4) / 16  # like the digits: mostly background
    matplotlib.image.imsave(tmp_path / "s.png", np.kron(strip, np.ones((scale, scale))), cmap=cmap, vmin=0, vmax=1)
    image = C.read_image(str(tmp_path / "s.png"), digits=3)  # dark ink on white is flipped back to ink-high
    assert image.shape == (1, 1, 8, 24) and np.abs(image[0, 0].numpy() - strip).max() < 0.01


def test_read_image_errors_name_the_file(tmp_path):
    matplotlib.image.imsave(tmp_path / "odd.png", np.zeros((8, 23)), cmap="gray")
    expected = r"expected an image of 8 x 24 pixels \(height x width\) or a whole multiple such as 80 x 240, found 8 x 23"
    with pytest.raises(DataError, match=rf"odd.png: {expected}"):
        C.read_image(str(tmp_path / "odd.png"), digits=3)
    (tmp_path / "not.png").write_text("hello")
    with pytest.raises(DataError, match=r"not.png: expected a PNG image, found a file that does not read as one"):
        C.read_image(str(tmp_path / "not.png"), digits=3)
    with pytest.raises(DataError, match=r"text: expected 3 digits \(like '419'\) or the path of a PNG image, got 'nope.png', which is neither"):
        C.read_image("nope.png", digits=3)


# -- end to end ---------------------------------------------------------------------------------


def test_trains_end_to_end_and_beats_the_frequency_baselines(tmp_path):
    write_digits(tmp_path / "d.csv")
    task = tasks.get("captioning")
    config = task.config("fast", data=str(tmp_path / "d.csv"))
    run = tmp_path / "run"
    report = task.train(config, run, say=lambda message: None)
    greedy, beam, neighbour, frequent_caption, frequent_words, reference = report.rows.values()
    # the stated check: word accuracy far above the most frequent word per position (about 0.1 with ten digits)
    assert greedy["word accuracy"] >= 0.9 and frequent_words["word accuracy"] <= 0.2
    assert min(greedy["exact match"], beam["exact match"]) >= 0.8 and frequent_caption["exact match"] <= 0.05
    assert reference["exact match"] >= 0.95 and neighbour["exact match"] > 0.5  # the glyphs are easy: the baselines work too
    for name in ("config.json", "model.safetensors", "metrics.csv", "loss.png", "captions.png", "REPORT.md", "results.json"):
        assert (run / name).is_file(), name
    assert C.evaluate(config, run).rows == report.rows  # reloaded from disk: the same numbers

    answer = C.predict(config, run, "419")
    assert answer.startswith("four one nine  (a strip of held-out test images ")
    digits = C.load_digits(config.data.path)
    chosen = [int(i) for i in answer.split("[")[1].rstrip("])").split(", ")]
    assert digits.labels[chosen].tolist() == [4, 1, 9] and set(chosen) <= set(C.split_images(len(digits.labels), config.data)[2].tolist())
    strip = C.side_by_side(digits.images[chosen][None])[0, 0].numpy()
    matplotlib.image.imsave(tmp_path / "strip.png", np.kron(strip, np.ones((10, 10))), cmap="gray_r", vmin=0, vmax=1)
    assert C.predict(config, run, str(tmp_path / "strip.png")) == "four one nine"  # the same strip, as an image file
    with pytest.raises(DataError, match=r"text: expected 3 digits \(the strips this model was trained on\), got '41'"):
        C.predict(config, run, "41")
