r"""Image captioning (one-to-many): a CNN + GRU captioner for strips of handwritten digits, beside nearest-neighbour captions.

Examples::

    rnnkit train captioning --out runs/captioning
    rnnkit train captioning data.digits=4 model.rnn.cell=lstm trainer.max_epochs=12
    rnnkit train captioning --data my_digits.csv --out runs/mine
    rnnkit predict runs/captioning 419            # a strip of held-out test images of 4, 1 and 9
    rnnkit predict runs/captioning strip.png      # an image of your own: 8 x 24 pixels, or a whole multiple
    rnnkit eval runs/captioning

Data. By default scikit-learn's handwritten digits (the UCI optical
recognition set's test part: 1,797 images of 8 x 8 pixels, values 0 to 16,
ink high), read from ``sklearn/datasets/data/digits.csv.gz`` inside the
scikit-learn wheel that ``make data`` downloads; scikit-learn is never
installed or imported. That file is a headerless CSV, one image per row: 64
pixel values, row by row, then the label. Your own data (``--data PATH``): a
UTF-8 CSV (or gzip of one) in the same format; any number 0 to 16 is a pixel.

Method. The *images* are split first (seeded) into train, validation and
test, so that every test strip is made of images no model has seen. A strip
is ``data.digits`` images side by side (8 x 24 for three), captioned with the
digits' English words ("four one nine"); each split draws its own number of
strips at random from its own images. The vocabulary is ``<pad> <bos> <eos>``
and the ten words. An :class:`~rnnkit.models.ImageCaptioner` (two conv + pool
blocks, a linear map to the image vector, a GRU decoder that starts from it
and reads it at every step) learns by teacher forcing and keeps the weights
with the best validation loss. Captions are decoded greedily (the verdict's
row, and ``predict``) and by beam search (``beam_size``), both reported.

``predict`` takes a string of ``data.digits`` digits, and builds the strip
from held-out test images (the k-th occurrence of a digit takes that digit's
k-th test image), or the path of a PNG image of 8 x 8k pixels or a whole
multiple of that (block-averaged down). A colour image becomes grayscale, and
a light background (the median pixel above 0.5) is flipped so that ink is
high, as in the data. Each digit should fill its 8 x 8 cell as the data's
do (normalised 32 x 32 bitmaps, counted in 4 x 4 blocks); a typed font drawn
any other way is far from what the model saw.

Metrics on the test strips: exact caption match; corpus BLEU from sacrebleu
with n-grams up to ``min(4, data.digits)`` (a three-word caption has no
4-grams, so BLEU-4 would be 0 for every model); word accuracy, the share of
the reference's words matched at their position. Baselines:

* nearest-neighbour caption: copy the caption of the training strip nearest
  in pixel space (Euclidean), the classic retrieval baseline (in the spirit
  of Devlin et al., 2015, "Exploring nearest neighbor approaches for image
  captioning", without their consensus re-ranking);
* the most frequent training caption, and the most frequent word at each position.

A reference, not a baseline: a 1-nearest-neighbour digit classifier that is
*told* where each digit sits, labelling each 8 x 8 cell on its own. The
captioner has to learn that layout; this row shows what knowing it is worth.
"""

from __future__ import annotations

import csv
import gzip
import io
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple

import numpy as np
import torch

from rnnkit.data import TensorBatches
from rnnkit.models import ImageCaptioner, ImageCaptionerConfig, RecurrentConfig, load_model, save_model
from rnnkit.tasks import common
from rnnkit.tasks.common import DataError, OptimConfig, Report
from rnnkit.training import TrainerConfig, seed_everything
from rnnkit.training.checkpoint import save_figure

# -- config --------------------------------------------------------------------------


