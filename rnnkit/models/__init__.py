"""Ready models for the four sequence shapes, on any rnnkit layer chosen by name.

* one-to-one: :class:`BagOfFeaturesMLP`, the order-free baseline
* many-to-one: :class:`SequenceClassifier`, :class:`SequenceRegressor`
* many-to-many, aligned: :class:`SequenceTagger`, :class:`LanguageModel`
* one-to-many: :class:`ConditionalGenerator`; :class:`ImageCaptioner` puts a small CNN before it
* many-to-many, unaligned: :class:`CTCRecognizer` (CTC), :class:`CTCFrameMLP` its baseline
* many-to-many, encoder-decoder: :class:`Seq2Seq` with Bahdanau or Luong attention

Decoding lives in :mod:`rnnkit.models.decoding`; :func:`save_model` and
:func:`load_model` use rnnkit's checkpoint format (safetensors + JSON).
"""

from rnnkit.models.captioner import ImageCaptioner, ImageCaptionerConfig
from rnnkit.models.common import InputConfig, RecurrentConfig, load_model, save_model
from rnnkit.models.ctc import CTCFrameMLP, CTCFrameMLPConfig, CTCRecognizer, CTCRecognizerConfig
from rnnkit.models.many_to_many import LanguageModel, LanguageModelConfig, SequenceTagger, TaggerConfig
from rnnkit.models.many_to_one import ManyToOneConfig, SequenceClassifier, SequenceRegressor
from rnnkit.models.one_to_many import ConditionalGenerator, ConditionalGeneratorConfig
from rnnkit.models.one_to_one import BagOfFeaturesConfig, BagOfFeaturesMLP
from rnnkit.models.seq2seq import ScheduledSampling, Seq2Seq, Seq2SeqConfig

__all__ = [
    "CTCFrameMLP", "CTCFrameMLPConfig", "CTCRecognizer", "CTCRecognizerConfig",
    "BagOfFeaturesConfig", "BagOfFeaturesMLP", "ConditionalGenerator", "ConditionalGeneratorConfig", "ImageCaptioner",
    "ImageCaptionerConfig", "InputConfig",
    "LanguageModel", "LanguageModelConfig", "ManyToOneConfig", "RecurrentConfig", "ScheduledSampling", "Seq2Seq",
    "Seq2SeqConfig", "SequenceClassifier", "SequenceRegressor", "SequenceTagger", "TaggerConfig", "load_model", "save_model",
]  # fmt: skip
