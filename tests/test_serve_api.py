"""The server's JSON API, in process: every endpoint with good input (held against the tasks' own functions) and bad."""

from __future__ import annotations

import base64
import io
import json
import re
import time
import wave

import numpy as np
import pytest

pytest.importorskip("fastapi", reason="the serve extra is not installed (pip install 'rnnkit[serve]')")
pytest.importorskip("httpx2", reason="the test client needs httpx2 (the dev extra)")

from fastapi.testclient import TestClient  # noqa: E402

from rnnkit import tasks  # noqa: E402
from rnnkit.models import load_model  # noqa: E402
from rnnkit.serve import Limits, create_app, load_runs  # noqa: E402
from rnnkit.tasks import captioning, charlm, forecasting, sentiment, speech, synth, translation  # noqa: E402
from rnnkit.tasks.common import DataError  # noqa: E402

LIMITS = Limits(max_body_bytes=200_000, max_text_chars=97, max_characters=211, max_events=53)


@pytest.fixture(scope="module")
def runs(tiny_runs):
    return load_runs(list(tiny_runs.values()), LIMITS)


@pytest.fixture(scope="module")
def client(runs):
    return TestClient(create_app(runs, LIMITS))


def events(response) -> list[tuple[str, dict]]:
    """The (kind, data) server-sent events of a whole response."""
    out = []
    for block in response.text.strip().split("\n\n"):
        kind, data = block.split("\n")
        out.append((kind.removeprefix("event: "), json.loads(data.removeprefix("data: "))))
    return out


def wav_base64(samples: np.ndarray, rate: int = 16000) -> str:
    return base64.b64encode(synth.wav_bytes(samples, rate)).decode()


# -- listing and schema ---------------------------------------------------------------------------


def test_runs_lists_each_served_run_with_an_example_that_works(client, tiny_runs):
    listed = client.get("/api/runs").json()
    assert sorted(r["name"] for r in listed) == sorted(tiny_runs)
    for run in listed:
        assert run["endpoint"] == f"/api/{run['name']}/{run['kind']}"
        assert run["kind"] == ("generate" if run["task"] in ("charlm", "music") else "predict")
        if run["task"] != "speech":  # its example is a description: a WAV file cannot be written as an example
            body = {**run["example"], "length": 5} if run["kind"] == "generate" else run["example"]
            assert client.post(run["endpoint"], json=body).status_code == 200, run["name"]


def test_openapi_schema_has_each_runs_own_request_and_its_limits(client):
    schema = client.get("/openapi.json").json()
    assert "/api/sentiment/predict" in schema["paths"] and "/api/charlm/generate" in schema["paths"]
    assert "/api/charlm/predict" not in schema["paths"]
    models = schema["components"]["schemas"]
    assert models["SentimentPredictRequest"]["properties"]["text"]["maxLength"] == 97
    assert models["CharlmGenerateRequest"]["properties"]["length"]["maximum"] == 211
    assert models["MusicGenerateRequest"]["properties"]["length"]["maximum"] == 53
    assert models["CaptioningPredictRequest"]["properties"]["digits"]["pattern"] == "^[0-9]{3}$"
    assert models["SentimentPredictRequest"]["additionalProperties"] is False


def test_page_and_static_files_are_served_with_a_policy_that_forbids_other_origins(client):
    page = client.get("/")
    assert page.status_code == 200 and '<script src="/static/app.js"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for name in ("app.js", "style.css"):
        assert client.get(f"/static/{name}").status_code == 200
    assert "http" not in client.get("/static/app.js").text.replace("HTTP", "")  # no CDN, no other origin
    assert client.get("/docs").status_code == 404  # FastAPI's docs page would load scripts from a CDN


# -- predictions, each held against its task's own function ------------------------------------------


def test_sentiment_gives_the_label_and_each_words_occlusion_contribution(client, tiny_runs):
    answer = client.post("/api/sentiment/predict", json={"text": "the movie is not good ."}).json()
    assert answer["label"] == "negative" and answer["probability"] == pytest.approx(1 - answer["p_positive"])
    words = {w["word"]: w["contribution"] for w in answer["words"]}
    assert list(words) == ["the", "movie", "is", "not", "good", "."]
    assert words["not"] < -0.3  # "is good" without "not" reads positive: the negation carries the label
    model, extra = load_model(tiny_runs["sentiment"] / "model.safetensors")
    without_not = sentiment.probabilities(model.eval(), ["the movie is good ."], extra["vocabulary"])[0]
    assert words["not"] == pytest.approx(answer["p_positive"] - without_not, abs=1e-6)
    config = tasks.load_run(tiny_runs["sentiment"])[1]
    assert sentiment.predict(config, tiny_runs["sentiment"], "the movie is not good .") == f"negative (probability {answer['probability']:.3f})"