@dataclass
class DataConfig:
    path: str | None = None  # None: scikit-learn's digits from the data cache; else a CSV (see above)
    digits: int = 3  # images per strip, words per caption
    val_fraction: float = 0.15  # of the images
    test_fraction: float = 0.25
    split_seed: int = 0  # the image split and the strips drawn from it
    train_strips: int = 20000
    val_strips: int = 1000
    test_strips: int = 1000

    def __post_init__(self) -> None:
        for name in ("digits", "train_strips", "val_strips", "test_strips"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"data.{name}: expected a positive int, got {value!r}")
        if not (0 < self.val_fraction and 0 < self.test_fraction and self.val_fraction + self.test_fraction < 1):
            raise ValueError(f"data.val_fraction, data.test_fraction: expected positive fractions that sum to less than 1, "
                             f"got {self.val_fraction} and {self.test_fraction}")  # fmt: skip


@dataclass
class ModelConfig:
    channels: list[int] = field(default_factory=lambda: [16, 32])
    feature_size: int = 128
    embedding_dim: int = 32
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="gru", hidden_size=128))
    condition_mode: Literal["init", "every_step", "both"] = "both"
    dropout: float = 0.1


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    trainer: TrainerConfig = field(default_factory=lambda: common.trainer_config(max_epochs=12, early_stopping_patience=3))
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(lr=3e-3))
    batch_size: int = 64
    beam_size: int = 3


SIZES = {
    "demo": ["trainer.max_epochs=6"],  # the full size early-stops after about 8 epochs (35 s on one core)
    "fast": ["data.train_strips=3000", "data.val_strips=200", "data.test_strips=200", "trainer.max_epochs=2", "model.channels=[8,16]",
             "model.feature_size=64", "model.embedding_dim=8", "model.rnn.hidden_size=32", "batch_size=16", "optim.lr=0.005"],
}  # fmt: skip

ARCHIVE, MEMBER = "scikit_learn-*.whl", "sklearn/datasets/data/digits.csv.gz"
SIDE, MAX_PIXEL = 8, 16
WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine")
VOCABULARY = ["<pad>", "<bos>", "<eos>", *WORDS]  # ids 0, 1, 2 match the model's pad/bos/eos defaults
BOS, EOS, FIRST_WORD = 1, 2, 3
FORMAT = f"a CSV of {SIDE * SIDE} pixel values (0 to {MAX_PIXEL}) and a label (0 to 9) per row"

# -- data -----------------------------------------------------------------------------------


class Digits(NamedTuple):
    images: np.ndarray  # (n, 8, 8) float32, 0 to 16, ink high
    labels: np.ndarray  # (n,) int64


def load_digits(path: str | None = None) -> Digits:
    """The images and labels of scikit-learn's digits file, or of a CSV of your own in its format."""
    if path is None:
        archive = common.cached_package(ARCHIVE)
        source, raw = f"{archive}:{MEMBER}", common.read_member(archive, MEMBER)
    else:
        source, raw = str(path), common.read_bytes(path)
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as error:
            raise DataError(f"{source}: expected gzip-compressed CSV, found a broken gzip stream ({error})") from None
    text = common.decode_text(raw, source, FORMAT)
    fields = SIDE * SIDE + 1
    images, labels = [], []
    rows = csv.reader(io.StringIO(text))
    for row in rows:
        if not any(cell.strip() for cell in row):
            continue
        where = f"{source}, line {rows.line_num}"
        if len(row) != fields:
            raise DataError(f"{where}: expected {fields} fields ({SIDE * SIDE} pixel values, then a label), found {len(row)}: {row[:4]}")
        values = []
        for column, cell in enumerate(row, 1):
            try:
                values.append(float(cell))
            except ValueError:
                header = " (the format has no header row)" if rows.line_num == 1 else ""
                raise DataError(f"{where}, field {column}: expected a number{header}, found {cell!r}") from None
        pixels, label = values[:-1], values[-1]
        bad = next((i for i, v in enumerate(pixels) if not 0 <= v <= MAX_PIXEL), None)
        if bad is not None:
            raise DataError(f"{where}, field {bad + 1}: expected a pixel value from 0 to {MAX_PIXEL}, found {row[bad]!r}")
        if label not in range(10):
            raise DataError(f"{where}, field {fields}: expected a label, a whole number from 0 to 9, found {row[-1]!r}")
        images.append(pixels)
        labels.append(int(label))
    return Digits(np.array(images, dtype=np.float32).reshape(-1, SIDE, SIDE), np.array(labels, dtype=np.int64))


