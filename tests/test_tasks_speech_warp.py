"""Speech: the test-time warp search (speech_warp): the cepstral warp against the audio's, the search's choice, its settings."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from rnnkit import tasks
from rnnkit.models import CTCRecognizer, CTCRecognizerConfig, RecurrentConfig
from rnnkit.models.decoding import ctc_greedy
from rnnkit.tasks import speech
from rnnkit.tasks.speech_features import dct_matrix, hz_to_mel, mel_to_hz, normalize
from rnnkit.tasks.speech_warp import check_warps, warp_matrix, warp_search

FEATURES = speech.FeatureConfig()


def centres(f: speech.FeatureConfig) -> np.ndarray:
    return mel_to_hz(np.linspace(hz_to_mel(f.low_hz), hz_to_mel(f.high_hz), f.num_filters + 2))[1:-1]


def peak(cepstra: torch.Tensor, n: int = 20) -> float:
    """Where, in filters (fractional), the smooth log mel spectrum that mean cepstra describe is highest."""
    positions, order = np.linspace(0, n - 1, 2001), np.arange(len(cepstra))
    scale = np.where(order == 0, math.sqrt(1 / n), math.sqrt(2 / n))
    spectrum = (np.cos(np.pi * order[None, :] * (positions[:, None] + 0.5) / n) * scale) @ cepstra.double().numpy()
    return float(positions[spectrum.argmax()])


def test_the_warp_is_the_identity_at_one_and_moves_a_tone_to_the_filter_that_reads_it():
    assert torch.allclose(warp_matrix(FEATURES, 1.0), torch.eye(13), atol=1e-5)
    rate, mels = 16000, hz_to_mel(centres(FEATURES))
    t = np.arange(rate // 2) / rate
    for tone in (700.0, 1300.0, 2100.0):
        raw = speech.raw_cepstra((8000 * np.sin(2 * np.pi * tone * t)).astype(np.float32), rate, FEATURES).mean(0)
        heard_at = mel_to_hz(np.interp(peak(raw), np.arange(20), mels))  # the tone, as the unwarped spectrum places it
        for warp in (0.85, 1.15):
            # filter p now reads the spectrum at warp * f(p): the peak moves to where that is the tone's frequency
            expected = float(np.interp(hz_to_mel(heard_at / warp), mels, np.arange(20)))
            assert abs(peak(raw @ warp_matrix(FEATURES, warp).T) - expected) < 0.25, (tone, warp)  # 13 cepstra of 20 samples: a little blur
            assert (expected - peak(raw)) * np.sign(1 - warp) > 0.5  # a lower warp moves it up the filters, by most of one


def test_the_cepstral_warp_lands_near_the_features_the_audio_gives_at_that_warp():
    config = tasks.get("speech").config("demo")
    ratios = []
    with speech.Espeak() as tts:
        for u in speech.plan(config.data, "test", 4):
            audio = tts.say(u.words, u.voice, u.seed).astype(np.float32)
            raw = speech.raw_cepstra(audio, tts.sample_rate, FEATURES)
            for warp in (0.9, 1.1):
                exact = normalize(speech.raw_cepstra(audio, tts.sample_rate, FEATURES, warp), "mean_variance")
                ours = normalize(raw @ warp_matrix(FEATURES, warp).T, "mean_variance")
                ratios.append(float((ours - exact).pow(2).mean() / (normalize(raw, "mean_variance") - exact).pow(2).mean()))
    assert max(ratios) < 0.5 and np.mean(ratios) < 0.35, ratios


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    rnn = RecurrentConfig(cell="lstm", hidden_size=16, num_layers=1, bidirectional=True)
    return CTCRecognizer(CTCRecognizerConfig(13, len(speech.WORDS), rnn, subsample=3)).eval()


def utterances(lengths=(61, 40, 75)) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(1)
    return [torch.randn(n, 13, generator=generator) * torch.linspace(8, 1, 13) for n in lengths]


def alone(model, cepstra: torch.Tensor, warp: float) -> torch.Tensor:
    """One utterance's (T', classes) log-probs at one warp, with nothing padded."""
    outputs, _ = model(normalize(cepstra @ warp_matrix(FEATURES, warp).T, "mean_variance")[None])
    return outputs.log_probs[0]


def belief(log_probs: torch.Tensor) -> float:
    heard = ctc_greedy(log_probs[None])[0]
    loss = F.ctc_loss(log_probs[:, None], torch.tensor([heard or [1]]), [len(log_probs)], [len(heard)], reduction="sum")
    return -float(loss) / len(log_probs)


def test_warp_search_averages_the_posteriors_of_each_utterances_best_warps(model):
    cepstra, warps = utterances(), [0.9, 1.0, 1.1]
    with torch.no_grad():
        plain = warp_search(model, cepstra, FEATURES, [1.0], 1)
        assert plain.lengths.tolist() == [21, 14, 25]
        for row, c in enumerate(cepstra):
            n = int(plain.lengths[row])
            assert torch.allclose(plain.log_probs[row, :n], alone(model, c, 1.0), atol=1e-5)  # padding leaks nothing
        for top in (1, 2, 3):
            searched = warp_search(model, cepstra, FEATURES, warps, top)
            for row, c in enumerate(cepstra):
                each = {w: alone(model, c, w) for w in warps}
                best = sorted(warps, key=lambda w: belief(each[w]), reverse=True)[:top]
                expected = torch.stack([each[w] for w in best]).exp().mean(0).log()
                n = int(searched.lengths[row])
                assert torch.allclose(searched.log_probs[row, :n], expected, atol=1e-5), (top, row)
        assert not torch.allclose(warp_search(model, cepstra, FEATURES, warps, 1).log_probs, plain.log_probs)


@pytest.mark.parametrize("warps, top, message", [
    ([], 1, r"decode.warps: expected a non-empty list of warp factors in \[0.5, 2\], got \[\]"),
    ([1.0, 0.3], 1, r"decode.warps: expected .* got \[1.0, 0.3\]"),
    ([1.0, True], 1, r"decode.warps: expected .* got \[1.0, True\]"),
    ([0.9, 1.0], 0, r"decode.warp_top: expected a positive int, got 0"),
])  # fmt: skip
def test_decode_config_rejects_bad_warp_settings(warps, top, message):
    with pytest.raises(ValueError, match=message):
        speech.DecodeConfig(warps=warps, warp_top=top)


def test_warp_settings_that_do_not_fit_together_fail_before_any_synthesis_in_any_override_order(tmp_path):
    task = tasks.get("speech")
    for overrides in (["decode.warps=[0.9,1.0,1.1]", "decode.warp_top=2"], ["decode.warp_top=2", "decode.warps=[0.9,1.0,1.1]"]):
        assert task.config("fast", overrides).decode.warp_top == 2  # checked together only once the config is whole
    cases = {
        r"decode.warp_top: expected at most len\(decode.warps\) = 3, got 13": ["decode.warps=[0.9,1.0,1.1]"],
        r"decode.warp_search: a warp search needs features.transform='dct' .*got 'legacy'; set decode.warp_search=false": [
            "features.transform=legacy"],
    }  # fmt: skip
    for message, overrides in cases.items():
        with pytest.raises(ValueError, match=message):
            speech.train(task.config("fast", overrides), tmp_path, say=lambda message: None)
        with pytest.raises(ValueError, match=message):  # and where a saved run is decoded again
            speech.recognise(None, [], task.config("fast", overrides))
    assert not any(tmp_path.iterdir())
    check_warps([0.9, 1.1], 2, "dct")
    with pytest.raises(ValueError, match=r"features.transform: expected 'dct' for a cepstral warp, got 'legacy'"):
        warp_matrix(task.config("fast", ["features.transform=legacy"]).features, 1.1)
