"""The playground page in a real browser: Debian's headless Chromium, driven by Selenium through Debian's chromedriver.

Nothing downloads a browser: the test uses /usr/bin/chromium and
/usr/bin/chromedriver (``apt-get install chromium chromium-driver``; .ci/run
installs them) and skips, saying so, where they are missing. It types "This is
not a good movie" into the sentiment panel and checks the label and each
word's colour against the API's answer, streams 50 characters of text, and
drives every other panel once. ``RNNKIT_SCREENSHOTS=DIR`` saves a PNG of each
panel there (docs/img holds the ones docs/serving.md shows); ``RNNKIT_SERVE_RUNS``
(run folders, separated by spaces) serves those runs instead of the tiny ones.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

CHROMIUM, CHROMEDRIVER = shutil.which("chromium"), shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(CHROMIUM is None or CHROMEDRIVER is None,
                                reason="no headless browser: apt-get install chromium chromium-driver (Debian's packages)")  # fmt: skip
pytest.importorskip("selenium", reason="selenium is not installed (the dev extra)")
pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'rnnkit[serve]')")
httpx2 = pytest.importorskip("httpx2", reason="httpx2 is not installed (the dev extra)")

from selenium import webdriver  # noqa: E402
from selenium.webdriver.chrome.service import Service  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

from benchmarks.serve_load import running  # noqa: E402
from rnnkit.serve import create_app, load_runs  # noqa: E402
from rnnkit.tasks import synth  # noqa: E402
from rnnkit.tasks.common import DataError  # noqa: E402

SENTENCE = "This is not a good movie"


@pytest.fixture(scope="module")
def browser(monkeypatch_module):
    monkeypatch_module.setenv("SE_OFFLINE", "true")  # Selenium Manager must not look for a browser online
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1240,900",
                     "--disable-extensions", "--no-first-run", "--disable-background-networking"):  # fmt: skip
        options.add_argument(argument)
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


@pytest.fixture(scope="module")
def server(tiny_runs):
    folders = os.environ.get("RNNKIT_SERVE_RUNS", "").split() or list(tiny_runs.values())
    with running(create_app(load_runs(folders))) as base:
        yield base


def panel(driver, name: str):
    return driver.find_element(By.ID, f"panel-{name}")


def run_panel(driver, name: str, timeout: float = 60) -> None:
    """Click the panel's button and wait until it is done; its error, if any, fails the test."""
    section = panel(driver, name)
    section.find_element(By.CSS_SELECTOR, "button.run").click()
    WebDriverWait(driver, timeout).until(lambda d: section.get_attribute("data-state") in ("done", "error"))
    assert section.get_attribute("data-state") == "done", section.find_element(By.CSS_SELECTOR, ".error").text


def set_value(element, text: str) -> None:
    element.clear()
    element.send_keys(text)