def split_images(count: int, data: DataConfig) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image indices of train, validation and test: a seeded shuffle, cut by the fractions."""
    order = np.random.default_rng(data.split_seed).permutation(count)
    n_test, n_val = round(count * data.test_fraction), round(count * data.val_fraction)
    if min(n_test, n_val, count - n_test - n_val) < 1:
        raise DataError(f"data: expected enough images for train, validation and test splits, found {count}")
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


class Strips(NamedTuple):
    images: torch.Tensor  # (N, 1, 8, 8 * digits), pixels / 16
    labels: torch.Tensor  # (N, digits), left to right
    sources: np.ndarray  # (N, digits): which images of the data set


def make_strips(digits: Digits, pool: np.ndarray, count: int, per_strip: int, seed: int) -> Strips:
    """``count`` strips of ``per_strip`` images drawn at random (with replacement) from the indices in ``pool``."""
    sources = pool[np.random.default_rng(seed).integers(0, len(pool), size=(count, per_strip))]
    return Strips(side_by_side(digits.images[sources]), torch.from_numpy(digits.labels[sources]), sources)


def side_by_side(images: np.ndarray) -> torch.Tensor:
    """(N, k, 8, 8) images, 0 to 16 -> (N, 1, 8, 8k) strips, 0 to 1."""
    count, per_strip = images.shape[:2]
    return torch.from_numpy(images.transpose(0, 2, 1, 3).reshape(count, 1, SIDE, SIDE * per_strip) / MAX_PIXEL)


def build_strips(digits: Digits, data: DataConfig) -> tuple[Strips, Strips, Strips]:
    """Train, validation and test strips, each made only of its own split's images."""
    pools = split_images(len(digits.labels), data)
    counts = (data.train_strips, data.val_strips, data.test_strips)
    return tuple(make_strips(digits, pool, n, data.digits, seed=data.split_seed * 1_000 + part)
                 for part, (pool, n) in enumerate(zip(pools, counts)))  # fmt: skip


def caption(labels) -> list[str]:
    return [WORDS[int(d)] for d in labels]


