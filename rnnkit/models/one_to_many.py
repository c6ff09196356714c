"""One-to-many: a vector in (image features, a class, a style), a sequence out.

    s_0 = tanh(W_s v + b_s)                           "init": the vector sets the initial state
    h_t = RNN([e(y_{t-1}); v], h_{t-1})               "every_step": and/or is fed at every step
    p(y_t | y_<t, v) = softmax(W_o h_t + b_o)

Training uses teacher forcing: the input is ``(vector (N, C), tokens_in (N, L))``,
with tokens_in = [BOS, y_1, ..., y_{L-1}] and targets [y_1, ..., y_L] (pad-filled).
Decoding starts from BOS and uses :mod:`rnnkit.models.decoding`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit.models import decoding
from rnnkit.models.common import RecurrentConfig, make_layer, register


@dataclass
class ConditionalGeneratorConfig:
    condition_size: int
    vocab_size: int
    embedding_dim: int = 32
    rnn: RecurrentConfig = field(default_factory=RecurrentConfig)
    condition_mode: Literal["init", "every_step", "both"] = "both"
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


@register
class ConditionalGenerator(nn.Module):
    config_class = ConditionalGeneratorConfig

    def __init__(self, config: ConditionalGeneratorConfig) -> None:
        super().__init__()
        self.config = config
        rnn = config.rnn
        self.embedding = nn.Embedding(config.vocab_size, config.embedding_dim, padding_idx=config.pad_id)
        feed = config.condition_size if config.condition_mode in ("every_step", "both") else 0
        self.rnn = make_layer(rnn, config.embedding_dim + feed)
        self.state_count = 2 if rnn.cell == "lstm" else 1
        if config.condition_mode in ("init", "both"):
            self.init_state = nn.Linear(config.condition_size, self.state_count * rnn.num_layers * rnn.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(rnn.hidden_size, config.vocab_size)

    def initial_state(self, condition: Tensor):
        if self.config.condition_mode == "every_step":
            return None
        rnn = self.config.rnn
        parts = torch.tanh(self.init_state(condition)).view(condition.shape[0], self.state_count, rnn.num_layers, rnn.hidden_size)
        states = tuple(parts[:, i].transpose(0, 1).contiguous() for i in range(self.state_count))
        return states if self.state_count == 2 else states[0]

    def forward(self, inputs, state=None):
        condition, tokens = inputs
        if state is None:
            state = self.initial_state(condition)
        x = self.dropout(self.embedding(tokens))
        if self.config.condition_mode in ("every_step", "both"):
            x = torch.cat([x, condition.unsqueeze(1).expand(-1, x.shape[1], -1)], dim=-1)
        outputs, state = self.rnn(x, state)
        return self.head(self.dropout(outputs)), state

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=self.config.pad_id)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        valid = targets != self.config.pad_id
        return {"accuracy": ((logits.argmax(-1) == targets) & valid).sum().item() / max(valid.sum().item(), 1)}

    # -- decoding: the state is (recurrent state, condition) ----------------------

    def decode_start(self, condition: Tensor):
        bos = torch.full((condition.shape[0],), self.config.bos_id, dtype=torch.long, device=condition.device)
        return self.decode_step(bos, (self.initial_state(condition), condition))

    def decode_step(self, tokens: Tensor, state):
        rnn_state, condition = state
        logits, rnn_state = self((condition, tokens.unsqueeze(1)), rnn_state)
        return logits[:, 0], (rnn_state, condition)

    def reorder_state(self, state, index: Tensor):
        rnn_state, condition = state
        return decoding.select_rows(rnn_state, index, batch_dim=1), condition.index_select(0, index)

    @torch.no_grad()
    def generate(self, condition: Tensor, max_length: int, beam_size: int = 1) -> Tensor:
        """Tokens (N, T) for each condition vector, by greedy (beam_size=1) or beam search."""
        self.eval()
        logits, state = self.decode_start(condition)
        if beam_size == 1:
            return decoding.greedy_search(self, logits, state, max_length, eos=self.config.eos_id)
        return decoding.beam_search(self, logits, state, beam_size, max_length, eos=self.config.eos_id)[0]