def test_forecast_is_the_tasks_forecast_of_the_values_sent(client, tiny_runs):
    config = tasks.load_run(tiny_runs["co2"])[1]
    values = [float(v) for v in 300 + np.sin(np.arange(40) / 2)]
    answer = client.post("/api/co2/predict", json={"values": values}).json()
    expected = forecasting.predict(config, tiny_runs["co2"], " ".join(map(repr, values)))
    assert answer["history"] == values and len(answer["forecast"]) == answer["horizon"] == 6
    assert expected == "next 6 values: " + ", ".join(f"{v:.6g}" for v in answer["forecast"])


def test_translation_comes_with_the_attention_that_produced_it(client, tiny_runs):
    config = tasks.load_run(tiny_runs["translation"])[1]
    answer = client.post("/api/translation/predict", json={"text": "w1 w2 w3"}).json()
    assert answer["translation"] == translation.predict(config, tiny_runs["translation"], "w1 w2 w3")
    assert answer["source_words"] == ["w1", "w2", "w3"]
    attention = np.array(answer["attention"])
    assert attention.shape == (len(answer["output_words"]), 3) and np.allclose(attention.sum(1), 1, atol=1e-5)


def test_caption_and_strip_are_the_tasks_for_the_same_held_out_images(client, tiny_runs):
    config = tasks.load_run(tiny_runs["captioning"])[1]
    answer = client.post("/api/captioning/predict", json={"digits": "419"}).json()
    assert captioning.predict(config, tiny_runs["captioning"], "419").startswith(answer["caption"] + "  (a strip")
    image, _ = captioning.test_strip(config, "419")
    assert np.array(answer["strip"]) == pytest.approx(image[0, 0].numpy())


def test_speech_transcribes_an_uploaded_wav_as_the_task_does_the_file(client, tiny_runs, tmp_path):
    config = tasks.load_run(tiny_runs["speech"])[1]
    samples = (0.3 * np.sin(np.arange(12000) * 0.2) * np.hanning(12000)).astype(np.float32)
    (tmp_path / "tone.wav").write_bytes(synth.wav_bytes(samples, 16000))
    answer = client.post("/api/speech/predict", json={"wav_base64": wav_base64(samples)}).json()
    assert (answer["transcript"] or "(nothing recognised)") == speech.predict(config, tiny_runs["speech"], str(tmp_path / "tone.wav"))
    assert answer["seconds"] == 0.75


# -- generation streams ----------------------------------------------------------------------------------


def test_text_streams_token_by_token_and_equals_one_generate_call(client, tiny_runs):
    config = tasks.load_run(tiny_runs["charlm"])[1]
    body = {"prime": "the ", "length": 40, "temperature": 0.7, "seed": 3}
    stream = events(client.post("/api/charlm/generate", json=body))
    tokens = [data["token"] for kind, data in stream if kind == "token"]
    assert len(tokens) == 40 and all(len(t) == 1 for t in tokens) and stream[-1][0] == "done"
    expected = charlm.generate(config, tiny_runs["charlm"], "the ", temperature=0.7, length=40, seed=3)
    assert "the " + "".join(tokens) == stream[-1][1]["text"] == expected


def test_top_k_1_and_a_tiny_top_p_both_draw_the_most_probable_character(client):
    texts = set()
    for extra in ({"top_k": 1, "seed": 1}, {"top_k": 1, "seed": 2}, {"top_p": 1e-4, "seed": 3}):
        texts.add(events(client.post("/api/charlm/generate", json={"prime": "the ", "length": 30, **extra}))[-1][1]["text"])
    assert len(texts) == 1  # greedy: the seed no longer matters
    sampled = {events(client.post("/api/charlm/generate", json={"prime": "the ", "length": 30, "temperature": 2.0, "seed": s}))[-1][1]["text"]
               for s in (1, 2)}  # fmt: skip
    assert len(sampled) == 2


