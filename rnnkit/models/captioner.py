r"""Image captioning (one-to-many): a small CNN reads the image, a :class:`ConditionalGenerator` writes the caption.

The encoder is ``len(channels)`` blocks of a 3x3 convolution, ReLU and 2x2
max pooling, then a linear map of the flattened feature map:

.. math::

    z_0 = x, \qquad z_b = \mathrm{maxpool}_{2\times2}(\mathrm{relu}(\mathrm{conv}_{3\times3}(z_{b-1}))), \qquad
    v = W_v\, \mathrm{vec}(z_B) + b_v

and the decoder is a :class:`~rnnkit.models.ConditionalGenerator` conditioned on ``v``:

.. math::

    s_0 = \tanh(W_s v + b_s), \qquad h_t = \mathrm{RNN}([e(y_{t-1}); v], h_{t-1}), \qquad
    p(y_t \mid y_{<t}, x) = \mathrm{softmax}(W_o h_t + b_o)

Shapes: N batch, H x W the image (one channel), C_b the channels of block b,
H_B x W_B = H / 2^B x W / 2^B (floored) the last feature map, F =
``feature_size``, L the caption length, V the vocabulary.

* ``images`` (N, 1, H, W), real-valued (scale them to about [0, 1]);
* ``tokens_in`` (N, L): [BOS, y_1, ..., y_{L-1}], with targets [y_1, ..., y_L] (pad-filled);
* ``v`` (N, F); logits (N, L, V).

Departures from Show and Tell (Vinyals et al., 2015), which feeds the image
vector once, as the first input: ``condition_mode="both"`` (the default) sets
the initial state from ``v`` *and* feeds ``v`` at every step, as m-RNN (Mao et
al., 2015) and LRCN (Donahue et al., 2015) do; on strips of handwritten
digits it learns in several times fewer steps than ``"init"`` alone. The
feature map is flattened rather than pooled over space, so that ``v`` keeps
*where* each stroke is: a caption read left to right needs it. ``v`` is linear
in the last feature map: a ReLU there left many of a small model's F units
dead and slowed training several times over.

Weights use PyTorch's default initialisation (Kaiming-uniform for the
convolutions and linear maps). Training, loss, metrics and decoding are the
decoder's: teacher forcing, cross-entropy ignoring ``pad_id``, greedy or beam
search through :mod:`rnnkit.models.decoding`. Equivalent to::

    def forward(images, tokens_in):
        v = encoder(images)                       # (N, F)
        return decoder((v, tokens_in))            # (N, L, V) logits, state
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
from torch import Tensor, nn

from rnnkit import errors
from rnnkit.models.common import RecurrentConfig, register
from rnnkit.models.one_to_many import ConditionalGenerator, ConditionalGeneratorConfig


@dataclass
class ImageCaptionerConfig:
    image_height: int
    image_width: int
    vocab_size: int
    channels: list[int] = field(default_factory=lambda: [16, 32])  # one conv + pool block each
    feature_size: int = 64
    embedding_dim: int = 32
    rnn: RecurrentConfig = field(default_factory=lambda: RecurrentConfig(cell="gru"))
    condition_mode: Literal["init", "every_step", "both"] = "both"
    dropout: float = 0.0  # on the image vector, and the decoder's embeddings and outputs
    pad_id: int = 0
    bos_id: int = 1
    eos_id: int = 2

    def __post_init__(self) -> None:
        for name in ("image_height", "image_width", "vocab_size", "feature_size", "embedding_dim"):
            errors.check_positive_int(name, getattr(self, name))
        if not self.channels:
            raise errors.fail("channels", "at least one conv block's channel count", self.channels)
        for count in self.channels:
            errors.check_positive_int("channels", count)
        if min(self.image_height, self.image_width) < 2 ** len(self.channels):
            raise errors.fail("image_height, image_width", f"at least {2 ** len(self.channels)} pixels each for "
                              f"{len(self.channels)} pooling blocks", f"{self.image_height} x {self.image_width}")  # fmt: skip

    @property
    def feature_map(self) -> tuple[int, int]:
        """(H_B, W_B): the last block's output size."""
        blocks = len(self.channels)
        return self.image_height >> blocks, self.image_width >> blocks


@register
class ImageCaptioner(nn.Module):
    config_class = ImageCaptionerConfig

    def __init__(self, config: ImageCaptionerConfig) -> None:
        super().__init__()
        self.config = config
        blocks, previous = [], 1
        for count in config.channels:
            blocks += [nn.Conv2d(previous, count, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
            previous = count
        height, width = config.feature_map
        self.encoder = nn.Sequential(*blocks, nn.Flatten(), nn.Linear(previous * height * width, config.feature_size),
                                     nn.Dropout(config.dropout))  # fmt: skip
        self.decoder = ConditionalGenerator(ConditionalGeneratorConfig(
            config.feature_size, config.vocab_size, config.embedding_dim, config.rnn, config.condition_mode, config.dropout,
            config.pad_id, config.bos_id, config.eos_id))  # fmt: skip

    def check_images(self, images: Tensor) -> None:
        shape = (1, self.config.image_height, self.config.image_width)
        if images.dim() != 4 or tuple(images.shape[1:]) != shape:
            raise errors.fail("images", f"a tensor of shape (batch, {', '.join(map(str, shape))})", f"shape {tuple(images.shape)}")
        if not images.dtype.is_floating_point:
            raise errors.fail("images", "floating-point pixels", f"dtype {images.dtype}")

    def encode(self, images: Tensor) -> Tensor:
        """The image vector v (N, F)."""
        self.check_images(images)
        return self.encoder(images)

    def forward(self, inputs, state=None):
        images, tokens = inputs
        return self.decoder((self.encode(images), tokens), state)

    def loss(self, logits: Tensor, targets: Tensor) -> Tensor:
        return self.decoder.loss(logits, targets)

    def metrics(self, logits: Tensor, targets: Tensor) -> dict[str, float]:
        return self.decoder.metrics(logits, targets)

    # -- decoding: the decoder's, started from the image vector ---------------------

    def decode_start(self, images: Tensor):
        return self.decoder.decode_start(self.encode(images))

    def decode_step(self, tokens: Tensor, state):
        return self.decoder.decode_step(tokens, state)

    def reorder_state(self, state, index: Tensor):
        return self.decoder.reorder_state(state, index)

    @torch.no_grad()
    def generate(self, images: Tensor, max_length: int, beam_size: int = 1) -> Tensor:
        """Tokens (N, T) for each image, by greedy (beam_size=1) or beam search; EOS-filled after EOS."""
        self.eval()
        return self.decoder.generate(self.encode(images), max_length, beam_size)