def teacher_forcing(labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(tokens_in, targets)``: [<bos>, w_1 .. w_n] and [w_1 .. w_n, <eos>]."""
    words = labels + FIRST_WORD
    bos, eos = torch.full_like(words[:, :1], BOS), torch.full_like(words[:, :1], EOS)
    return torch.cat([bos, words], dim=1), torch.cat([words, eos], dim=1)


def batches(strips: Strips, batch_size: int, shuffle: bool, seed: int = 0) -> TensorBatches:
    tokens_in, targets = teacher_forcing(strips.labels)
    return TensorBatches((strips.images, tokens_in), targets, batch_size, shuffle=shuffle, seed=seed)


# -- metrics and baselines --------------------------------------------------------------------


def score(hypotheses: list[list[str]], references: list[list[str]]) -> dict[str, float]:
    """Exact match, corpus BLEU (n-grams up to min(4, caption length)) and word accuracy."""
    from sacrebleu.metrics import BLEU

    order = min(4, min(map(len, references)))
    bleu = BLEU(max_ngram_order=order).corpus_score([" ".join(h) for h in hypotheses], [[" ".join(r) for r in references]])
    words = sum(len(r) for r in references)
    hits = sum(a == b for h, r in zip(hypotheses, references) for a, b in zip(h, r))
    return {"exact match": sum(h == r for h, r in zip(hypotheses, references)) / len(references), f"BLEU-{order}": bleu.score,
            "word accuracy": hits / words}  # fmt: skip


def decode_captions(tokens: torch.Tensor) -> list[list[str]]:
    """Words up to the first <eos>; <pad> or <bos> would be kept (and count as wrong)."""
    out = []
    for row in tokens.tolist():
        out.append([VOCABULARY[t] for t in row[: row.index(EOS) if EOS in row else len(row)]])
    return out


def model_captions(model: ImageCaptioner, images: torch.Tensor, beam_size: int = 1, chunk: int = 500) -> list[list[str]]:
    length = model.config.image_width // SIDE + 1  # the words and <eos>
    return [c for start in range(0, len(images), chunk) for c in decode_captions(model.generate(images[start : start + chunk], length, beam_size))]


def nearest(queries: torch.Tensor, keys: torch.Tensor, chunk: int = 256) -> torch.Tensor:
    """For each query row, the index of the nearest key row (Euclidean)."""
    queries, keys = queries.flatten(1).double(), keys.flatten(1).double()
    return torch.cat([torch.cdist(queries[i : i + chunk], keys).argmin(-1) for i in range(0, len(queries), chunk)])


def baselines(train: Strips, test: Strips) -> dict[str, list[list[str]]]:
    """Each baseline's test captions."""
    neighbour = train.labels[nearest(test.images, train.images)]
    frequent = Counter(tuple(row) for row in train.labels.tolist()).most_common(1)[0][0]
    per_position = [int(np.bincount(column, minlength=10).argmax()) for column in train.labels.T.numpy()]
    n = len(test.labels)
    return {
        "nearest-neighbour caption": [caption(row) for row in neighbour],
        f"most frequent caption ({' '.join(caption(frequent))})": [caption(frequent)] * n,
        f"most frequent word per position ({' '.join(caption(per_position))})": [caption(per_position)] * n,
    }


def told_the_layout(test: Strips, digits: Digits, train_pool: np.ndarray) -> list[list[str]]:
    """The reference's test captions: each 8 x 8 cell labelled by its nearest training image."""
    cells = torch.from_numpy(digits.images[test.sources.reshape(-1)])
    nearest_image = nearest(cells, torch.from_numpy(digits.images[train_pool])).numpy()
    return [caption(row) for row in digits.labels[train_pool][nearest_image].reshape(test.sources.shape)]


# -- train, evaluate, predict ---------------------------------------------------------------------


def build_model(config: Config) -> ImageCaptioner:
    m = config.model
    seed_everything(config.trainer.seed)
    return ImageCaptioner(ImageCaptionerConfig(SIDE, SIDE * config.data.digits, len(VOCABULARY), m.channels, m.feature_size,
                                               m.embedding_dim, m.rnn, m.condition_mode, m.dropout))  # fmt: skip


def train(config: Config, run_dir: Path, say=print) -> Report:
    say(f"loading digits from {config.data.path or MEMBER}")
    digits = load_digits(config.data.path)
    train_set, val_set, test_set = build_strips(digits, config.data)
    pools = split_images(len(digits.labels), config.data)
    say(f"{len(digits.labels)} images: {' / '.join(str(len(p)) for p in pools)} train / validation / test; strips of "
        f"{config.data.digits}: {len(train_set.labels)} / {len(val_set.labels)} / {len(test_set.labels)}")  # fmt: skip

    model = build_model(config)
    say(f"training the CNN + {config.model.rnn.cell.upper()} captioner")
    train_batches = batches(train_set, config.batch_size, shuffle=True, seed=config.trainer.seed)
    common.fit(model, train_batches, batches(val_set, 500, shuffle=False), config.trainer, config.optim, run_dir)
    save_model(model, run_dir / "model.safetensors", extra={"vocabulary": VOCABULARY})
    return report(config, run_dir, model, digits)


def evaluate(config: Config, run_dir: Path) -> Report:
    """Reload a run's model and report it again on the same held-out strips."""
    model, _ = load_model(run_dir / "model.safetensors")
    return report(config, run_dir, model.eval(), load_digits(config.data.path))


def report(config: Config, run_dir: Path, model: ImageCaptioner, digits: Digits) -> Report:
    data = config.data
    train_set, _, test_set = build_strips(digits, data)
    references = [caption(row) for row in test_set.labels]
    greedy = model_captions(model, test_set.images)
    name = f"CNN + {config.model.rnn.cell.upper()} captioner"
    beam = model_captions(model, test_set.images, config.beam_size)
    found = baselines(train_set, test_set)
    reference = told_the_layout(test_set, digits, split_images(len(digits.labels), data)[0])
    outputs = {f"{name}, greedy": greedy, f"{name}, beam {config.beam_size}": beam, **found,
               "reference: 1-NN per digit, told the layout": reference}  # fmt: skip
    rows = {key: score(hyps, references) for key, hyps in outputs.items()}
    columns = list(rows[f"{name}, greedy"])
    verdict = common.compare(f"The {name} (greedy)", rows[f"{name}, greedy"]["exact match"],
                             {key: rows[key]["exact match"] for key in found}, "exact caption match", True)  # fmt: skip

    n, p = len(references), rows[f"{name}, greedy"]["exact match"]
    images = len(set(test_set.sources.reshape(-1).tolist()))
    notes = [
        f"Test: {n} strips of {data.digits} digits, drawn from {images} held-out images that no model saw in training. "
        f"Exact match on {n} independent strips would have a standard error of {100 * math.sqrt(p * (1 - p) / n):.1f} points; "
        f"each image appears in about {n * data.digits / images:.0f} strips, so the real uncertainty is larger.",
        f"BLEU is sacrebleu's corpus BLEU (0 to 100) with n-grams up to {min(4, data.digits)}: a {data.digits}-word caption has no longer ones. "
        "Word accuracy: the share of reference words matched at their position.",
        "The last row is a reference, not a baseline, and is left out of the verdict: it labels each 8 x 8 cell by its "
        "nearest training image, so it is told the layout that the captioner has to learn from the captions.",
    ]  # fmt: skip
    plot_captions(run_dir / "captions.png", test_set, greedy, references)
    lines = [f"truth: {' '.join(r):24} greedy: {' '.join(g):24} nearest neighbour: {' '.join(nn)}"
             for r, g, nn in list(zip(references, greedy, found["nearest-neighbour caption"]))[:6]]  # fmt: skip
    title = "Captioning: strips of handwritten digits (scikit-learn's digits)" if data.path is None else f"Captioning: {data.path}"
    return Report("captioning", title, columns, rows, verdict, notes, {"A few test strips": "\n".join(lines)},
                  plots=["captions.png", "loss.png"])  # fmt: skip


def plot_captions(path: Path, strips: Strips, hypotheses, references, shown: int = 16, columns: int = 4) -> None:
    """A grid of test strips titled with their generated captions: the first ones, then the first the model got wrong."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    wrong = [i for i, (h, r) in enumerate(zip(hypotheses, references)) if h != r][: shown // 4]
    picked = [i for i in range(len(references)) if i not in wrong][: shown - len(wrong)] + wrong
    rows = math.ceil(len(picked) / columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.2 * columns, 1.55 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, i in zip(axes.flat, picked):
        ax.imshow(strips.images[i, 0].numpy(), cmap="gray_r", vmin=0, vmax=1)
        ok = hypotheses[i] == references[i]
        label = " ".join(hypotheses[i]) if ok else f"WRONG: {' '.join(hypotheses[i])}\n(truth: {' '.join(references[i])})"
        ax.set_title(label, fontsize=8, color="black" if ok else "red")
    fig.suptitle(f"Held-out test strips and their greedy captions: the first {len(picked) - len(wrong)}, then the first "
                 f"{len(wrong)} wrong ones (red)", fontsize=9)  # fmt: skip
    fig.tight_layout()
    save_figure(fig, path, dpi=110)
    plt.close(fig)


def predict(config: Config, run_dir: Path, text: str, loaded: tuple | None = None) -> str:
    """The greedy caption of a strip built from held-out test images of the digits in ``text`` ("419"), or of an image file."""
    model, _ = loaded or load_model(run_dir / "model.safetensors")
    text = text.strip()
    if re.fullmatch(r"\d+", text):
        image, note = test_strip(config, text)
    else:
        image, note = read_image(text, config.data.digits), ""
    return " ".join(model_captions(model.eval(), image)[0]) + note


def test_strip(config: Config, text: str, digits: Digits | None = None) -> tuple[torch.Tensor, str]:
    """A strip of the held-out test images of these digits: the k-th occurrence of a digit takes its k-th test image.

    ``digits``: the data set, already loaded (default: loaded from ``config.data``)."""
    data = config.data
    if len(text) != data.digits or not re.fullmatch(r"\d+", text):
        raise DataError(f"text: expected {data.digits} digit{'s' * (data.digits > 1)} (the strips this model was trained on), got {text!r}")
    digits = load_digits(data.path) if digits is None else digits
    test = split_images(len(digits.labels), data)[2]
    chosen = []
    for position, d in enumerate(map(int, text)):
        candidates = test[digits.labels[test] == d]
        k = text[:position].count(str(d))
        if k >= len(candidates):
            raise DataError(f"text: expected digits with enough held-out test images, got {text!r} ({len(candidates)} test images of {d})")
        chosen.append(int(candidates[k]))
    return side_by_side(digits.images[chosen][None]), f"  (a strip of held-out test images {chosen})"


def read_image(path: str, digits: int) -> torch.Tensor:
    """An image file as a (1, 1, 8, 8 * digits) strip: grayscale, ink high, block-averaged down from a whole multiple."""
    import matplotlib.image

    target = (SIDE, SIDE * digits)
    if not Path(path).is_file():
        raise DataError(f"text: expected {digits} digits (like '419') or the path of a PNG image, got {path!r}, which is neither")
    try:
        pixels = np.asarray(matplotlib.image.imread(path), dtype=np.float64)
    except (OSError, ValueError, SyntaxError) as error:  # Pillow's kinds for a file that is not a (whole) image
        raise DataError(f"{path}: expected a PNG image, found a file that does not read as one ({type(error).__name__}: {error})") from None
    if pixels.dtype.kind in "ui" or pixels.max(initial=0) > 1:
        pixels = pixels / 255  # 8-bit images (JPEG through Pillow) come as 0..255
    if pixels.ndim == 3:
        gray = pixels[..., :3] @ np.array([0.299, 0.587, 0.114]) if pixels.shape[2] >= 3 else pixels[..., 0]
        if pixels.shape[2] in (2, 4):  # transparent pixels are the page: white
            alpha = pixels[..., -1]
            gray = alpha * gray + (1 - alpha)
        pixels = gray
    if pixels.ndim != 2:
        raise DataError(f"{path}: expected a grayscale or colour image, found an array of shape {pixels.shape}")
    height, width = pixels.shape
    factor = height // SIDE
    if factor < 1 or (height, width) != (SIDE * factor, target[1] * factor):
        raise DataError(f"{path}: expected an image of {target[0]} x {target[1]} pixels (height x width) or a whole multiple "
                        f"such as {target[0] * 10} x {target[1] * 10}, found {height} x {width}")  # fmt: skip
    pixels = pixels.reshape(SIDE, factor, target[1], factor).mean(axis=(1, 3))
    if np.median(pixels) > 0.5:  # most pixels are background: a light page means dark ink, so flip it to ink-high
        pixels = 1 - pixels
    return torch.from_numpy(pixels.astype(np.float32)).view(1, 1, *target)
