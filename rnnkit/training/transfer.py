"""Transfer learning, ULMFiT's way: a language model's encoder into a classifier, layer groups, schedules.

Example (see docs/design/transfer-learning.md)::

    lm, _ = load_model("runs/lm/model.safetensors")            # a LanguageModel
    classifier = SequenceClassifier(config)                     # same vocabulary, embedding and rnn sizes
    load_encoder(classifier, lm)                                # embedding + recurrent layers, by name
    groups = layer_groups(classifier)                           # [embedding, rnn.l0, rnn.l1, head]
    optimizer = torch.optim.Adam(discriminative_param_groups(groups, lr=4e-3, factor=2.6))
    scheduler = slanted_triangular(optimizer, total_steps)
    freeze(groups, keep_trainable=1)                            # the head alone first
    Trainer(classifier, optimizer, config, scheduler=scheduler, callbacks=[GradualUnfreezing(groups)])

Howard & Ruder (ACL 2018), "Universal Language Model Fine-tuning for Text
Classification", sections 3.2 (discriminative fine-tuning, slanted triangular
rates) and 3.3 (gradual unfreezing).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from rnnkit import errors
from rnnkit.training.callbacks import Callback

LayerGroups = list[tuple[str, list[nn.Parameter]]]

_DEPTH = re.compile(r"_l(\d+)(?:_|$)")


def layer_groups(model: nn.Module) -> LayerGroups:
    """The model's parameters in groups from the bottom up: ``embedding``, ``rnn.l0`` ... ``rnn.l{n-1}``, ``head``.

    For a model with an ``encoder`` (the input embedding), an ``rnn`` (an
    rnnkit layer, whose parameters are named ``..._l{depth}...`` as in
    torch.nn) and anything else (pooling, head), which forms the top group.
    Both directions of a depth are one group. Every parameter is in exactly one group.
    """
    for part in ("encoder", "rnn"):
        if not isinstance(getattr(model, part, None), nn.Module):
            raise errors.fail("model", "a model with an `encoder` and an `rnn` submodule (SequenceClassifier, LanguageModel...)",
                              f"{type(model).__name__} without {part!r}")  # fmt: skip
    groups: dict[str, list[nn.Parameter]] = {"embedding": []}
    depths: dict[int, list[nn.Parameter]] = {}
    head: list[nn.Parameter] = []
    seen: set[int] = set()
    for name, parameter in model.named_parameters():  # tied weights appear once, under their first name
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        if name.startswith("encoder."):
            groups["embedding"].append(parameter)
        elif name.startswith("rnn."):
            match = _DEPTH.search(name)
            if match is None:
                raise errors.fail("model", "recurrent parameters named by depth (weight_ih_l0, ...)", name)
            depths.setdefault(int(match.group(1)), []).append(parameter)
        else:
            head.append(parameter)
    groups.update({f"rnn.l{depth}": depths[depth] for depth in sorted(depths)})
    groups["head"] = head
    return [(name, params) for name, params in groups.items() if params]


def freeze(groups: LayerGroups, keep_trainable: int) -> None:
    """Train only the top ``keep_trainable`` groups (``requires_grad``); the others are frozen."""
    if isinstance(keep_trainable, bool) or not isinstance(keep_trainable, int) or not 0 <= keep_trainable <= len(groups):
        raise errors.fail("keep_trainable", f"an int from 0 to {len(groups)} (the number of layer groups)", keep_trainable)
    for index, (_, params) in enumerate(groups):
        for parameter in params:
            parameter.requires_grad_(index >= len(groups) - keep_trainable)


def trainable_groups(groups: LayerGroups) -> int:
    """How many groups, counted from the top, train now (a group trains when any of its parameters does)."""
    count = 0
    for _, params in reversed(groups):
        if not any(p.requires_grad for p in params):
            break
        count += 1
    return count


def discriminative_param_groups(groups: LayerGroups, lr: float, factor: float = 2.6) -> list[dict]:
    r"""Optimizer parameter groups with rate :math:`\eta_l = \eta / \text{factor}^{L-1-l}`: ``lr`` for the top, less below.

    ULMFiT, section 3.2, uses factor 2.6. Each dict carries its group's ``name``.
    """
    if not lr > 0:
        raise errors.fail("lr", "a positive learning rate", lr)
    if not factor >= 1:
        raise errors.fail("factor", "a number >= 1 (each group below the top gets lr / factor more)", factor)
    top = len(groups) - 1
    return [{"params": params, "lr": lr / factor ** (top - index), "name": name} for index, (name, params) in enumerate(groups)]


class GradualUnfreezing(Callback):
    """Unfreezes one more layer group, from the top down, at the end of every ``every`` epochs (ULMFiT, section 3.3).

    Start it with :func:`freeze` (``keep_trainable=1``: the head alone). How
    many groups train is saved in the trainer's checkpoint, so a resumed run
    continues frozen exactly as the interrupted one was.
    """

    def __init__(self, groups: LayerGroups, every: int = 1) -> None:
        errors.check_positive_int("every", every)
        self.groups, self.every = groups, every
        self.trainable = trainable_groups(groups)

    def on_fit_start(self, trainer, train) -> None:
        freeze(self.groups, self.trainable)

    def on_epoch_end(self, trainer) -> None:
        if trainer.position.epoch % self.every == 0 and self.trainable < len(self.groups):
            self.trainable += 1
            freeze(self.groups, self.trainable)

    def state_dict(self) -> dict:
        return {"trainable": self.trainable}

    def load_state_dict(self, state: dict) -> None:
        self.trainable = int(state["trainable"])
        freeze(self.groups, self.trainable)


def _check_schedule(total_steps: int, fraction: float, name: str, ratio: float) -> None:
    errors.check_positive_int("total_steps", total_steps)
    if not 0 < fraction < 1:
        raise errors.fail(name, "a fraction in (0, 1)", fraction)
    if not ratio >= 1:
        raise errors.fail("ratio", "a number >= 1 (peak rate / lowest rate)", ratio)


def slanted_triangular(optimizer: torch.optim.Optimizer, total_steps: int, cut_frac: float = 0.1, ratio: float = 32.0):
    r"""ULMFiT's slanted triangular rate (section 3.2, equation 3) as a per-step ``LambdaLR``.

    With T = ``total_steps``, cut = floor(T cut_frac), step t:
    :math:`p = t / \text{cut}` while t < cut, else
    :math:`p = 1 - (t - \text{cut}) / (\text{cut} (1/\text{cut\_frac} - 1))`; each
    group's rate is its own peak times :math:`(1 + p(\text{ratio} - 1)) / \text{ratio}`.
    It rises from peak/ratio to the peak over the first ``cut_frac`` of the
    steps, then falls back linearly. Past T it stays at peak/ratio.
    """
    _check_schedule(total_steps, cut_frac, "cut_frac", ratio)
    cut = max(1, math.floor(total_steps * cut_frac))

    def scale(step: int) -> float:
        if step < cut:
            p = step / cut
        else:
            p = max(0.0, 1 - (step - cut) / max(cut * (1 / cut_frac - 1), 1))
        return (1 + p * (ratio - 1)) / ratio

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def one_cycle(optimizer: torch.optim.Optimizer, total_steps: int, warmup_frac: float = 0.3, ratio: float = 25.0, final_ratio: float = 1e4):
    r"""Smith's one-cycle rate (Smith & Topin, 2019) as a per-step ``LambdaLR``, cosine-annealed like torch's OneCycleLR.

    Each group's rate rises from peak/``ratio`` to its peak over the first
    ``warmup_frac`` of ``total_steps`` (half a cosine), then falls to
    peak/``final_ratio`` by the end. Unlike ``torch.optim.lr_scheduler.OneCycleLR``
    it scales each parameter group's own rate, so it composes with
    :func:`discriminative_param_groups`, and it does not touch momentum.
    """
    _check_schedule(total_steps, warmup_frac, "warmup_frac", ratio)
    if not final_ratio >= 1:
        raise errors.fail("final_ratio", "a number >= 1 (peak rate / final rate)", final_ratio)
    warmup = max(1, round(total_steps * warmup_frac))

    def cosine(start: float, end: float, fraction: float) -> float:
        return end + (start - end) * (1 + math.cos(math.pi * min(max(fraction, 0.0), 1.0))) / 2

    def scale(step: int) -> float:
        if step < warmup:
            return cosine(1 / ratio, 1.0, step / warmup)
        return cosine(1.0, 1 / final_ratio, (step - warmup) / max(total_steps - warmup, 1))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, scale)


def load_encoder(classifier: nn.Module, language_model: nn.Module) -> list[str]:
    """Copy a language model's embedding and recurrent layers (``encoder.*``, ``rnn.*``) into ``classifier``, by name.

    Every such tensor of the language model must exist in the classifier with
    the same shape, and the classifier must have no ``encoder.``/``rnn.``
    tensor the language model lacks; otherwise a ValueError lists the first
    mismatches and nothing is copied. Returns the names copied. The
    vocabulary is not checked here (only its size): the classifier must
    encode its text with the language model's vocabulary.
    """
    source = {k: v for k, v in language_model.state_dict().items() if k.startswith(("encoder.", "rnn."))}
    target = {k: v for k, v in classifier.state_dict().items() if k.startswith(("encoder.", "rnn."))}
    if not source:
        raise errors.fail("language_model", "a model with `encoder.` and `rnn.` weights", type(language_model).__name__)
    problems = [f"{k}: missing in the classifier" for k in source if k not in target]
    problems += [f"{k}: not in the language model" for k in target if k not in source]
    problems += [f"{k}: shape {tuple(source[k].shape)} in the language model, {tuple(target[k].shape)} in the classifier"
                 for k in source if k in target and source[k].shape != target[k].shape]  # fmt: skip
    if problems:
        shown = "; ".join(problems[:4]) + (f"; and {len(problems) - 4} more" if len(problems) > 4 else "")
        raise ValueError(f"language_model: expected its embedding and recurrent layers to match the classifier's by name and shape "
                         f"(same vocabulary size, embedding_dim, cell, hidden_size, num_layers, unidirectional), got {shown}")  # fmt: skip
    with torch.no_grad():
        for name, tensor in source.items():
            target[name].copy_(tensor)
    return sorted(source)


__all__ = ["GradualUnfreezing", "LayerGroups", "discriminative_param_groups", "freeze", "layer_groups", "load_encoder",
           "one_cycle", "slanted_triangular", "trainable_groups"]  # fmt: skip
