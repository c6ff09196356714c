"""The sentiment task's default recipe, ULMFiT's three stages (Howard & Ruder, 2018), built on rnnkit.training.transfer.

1. A word-level LSTM language model on unlabelled in-domain text: Pang &
   Lee's 1,500 full movie reviews (:mod:`rnnkit.tasks.lm`), from which every
   review that contains a validation or test sentence is dropped first; or
   the language model of an ``rnnkit train lm`` run (``pretrain.init``).
2. That language model fine-tuned on the training sentences (their text only).
3. A classifier with the language model's embedding and LSTM and a fresh
   head, trained with gradual unfreezing (the head alone for the first epoch,
   then one more layer group per epoch), discriminative learning rates
   (``lr / lr_factor**depth`` below the head) and the slanted triangular
   schedule.

Each stage writes its own folder in the run (``lm/``, ``lm-finetuned/``, the
classifier in the run folder itself), so ``rnnkit train --resume`` continues
whichever stage was interrupted.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from rnnkit import config as configs
from rnnkit.data import StreamBatches
from rnnkit.models import InputConfig, LanguageModel, ManyToOneConfig, SequenceClassifier, load_model, save_model
from rnnkit.tasks import common, lm
from rnnkit.tasks.common import DataError
from rnnkit.training import seed_everything
from rnnkit.training.transfer import GradualUnfreezing, discriminative_param_groups, freeze, layer_groups, load_encoder, slanted_triangular


@dataclass
class PretrainConfig:
    enabled: bool = False  # True: ULMFiT's three stages (sentiment.ULMFIT); False: the classifier learns from the labelled sentences alone
    init: str | None = None  # an `rnnkit train lm` run (`--init RUN`); None: stage 1 runs here, on lm.data
    lm: lm.Config = field(default_factory=lambda: dataclasses.replace(lm.Config(), data=lm.DataConfig(train_tokens=None)))
    finetune_epochs: int = 2  # stage 2, on the training sentences
    finetune_lr: float = 2e-3


@dataclass
class FinetuneConfig:
    """Stage 3: the classifier."""

    lr: float = 4e-3  # the head's peak rate
    lr_factor: float = 2.6  # each group below gets lr / lr_factor more (ULMFiT's value)
    cut_frac: float = 0.1  # slanted triangular: warm-up fraction of the steps
    ratio: float = 32.0  # and peak / lowest rate
    unfreeze_every: int = 1  # epochs


def held_out_overlap(documents: list[str], sentences: list[str], min_words: int = 4) -> set[int]:
    """Indices of the documents that contain one of ``sentences`` (as tokenised text; sentences shorter than ``min_words`` don't count)."""
    texts = [" " + " ".join(lm.tokenize(d)) + " " for d in documents]
    joined = "\n".join(texts)
    hits = set()
    for sentence in sentences:
        words = lm.tokenize(sentence)
        key = " " + " ".join(words) + " "
        if len(words) >= min_words and key in joined:
            hits |= {i for i, text in enumerate(texts) if key in text}
    return hits


def check_unseen(lm_run: Path, held_out: list[str]) -> None:
    """Refuse the language model of ``lm_run`` (an ``rnnkit train lm`` run) if the documents it trained or picked its
    weights on contain one of ``held_out`` (the classifier's validation and test sentences): stage 1 run here drops
    such documents first, but ``rnnkit train lm`` knows nothing of this task's split (Pang & Lee's full reviews hold one
    review with a held-out sentence)."""
    name, stored = common.load_config(lm_run)
    if name != "lm":
        raise DataError(f"pretrain.init: expected the run folder of `rnnkit train lm`, got a {name} run in {lm_run}")
    data = configs.from_dict(lm.Config, stored).data
    try:
        train_docs, val_docs, _ = lm.split(lm.load_documents(data.paths), data)
    except (DataError, OSError) as error:
        raise DataError(f"pretrain.init: cannot check that the language model of {lm_run} never saw this task's validation and "
                        f"test sentences, because its text cannot be read again ({error})") from error  # fmt: skip
    seen = held_out_overlap(train_docs + val_docs, held_out)
    if seen:
        raise DataError(f"pretrain.init: expected a language model that never saw this task's validation and test sentences, got "
                        f"{lm_run}, whose training or validation text holds {len(seen)} document(s) with one; pretrain here "
                        "instead (pretrain.enabled=true without pretrain.init drops them first), or train the language model "
                        "on text without them")  # fmt: skip


SHAPE_FIELDS = ("cell", "hidden_size", "num_layers", "bidirectional", "layer_norm", "nonlinearity")


def check_same_architecture(config) -> None:
    """The classifier's embedding and LSTM (``model.*``) must be the ones stage 1 trains (``pretrain.lm.model.*``)."""
    ours, theirs = config.model, config.pretrain.lm.model
    for key in ("embedding_dim", *(f"rnn.{f}" for f in SHAPE_FIELDS)):
        a, b = (getattr(x.rnn, key[4:]) if key.startswith("rnn.") else getattr(x, key) for x in (ours, theirs))
        if a != b:
            raise DataError(f"pretrain.lm.model.{key}: expected model.{key}'s value {a!r} (the classifier reuses the language "
                            f"model's layers), got {b!r}; set both, or pretrain.enabled=false")  # fmt: skip


def pretrained_language_model(config, run_dir: Path, train_set, held_out, say=print) -> tuple[LanguageModel, list[str], list[str]]:
    """Stages 1 and 2: ``(language model, its vocabulary, notes for the report)``."""
    pre, notes = config.pretrain, []
    sentences = [s for s, _ in train_set]
    if pre.init is not None:
        model, extra = load_model(Path(pre.init) / "model.safetensors")
        if not isinstance(model, LanguageModel):
            raise DataError(f"pretrain.init: expected the run folder of `rnnkit train lm`, got a {type(model).__name__} in {pre.init}")
        check_unseen(Path(pre.init), [s for s, _ in held_out])
        vocabulary = extra["vocabulary"]
        notes.append(f"Stage 1: the language model of {pre.init} ({len(vocabulary):,} words).")
        say(f"stage 1: the language model of {pre.init}")
    else:
        check_same_architecture(config)
        documents = lm.load_documents(pre.lm.data.paths)
        overlap = held_out_overlap(documents, [s for s, _ in held_out])
        documents = [d for i, d in enumerate(documents) if i not in overlap]
        train_docs, val_docs, _ = lm.split(documents, pre.lm.data)
        tokens = lm.stream(train_docs)[: pre.lm.data.train_tokens]
        vocabulary = lm.build_vocabulary(tokens + lm.stream(sentences), pre.lm.data.min_count, pre.lm.data.max_vocab)
        say(f"stage 1: the language model on {len(train_docs):,} unlabelled reviews ({len(overlap)} dropped: they held a "
            f"validation or test sentence), {len(tokens):,} tokens, {len(vocabulary):,} words")  # fmt: skip
        notes.append(f"Stage 1: an LSTM language model on {len(tokens):,} tokens of {len(train_docs):,} of Pang & Lee's full "
                     f"reviews; {len(overlap)} reviews that contained a validation or test sentence (4 words or more) were dropped first.")  # fmt: skip
        model = lm.build_model(pre.lm, len(vocabulary))
        val_ids = lm.encode(lm.stream(val_docs)[: pre.lm.data.eval_tokens], vocabulary)
        lm.fit_language_model(model, pre.lm, lm.encode(tokens, vocabulary), val_ids, run_dir / "lm", say)
        save_model(model, run_dir / "lm" / "model.safetensors", extra={"vocabulary": vocabulary})
    if pre.finetune_epochs:
        train_ids = lm.encode(lm.stream(sentences), vocabulary)
        val_ids = lm.encode(lm.stream(sentences[-max(len(sentences) // 20, 2) :]), vocabulary)
        trainer = dataclasses.replace(pre.lm.trainer, max_epochs=pre.finetune_epochs, max_steps=None, early_stopping_patience=None)
        say(f"stage 2: the language model fine-tuned on the {len(sentences):,} training sentences ({len(train_ids):,} tokens)")
        common.fit(model, StreamBatches(train_ids, pre.lm.num_streams, batch_first=True), StreamBatches(val_ids, 1, batch_first=True),
                   trainer, common.OptimConfig(lr=pre.finetune_lr), run_dir / "lm-finetuned")  # fmt: skip
        notes.append(f"Stage 2: the language model fine-tuned for {pre.finetune_epochs} epochs on the training sentences' text.")
    return model, vocabulary, notes


def build_classifier(config, language_model: LanguageModel, vocab_size: int) -> SequenceClassifier:
    m = config.model
    if m.rnn.bidirectional:
        raise DataError("model.rnn.bidirectional: expected False with pretrain.enabled (the language model reads forward only), got True")
    inputs = InputConfig(vocab_size=vocab_size, embedding_dim=m.embedding_dim, embedding_dropout=m.embedding_dropout)
    seed_everything(config.trainer.seed)
    classifier = SequenceClassifier(ManyToOneConfig(inputs, 2, m.rnn, m.pooling, m.dropout))
    load_encoder(classifier, language_model)
    return classifier


def fit_classifier(config, classifier: SequenceClassifier, train_batches, val_batches, run_dir: Path) -> None:
    """Stage 3: gradual unfreezing, discriminative rates, slanted triangular schedule."""
    f = config.finetune
    groups = layer_groups(classifier)
    freeze(groups, keep_trainable=1)
    steps = config.trainer.max_steps or config.trainer.max_epochs * len(train_batches)
    common.fit(classifier, train_batches, val_batches, config.trainer, config.optim, run_dir,
               param_groups=discriminative_param_groups(groups, f.lr, f.lr_factor),
               schedule=lambda optimizer: slanted_triangular(optimizer, steps, f.cut_frac, f.ratio),
               callbacks=[GradualUnfreezing(groups, f.unfreeze_every)])  # fmt: skip
    freeze(groups, len(groups))  # a saved or reloaded model is all trainable again
