"""The server under load over loopback: 200 concurrent predictions, then 20 concurrent generation streams, with no errors.

Bounded: a few seconds of work, each batch under a time limit. Latency and
throughput are printed by ``python -m benchmarks.serve_load`` (docs/serving.md),
never asserted here.
"""

from __future__ import annotations

import pytest

pytest.importorskip("uvicorn", reason="the serve extra is not installed (pip install 'rnnkit[serve]')")
pytest.importorskip("httpx2", reason="the load client needs httpx2 (the dev extra)")

from benchmarks.serve_load import load, running  # noqa: E402
from rnnkit.serve import create_app, load_runs  # noqa: E402


def test_200_predictions_and_20_streams_at_once_all_succeed(tiny_runs):
    runs = load_runs([tiny_runs["sentiment"], tiny_runs["charlm"]])
    with running(create_app(runs)) as base:
        assert base.startswith("http://127.0.0.1:")
        result = load(base, "sentiment", {"text": "the film is not good ."}, "charlm", {"prime": "the ", "length": 100},
                      predicts=200, streams=20, timeout_s=120)  # fmt: skip
    assert result.errors == []
    assert len(result.latencies["predict"]) == 200 and len(result.latencies["generate"]) == 20
    assert result.tokens == 20 * 100
