"""Many-to-many, aligned: one output per input step.

    h_1..h_L = RNN(e(x_1..x_L))           (N, L, D)
    y_t = W h_t + b                       (N, L, C)

* :class:`SequenceTagger`: a label per position (bidirectional allowed);
  padding positions carry ``ignore_index`` targets or fall outside ``lengths``.
* :class:`LanguageModel`: the next token per position, unidirectional, with
  optional weight tying (Press & Wolf, 2017: W = the embedding matrix, which
  needs embedding_dim == hidden_size). Trains with truncated BPTT (the state is
  an argument and a result), primes on a prompt and generates one token at a
  time by carrying the state, as char-rnn does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.models import decoding
from rnnkit.models.common import InputConfig, InputEncoder, RecurrentConfig, make_layer, register, split_inputs, valid_mask

IGNORE_INDEX = -100


@dataclass
class TaggerConfig:
    input: InputConfig
    num_tags: int = 2
    rnn: RecurrentConfig = field(default_factory=RecurrentConfig)
    dropout: float = 0.0


@register
class SequenceTagger(nn.Module):
    """A label per position. Targets (N, L), with -100 (or lengths) marking padding."""

    config_class = TaggerConfig

    def __init__(self, config: TaggerConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = InputEncoder(config.input, config.dropout)
        self.rnn = make_layer(config.rnn, config.input.output_size)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn.hidden_size * (2 if config.rnn.bidirectional else 1), config.num_tags)

    def forward(self, inputs, state=None):
        x, lengths = split_inputs(inputs)
        outputs, _ = self.rnn(self.encoder(x), lengths=lengths)
        mask = valid_mask(lengths, x.shape[0], x.shape[1], x.device)
        return TaggerOutput(self.head(self.dropout(outputs)), mask), None

    def loss(self, outputs: TaggerOutput, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.logits.flatten(0, 1), _mask_targets(outputs, targets).flatten(), ignore_index=IGNORE_INDEX)

    def metrics(self, outputs: TaggerOutput, targets: Tensor) -> dict[str, float]:
        targets = _mask_targets(outputs, targets)
        valid = targets != IGNORE_INDEX
        correct = (outputs.logits.argmax(-1) == targets) & valid
        return {"accuracy": correct.sum().item() / max(valid.sum().item(), 1)}


class TaggerOutput(NamedTuple):
    logits: Tensor  # (N, L, num_tags)
    mask: Tensor  # (N, L), True at valid positions


def _mask_targets(outputs: TaggerOutput, targets: Tensor) -> Tensor:
    """Positions past a length never count, whatever their targets say."""
    return targets.masked_fill(~outputs.mask, IGNORE_INDEX)


@dataclass
class LanguageModelConfig:
    vocab_size: int
    embedding_dim: int = 64
    rnn: RecurrentConfig = field(default_factory=RecurrentConfig)
    dropout: float = 0.0
    tie_weights: bool = False
    pad_id: int | None = None  # targets equal to it do not count
    embedding_dropout: float = 0.0  # whole words (AWD-LSTM), see rnnkit.models.common.InputEncoder


@register
class LanguageModel(nn.Module):
    """Next-token prediction over tokens (N, L); ``state`` carries across calls (TBPTT, generation)."""

    config_class = LanguageModelConfig

    def __init__(self, config: LanguageModelConfig) -> None:
        super().__init__()
        if config.rnn.bidirectional:
            raise errors.fail("rnn.bidirectional", "False for a language model (it must not see the future)", True)
        if config.tie_weights and config.embedding_dim != config.rnn.hidden_size:
            raise errors.fail("tie_weights", "embedding_dim == hidden_size, so the embedding can be the output layer",
                              f"embedding_dim={config.embedding_dim}, hidden_size={config.rnn.hidden_size}")  # fmt: skip
        self.config = config
        self.encoder = InputEncoder(InputConfig(vocab_size=config.vocab_size, embedding_dim=config.embedding_dim, padding_idx=None,
                                                 embedding_dropout=config.embedding_dropout), config.dropout)  # fmt: skip
        self.rnn = make_layer(config.rnn, config.embedding_dim)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.rnn.hidden_size, config.vocab_size)
        if config.tie_weights:
            self.head.weight = self.encoder.embedding.weight

    def forward(self, inputs, state=None):
        outputs, state = self.rnn(self.encoder(inputs), state)
        return self.head(self.dropout(outputs)), state

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=self._ignored)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        valid = targets != self._ignored  # as in the loss: padding is neither right nor wrong
        correct = (logits.argmax(-1) == targets) & valid
        return {"accuracy": correct.sum().item() / max(valid.sum().item(), 1)}

    @property
    def _ignored(self) -> int:
        return IGNORE_INDEX if self.config.pad_id is None else self.config.pad_id

    # -- generation: prime once, then one step per token ------------------------

    def decode_start(self, prompt: Tensor, state=None):
        """Run the prompt (N, P) in one call; return the next token's logits and the state."""
        logits, state = self(prompt, state)
        return logits[:, -1], state

    def decode_step(self, tokens: Tensor, state):
        logits, state = self(tokens.unsqueeze(1), state)
        return logits[:, 0], state

    def reorder_state(self, state, index: Tensor):
        return decoding.select_rows(state, index, batch_dim=1)

    @torch.no_grad()
    def generate(self, prompt: Tensor, length: int, *, temperature: float = 1.0, top_k: int | None = None,
                 top_p: float | None = None, greedy: bool = False, generator: torch.Generator | None = None) -> Tensor:  # fmt: skip
        """Continue each prompt (N, P) by ``length`` tokens; returns (N, length)."""
        self.eval()
        logits, state = self.decode_start(prompt)
        if greedy:
            return decoding.greedy_search(self, logits, state, length)
        return decoding.sample(self, logits, state, length, temperature=temperature, top_k=top_k, top_p=top_p, generator=generator)