def test_music_streams_events_then_the_melody_as_midi_wav_and_notes(client, runs):
    stream = events(client.post("/api/music/generate", json={"prime": "C4:0.5 D4:0.5", "length": 12, "seed": 1}))
    tokens = [data["token"] for kind, data in stream if kind == "token"]
    done = stream[-1][1]
    assert len(tokens) == 12 and done["events"] == ["C4:0.5", "D4:0.5", *tokens]
    assert done["notes"][:2] == [[60, 0, 2], [62, 2, 2]] and done["grid"] == 4
    notes = synth.read_notes(base64.b64decode(done["midi_base64"]))
    assert [n.pitch for n in notes] == [p for p, _, _ in done["notes"]]
    with wave.open(io.BytesIO(base64.b64decode(done["wav_base64"]))) as w:
        seconds = w.getnframes() / w.getframerate()
    beats = sum(steps for _, steps in map(lambda e: runs["music"].module.parse_event(e, 4), done["events"])) / 4
    assert seconds == pytest.approx(beats * 60 / runs["music"].config.tempo + synth.RELEASE, abs=0.01)


# -- bad input: every error names what was wrong -----------------------------------------------------------


@pytest.mark.parametrize("path,body,message", [
    ("/api/sentiment/predict", {"text": 5}, r"^text: Input should be a valid string \(got 5\)$"),
    ("/api/sentiment/predict", {"txt": "good"}, r"text: Field required; txt: Extra inputs are not permitted"),
    ("/api/sentiment/predict", {"text": "x" * 98}, r"^text: String should have at most 97 characters"),
    ("/api/sentiment/predict", {"text": ""}, r"^text: String should have at least 1 character"),
    ("/api/co2/predict", {"values": [1.0, "2"]}, r"^values.1: Input should be a valid number \(got '2'\)$"),
    ("/api/co2/predict", {"values": [1.0, 2.0]}, r"^values: List should have at least 25 items"),
    ("/api/captioning/predict", {"digits": "41"}, r"^digits: String should match pattern"),
    ("/api/charlm/generate", {"length": 212}, r"^length: Input should be less than or equal to 211"),
    ("/api/charlm/generate", {"temperature": 0}, r"^temperature: Input should be greater than 0"),
    ("/api/charlm/generate", {"top_p": 1.5}, r"^top_p: Input should be less than or equal to 1"),
    ("/api/charlm/generate", {"length": "50"}, r"^length: Input should be a valid integer \(got '50'\)$"),
    ("/api/music/generate", {"length": 54}, r"^length: Input should be less than or equal to 53"),
])  # fmt: skip
def test_wrong_types_unknown_fields_and_values_past_the_limits_are_422s_naming_the_field(client, path, body, message):
    response = client.post(path, json=body)
    assert response.status_code == 422
    assert re.search(message, response.json()["message"]), response.json()["message"]


def test_malformed_json_is_a_422_that_says_so(client):
    response = client.post("/api/sentiment/predict", content=b'{"text": "good', headers={"content-type": "application/json"})
    assert response.status_code == 422 and response.json()["message"].startswith("body: expected valid JSON, got an error at character")


@pytest.mark.parametrize("path,body,message", [
    ("/api/charlm/generate", {"prime": "ROMEO:"}, "prime: expected one or more characters of the training text, got 'ROMEO:'"),
    ("/api/music/generate", {"prime": "C#4"}, "prime: expected note events of the training vocabulary"),
    ("/api/speech/predict", {"wav_base64": "not base64!"}, "wav_base64: expected a base64-encoded WAV file"),
    ("/api/speech/predict", {"wav_base64": base64.b64encode(b"RIFF....").decode()}, "wav_base64: expected a WAV file of 16-bit PCM or 32-bit float samples"),
    ("/api/speech/predict", {"wav_base64": wav_base64(np.zeros(100, np.float32))}, "wav_base64: expected at least 0.1 s of audio"),
    ("/api/co2/predict", {"values": [float("nan")] * 25}, "values: expected finite numbers"),
    ("/api/sentiment/predict", {"text": "!?"} , None),  # punctuation is a word to this tokeniser: answered
    ("/api/translation/predict", {"text": "   "}, "text: expected a sentence to translate"),
])  # fmt: skip
def test_inputs_the_task_cannot_use_are_422s_with_the_tasks_message(client, path, body, message):
    response = client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})  # NaN: Python's JSON
    if message is None:
        assert response.status_code == 200
    else:
        assert response.status_code == 422 and response.json()["detail"].startswith(message), response.json()


