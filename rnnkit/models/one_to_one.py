"""One-to-one: a feed-forward baseline that sees a bag of features, not a sequence.

    s = mean_t e(x_t)  over valid positions      (order is thrown away)
    y = W_2 relu(W_1 s + b_1) + b_2

It takes the same inputs as :class:`~rnnkit.models.SequenceClassifier`, so the
two can be compared on one dataset: the MLP cannot tell "not good, great" from
"good, not great", which is the point of the comparison.
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from rnnkit.models.common import ClassifierMixin, InputConfig, InputEncoder, register, split_inputs, valid_mask


@dataclass
class BagOfFeaturesConfig:
    input: InputConfig
    output_size: int = 2
    hidden_size: int = 64
    dropout: float = 0.0


@register
class BagOfFeaturesMLP(ClassifierMixin, nn.Module):
    """Order-free classifier: mean of the embedded inputs through a two-layer MLP."""

    config_class = BagOfFeaturesConfig

    def __init__(self, config: BagOfFeaturesConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder = InputEncoder(config.input, config.dropout)
        self.mlp = nn.Sequential(
            nn.Linear(config.input.output_size, config.hidden_size), nn.ReLU(), nn.Dropout(config.dropout),
            nn.Linear(config.hidden_size, config.output_size),
        )  # fmt: skip

    def forward(self, inputs, state=None):
        x, lengths = split_inputs(inputs)
        mask = valid_mask(lengths, x.shape[0], x.shape[1], x.device).unsqueeze(-1)
        bag = (self.encoder(x) * mask).sum(1) / mask.sum(1).clamp(min=1)
        return self.mlp(bag), None
