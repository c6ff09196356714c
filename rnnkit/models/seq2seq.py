"""Many-to-many, encoder-decoder with attention (Seq2Seq).

Encoder: a bidirectional rnnkit layer over the source, with lengths::

    m_1..m_S = W_m [h→_j ; h←_j]               memory (N, S, H)
    s_0 = tanh(W_b [h→_S ; h←_1])              per layer: the decoder's initial state

Decoder, one step per target token (y_0 = BOS)::

    bahdanau:  c_t = attend(s_{t-1}, m)          the query is the previous state
               s_t = RNN([e(y_{t-1}); c_t], s_{t-1})
    dot/general (Luong, with input feeding):
               s_t = RNN([e(y_{t-1}); a_{t-1}], s_{t-1})
               c_t = attend(s_t, m)
    both:      a_t = tanh(W_c [c_t; s_t])        the attentional state
               p(y_t | y_<t, x) = softmax(W_o a_t)

Bahdanau et al. use a maxout output layer; the shared tanh layer here keeps
one decoder for all three attentions. Training uses teacher forcing with
scheduled sampling (Bengio et al., 2015): at each step, with probability
1 - ``teacher_forcing``, the decoder is fed its own previous prediction instead
of the ground truth. :class:`ScheduledSampling` lowers that probability over
training. Attention weights are returned with the logits for inspection.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.models import decoding
from rnnkit.models.attention import Attention
from rnnkit.models.common import RecurrentConfig, make_layer, register, valid_mask
from rnnkit.training.callbacks import Callback


@dataclass
class Seq2SeqConfig:
    source_vocab: int
    target_vocab: int
    embedding_dim: int = 64
    rnn: RecurrentConfig = field(default_factory=RecurrentConfig)  # the decoder; the encoder mirrors it, bidirectional
    attention: Literal["bahdanau", "dot", "general"] = "bahdanau"
    teacher_forcing: float = 1.0  # probability of feeding the ground truth during training
    dropout: float = 0.0
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2


class Seq2SeqOutput(NamedTuple):
    logits: Tensor  # (N, T, V)
    attention: Tensor  # (N, T, S)


class DecoderState(NamedTuple):
    rnn: object  # the decoder layer's state, batch along dim 1
    feed: Tensor  # (N, H): the attentional state a_{t-1}
    memory: Tensor  # (N, S, H)
    keys: Tensor  # (N, S, H), prepared by the attention
    mask: Tensor  # (N, S)


@register
class Seq2Seq(nn.Module):
    """Inputs ``(source (N, S), source_lengths (N,), target_in (N, T))``; targets (N, T), pad-filled."""

    config_class = Seq2SeqConfig

    def __init__(self, config: Seq2SeqConfig) -> None:
        super().__init__()
        if config.rnn.bidirectional:
            raise errors.fail("rnn.bidirectional", "False: it configures the decoder (the encoder is always bidirectional)", True)
        if not 0 <= config.teacher_forcing <= 1:
            raise errors.fail("teacher_forcing", "a probability in [0, 1]", config.teacher_forcing)
        self.config = config
        rnn, hidden = config.rnn, config.rnn.hidden_size
        self.source_embedding = nn.Embedding(config.source_vocab, config.embedding_dim, padding_idx=config.pad_id)
        self.target_embedding = nn.Embedding(config.target_vocab, config.embedding_dim, padding_idx=config.pad_id)
        self.encoder = make_layer(RecurrentConfig(**{**rnn.__dict__, "bidirectional": True}), config.embedding_dim)
        self.decoder = make_layer(rnn, config.embedding_dim + hidden)
        self.to_memory = nn.Linear(2 * hidden, hidden)
        self.bridge = nn.Linear(2 * hidden, hidden)
        self.attend = Attention(config.attention, hidden)
        self.combine = nn.Linear(2 * hidden, hidden)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(hidden, config.target_vocab)
        self.teacher_forcing = config.teacher_forcing

    def encode(self, source: Tensor, lengths) -> DecoderState:
        outputs, final = self.encoder(self.dropout(self.source_embedding(source)), lengths=lengths)
        memory = self.to_memory(outputs)
        finals = final if isinstance(final, tuple) else (final,)
        # (2*layers, N, H) -> per layer [forward; backward] -> (layers, N, H)
        bridged = tuple(torch.tanh(self.bridge(torch.cat([s[0::2], s[1::2]], dim=-1))) for s in finals)
        mask = valid_mask(lengths, source.shape[0], source.shape[1], source.device)
        feed = memory.new_zeros(source.shape[0], self.config.rnn.hidden_size)
        rnn_state = bridged if len(bridged) == 2 else bridged[0]
        return DecoderState(rnn_state, feed, memory, self.attend.prepare(memory), mask)

    def decode_step(self, tokens: Tensor, state: DecoderState, return_attention: bool = False):
        attentional, new_state, weights = self._attend_step(tokens, state)
        logits = self.head(self.dropout(attentional))
        return (logits, new_state, weights) if return_attention else (logits, new_state)

    def _attend_step(self, tokens: Tensor, state: DecoderState) -> tuple[Tensor, DecoderState, Tensor]:
        """One decoder step up to the attentional state a_t (N, H), before the output layer."""
        embedded = self.dropout(self.target_embedding(tokens))
        top = (state.rnn[0] if isinstance(state.rnn, tuple) else state.rnn)[-1]
        if self.config.attention == "bahdanau":
            context, weights = self.attend(top, state.keys, state.memory, state.mask)
            out, rnn_state = self.decoder(torch.cat([embedded, context], -1).unsqueeze(1), state.rnn)
        else:
            out, rnn_state = self.decoder(torch.cat([embedded, state.feed], -1).unsqueeze(1), state.rnn)
            context, weights = self.attend(out[:, 0], state.keys, state.memory, state.mask)
        attentional = torch.tanh(self.combine(torch.cat([context, out[:, 0]], -1)))
        return attentional, state._replace(rnn=rnn_state, feed=attentional), weights

    def forward(self, inputs, state=None):
        source, lengths, target_in = inputs
        state = self.encode(source, lengths)
        sampling = self.training and self.teacher_forcing < 1
        token, outputs, weights = target_in[:, 0], [], []
        for t in range(target_in.shape[1]):
            attentional, state, step_weights = self._attend_step(token, state)
            # Scheduled sampling needs each step's logits; teacher forcing needs them only at the end.
            outputs.append(self.head(self.dropout(attentional)) if sampling else attentional)
            weights.append(step_weights)
            if t + 1 < target_in.shape[1]:
                token = target_in[:, t + 1]
                if sampling:
                    own = torch.rand(token.shape, device=token.device) >= self.teacher_forcing
                    token = torch.where(own, outputs[-1].argmax(-1), token)
        outputs = torch.stack(outputs, 1)
        # One output GEMM over all steps: with a large vocabulary it is most of the decoder's work.
        logits = outputs if sampling else self.head(self.dropout(outputs))
        return Seq2SeqOutput(logits, torch.stack(weights, 1)), None

    def loss(self, outputs: Seq2SeqOutput, targets: Tensor) -> Tensor:
        return F.cross_entropy(outputs.logits.flatten(0, 1), targets.flatten(), ignore_index=self.config.pad_id)

    def metrics(self, outputs: Seq2SeqOutput, targets: Tensor) -> dict[str, float]:
        valid = targets != self.config.pad_id
        correct = (outputs.logits.argmax(-1) == targets) | ~valid
        return {"token_accuracy": (correct & valid).sum().item() / max(valid.sum().item(), 1),
                "exact_match": correct.all(-1).float().mean().item()}  # fmt: skip

    # -- decoding ---------------------------------------------------------------

    def decode_start(self, source: Tensor, lengths):
        state = self.encode(source, lengths)
        bos = torch.full((source.shape[0],), self.config.bos_id, dtype=torch.long, device=source.device)
        return self.decode_step(bos, state)

    def reorder_state(self, state: DecoderState, index: Tensor) -> DecoderState:
        return DecoderState(decoding.select_rows(state.rnn, index, batch_dim=1),
                            *(t.index_select(0, index) for t in state[1:]))  # fmt: skip

    @torch.no_grad()
    def translate(self, source: Tensor, lengths, max_length: int, beam_size: int = 1, length_penalty: float = 1.0) -> Tensor:
        """Target tokens (N, T) for each source, by greedy (beam_size=1) or beam search."""
        self.eval()
        logits, state = self.decode_start(source, lengths)
        if beam_size == 1:
            return decoding.greedy_search(self, logits, state, max_length, eos=self.config.eos_id)
        return decoding.beam_search(self, logits, state, beam_size, max_length, eos=self.config.eos_id, length_penalty=length_penalty)[0]

    @torch.no_grad()
    def greedy_with_attention(self, source: Tensor, lengths, max_length: int) -> tuple[Tensor, Tensor]:
        """Greedy tokens (N, T) and the attention weights (N, T, S) that produced them, for heat maps."""
        self.eval()
        state = self.encode(source, lengths)
        token = torch.full((source.shape[0],), self.config.bos_id, dtype=torch.long, device=source.device)
        tokens, weights = [], []
        for _ in range(max_length):
            logits, state, w = self.decode_step(token, state, return_attention=True)
            token = logits.argmax(-1)
            tokens.append(token)
            weights.append(w)
        return torch.stack(tokens, 1), torch.stack(weights, 1)


class ScheduledSampling(Callback):
    """Lowers ``model.teacher_forcing`` linearly from ``start`` to ``end`` over ``steps`` updates."""

    def __init__(self, start: float = 1.0, end: float = 0.5, steps: int = 1000) -> None:
        self.start, self.end, self.steps = start, end, steps

    def on_step_end(self, trainer, record) -> None:
        progress = min(trainer.position.step / self.steps, 1.0)
        trainer.model.teacher_forcing = self.start + (self.end - self.start) * progress

    def on_fit_start(self, trainer, train) -> None:
        self.on_step_end(trainer, {})