def test_only_served_run_names_reach_a_handler(client):
    for path in ("/api/nope/predict", "/api/charlm/predict", "/api/sentiment/generate", "/api/..%2F..%2Fetc/predict",
                 "/api/%2e%2e/sentiment/predict"):  # fmt: skip
        assert client.post(path, json={"text": "good"}).status_code in (404, 405), path
    assert client.get("/static/../runs.py").status_code == 404 and client.get("/static/%2e%2e/runs.py").status_code == 404


def test_a_large_body_is_a_413_whether_declared_or_streamed(client):
    assert client.post("/api/sentiment/predict", json={"text": "x" * 300_000}).status_code == 413

    def chunks():
        yield b'{"text": "'
        for _ in range(30):
            yield b"x" * 10_000
        yield b'"}'

    streamed = client.post("/api/sentiment/predict", content=chunks(), headers={"content-type": "application/json"})
    assert streamed.status_code == 413 and streamed.json()["detail"] == "request body: expected at most 200000 bytes, got more"


# -- timeouts and failures --------------------------------------------------------------------------------


def test_a_slow_prediction_is_a_504_and_a_slow_stream_ends_with_an_error_event(runs, monkeypatch):
    client = TestClient(create_app(runs, Limits(request_timeout_s=0.2)))
    monkeypatch.setattr(runs["sentiment"], "predict", lambda body: time.sleep(1.0))
    response = client.post("/api/sentiment/predict", json={"text": "good"})
    assert response.status_code == 504 and "longer than 0.2 s" in response.json()["detail"]

    def slow(body):
        for character in "abcdefgh":
            time.sleep(0.1)
            yield character

    monkeypatch.setattr(runs["charlm"], "start", slow)
    stream = events(client.post("/api/charlm/generate", json={"prime": "the "}))
    assert 1 <= len(stream) - 1 <= 4 and stream[-1][0] == "error" and "longer than 0.2 s" in stream[-1][1]["detail"]


def test_a_failing_request_is_a_500_and_the_server_goes_on_serving(runs, monkeypatch):
    client = TestClient(create_app(runs, LIMITS), raise_server_exceptions=False)

    def broken(body):
        raise RuntimeError("a bug")

    monkeypatch.setattr(runs["translation"], "predict", broken)
    response = client.post("/api/translation/predict", json={"text": "w1"})
    assert response.status_code == 500 and "RuntimeError" in response.json()["detail"] and "a bug" not in response.text
    monkeypatch.setattr(runs["charlm"], "finish", lambda body, tokens: 1 / 0)
    assert events(client.post("/api/charlm/generate", json={"prime": "the ", "length": 3}))[-1] == (
        "error", {"detail": "generation failed: ZeroDivisionError"})
    assert client.post("/api/sentiment/predict", json={"text": "good"}).status_code == 200


# -- loading ----------------------------------------------------------------------------------------------


def test_run_folders_must_have_plain_unique_names(tiny_runs, tmp_path):
    odd = tmp_path / "my run"
    odd.symlink_to(tiny_runs["sentiment"])
    with pytest.raises(DataError, match=r"expected a folder name of letters, digits, .*got 'my run'"):
        load_runs([odd])
    with pytest.raises(DataError, match=r"expected run folders with different names .*got 'sentiment' twice"):
        load_runs([tiny_runs["sentiment"], tiny_runs["sentiment"]])
    with pytest.raises(DataError, match="expected at least one run folder"):
        load_runs([])


def test_nothing_is_unpickled_loading_runs_or_answering(tiny_runs, monkeypatch):
    import pickle

    import torch

    def refuse(*args, **kwargs):
        raise AssertionError("something was unpickled")

    for module, name in ((pickle, "load"), (pickle, "loads"), (pickle, "Unpickler"), (torch, "load")):
        monkeypatch.setattr(module, name, refuse)
    client = TestClient(create_app(list(tiny_runs.values()), LIMITS))
    for run in client.get("/api/runs").json():
        if run["task"] != "speech":
            body = {**run["example"], "length": 3} if run["kind"] == "generate" else run["example"]
            assert client.post(run["endpoint"], json=body).status_code == 200, run["name"]