def rgba(colour: str) -> tuple[float, ...]:
    return tuple(map(float, re.findall(r"[\d.]+", colour)))


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("RNNKIT_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.execute_script("arguments[0].scrollIntoView()", panel(driver, name))
        panel(driver, name).screenshot(str(Path(folder) / f"serve-{name}.png"))


def spoken_digits(words: list[str]) -> bytes:
    """A WAV file of the words in a voice training never heard; a tone where espeak-ng is missing (any WAV serves the check)."""
    from rnnkit.tasks import speech

    try:
        with speech.Espeak() as tts:
            return synth.wav_bytes(tts.say(words, speech.Voice("en-us+m3")) / 32768, tts.sample_rate)
    except (OSError, ImportError, DataError):
        return synth.wav_bytes((0.3 * np.sin(np.arange(12000) * 0.2) * np.hanning(12000)).astype(np.float32), 16000)


def tasks_served(server) -> dict[str, str]:
    return {run["task"]: run["name"] for run in httpx2.get(f"{server}/api/runs").json()}


def test_sentiment_panel_shows_the_label_and_colours_each_word_by_its_contribution(browser, server):
    name = tasks_served(server)["sentiment"]
    browser.get(server + "/")
    WebDriverWait(browser, 30).until(lambda d: d.find_elements(By.ID, f"panel-{name}"))
    set_value(panel(browser, name).find_element(By.CSS_SELECTOR, "input.input-text"), SENTENCE)
    run_panel(browser, name)
    expected = httpx2.post(f"{server}/api/{name}/predict", json={"text": SENTENCE}).json()
    label = panel(browser, name).find_element(By.CSS_SELECTOR, ".label")
    assert label.text == expected["label"] and expected["label"] in label.get_attribute("class")
    if "RNNKIT_SERVE_RUNS" not in os.environ:
        assert expected["label"] == "negative"  # the tiny run was trained on negations
    words = panel(browser, name).find_elements(By.CSS_SELECTOR, ".word")
    assert [w.text for w in words] == [w["word"] for w in expected["words"]] == ["this", "is", "not", "a", "good", "movie"]
    for element, word in zip(words, expected["words"]):
        red, green, blue, alpha = rgba(element.value_of_css_property("background-color"))
        assert (green > red) == (word["contribution"] >= 0), (word, red, green)  # green pushes towards positive, red towards negative
        assert float(element.get_attribute("data-contribution")) == pytest.approx(word["contribution"])
    strongest = max(expected["words"], key=lambda w: abs(w["contribution"]))
    assert rgba(words[expected["words"].index(strongest)].value_of_css_property("background-color"))[3] == pytest.approx(0.9, abs=0.01)
    screenshot(browser, name)


def test_text_panel_streams_50_characters_as_the_api_does(browser, server):
    name = tasks_served(server)["charlm"]
    section = panel(browser, name)
    prime = section.find_element(By.CSS_SELECTOR, "input.input-prime").get_attribute("value")
    set_value(section.find_element(By.CSS_SELECTOR, "input.input-length"), "50")
    run_panel(browser, name)
    shown = browser.execute_script("return arguments[0].textContent", section.find_element(By.CSS_SELECTOR, "pre.generated"))
    with httpx2.stream("POST", f"{server}/api/{name}/generate", json={"prime": prime, "length": 50, "temperature": 0.8}) as response:
        done = [line for line in response.iter_lines() if line.startswith("data: ") and '"text"' in line][-1]
    assert shown == json.loads(done[6:])["text"] and len(shown) == len(prime) + 50
    screenshot(browser, name)


def test_every_other_panel_answers(browser, server, tmp_path):
    served = tasks_served(server)
    for task in ("translation", "co2", "captioning", "music"):
        if task in served:
            run_panel(browser, served[task])
    if "translation" in served:
        cells = panel(browser, served["translation"]).find_elements(By.CSS_SELECTOR, "table.attention td")
        assert cells and panel(browser, served["translation"]).find_element(By.CSS_SELECTOR, ".translation").text
    if "music" in served:
        audio = panel(browser, served["music"]).find_element(By.CSS_SELECTOR, "audio.melody")
        assert audio.get_attribute("src").startswith("data:audio/wav;base64,")
        WebDriverWait(browser, 10).until(lambda d: d.execute_script("return arguments[0].duration > 0", audio))  # the browser decodes it
    if "captioning" in served:
        digits = panel(browser, served["captioning"]).find_element(By.CSS_SELECTOR, "input.input-digits").get_attribute("value")
        strip = panel(browser, served["captioning"]).find_element(By.CSS_SELECTOR, "canvas.strip")
        assert strip.get_attribute("width") == str(len(digits) * 8 * 12)  # 8 x 8 pixels a digit, drawn 12 times larger
    if "speech" in served:
        wav = tmp_path / "four-one-nine.wav"
        wav.write_bytes(spoken_digits(["four", "one", "nine"]))
        panel(browser, served["speech"]).find_element(By.CSS_SELECTOR, "input.input-wav").send_keys(str(wav))
        run_panel(browser, served["speech"])
        assert panel(browser, served["speech"]).find_element(By.CSS_SELECTOR, ".transcript").text
    for task, name in served.items():
        if task not in ("sentiment", "charlm"):
            screenshot(browser, name)
