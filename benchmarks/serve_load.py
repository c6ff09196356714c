"""A bounded load test of ``rnnkit serve`` over loopback: concurrent predictions and generation streams.

    python -m benchmarks.serve_load runs/sentiment runs/charlm [--predicts 200] [--streams 20] [--length 200]

Serves the two runs (a predict run and a generate run) on 127.0.0.1 at a free
port in this process, then sends every predict request at once and every
stream at once, each batch on its own connections, and prints p50/p99
latency and throughput (docs/serving.md quotes them). Every request must
succeed: any error is reported and the exit status is 1. The tests run
:func:`load` with the same counts, and check only that nothing failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field


@contextlib.contextmanager
def running(app, timeout_s: float = 30.0):
    """Serve ``app`` with uvicorn on 127.0.0.1 at a free port in a thread; yields the base URL, and stops it after."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", timeout_keep_alive=5))
    thread = threading.Thread(target=server.run, name="rnnkit-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("rnnkit serve: the test server did not start")
        time.sleep(0.02)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


@dataclass
class Result:
    latencies: dict[str, list[float]] = field(default_factory=dict)  # seconds per request, by kind
    wall: dict[str, float] = field(default_factory=dict)  # seconds for all requests of a kind
    tokens: int = 0  # streamed tokens received
    errors: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, dict[str, float]]:
        out = {}
        for kind, values in self.latencies.items():
            ordered = sorted(values)
            out[kind] = {"requests": len(values), "p50_ms": 1000 * statistics.median(ordered),
                         "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
                         "requests_per_s": len(values) / self.wall[kind]}  # fmt: skip
        if "generate" in out:
            out["generate"]["tokens_per_s"] = self.tokens / self.wall["generate"]
        return out


async def _predict(client, url: str, body: dict, result: Result) -> None:
    started = time.perf_counter()
    try:
        response = await client.post(url, json=body)
        if response.status_code != 200:
            result.errors.append(f"predict: {response.status_code} {response.text[:200]}")
    except Exception as error:  # a refused or dropped connection is an error of the run, not of the tool
        result.errors.append(f"predict: {type(error).__name__}: {error}")
    result.latencies["predict"].append(time.perf_counter() - started)


async def _stream(client, url: str, body: dict, result: Result) -> None:
    started, tokens, done = time.perf_counter(), 0, False
    try:
        async with client.stream("POST", url, json=body) as response:
            if response.status_code != 200:
                result.errors.append(f"generate: {response.status_code}")
                return
            async for line in response.aiter_lines():
                if line.startswith("event: "):
                    kind = line[7:]
                    tokens += kind == "token"
                    done = done or kind == "done"
                    if kind == "error":
                        result.errors.append("generate: an error event")
        if not done:
            result.errors.append(f"generate: the stream ended after {tokens} tokens without its done event")
    except Exception as error:
        result.errors.append(f"generate: {type(error).__name__}: {error}")
    result.tokens += tokens
    result.latencies["generate"].append(time.perf_counter() - started)


async def _load(base: str, predict_url: str, predict_body: dict, predicts: int, generate_url: str, generate_body: dict,
                streams: int, timeout_s: float) -> Result:  # fmt: skip
    import httpx2

    result = Result(latencies={"predict": [], "generate": []})
    limits = httpx2.Limits(max_connections=predicts + streams, max_keepalive_connections=0)
    async with httpx2.AsyncClient(base_url=base, timeout=timeout_s, limits=limits) as client:
        for kind, jobs in (("predict", [_predict(client, predict_url, predict_body, result) for _ in range(predicts)]),
                           ("generate", [_stream(client, generate_url, {**generate_body, "seed": i}, result) for i in range(streams)])):  # fmt: skip
            started = time.perf_counter()
            await asyncio.wait_for(asyncio.gather(*jobs), timeout_s)
            result.wall[kind] = time.perf_counter() - started
    return result


def load(base: str, predict_run: str, predict_body: dict, generate_run: str, generate_body: dict, predicts: int = 200,
         streams: int = 20, timeout_s: float = 120.0) -> Result:  # fmt: skip
    """All ``predicts`` requests at once, then all ``streams`` at once, against the server at ``base``."""
    return asyncio.run(_load(base, f"/api/{predict_run}/predict", predict_body, predicts, f"/api/{generate_run}/generate",
                             generate_body, streams, timeout_s))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("predict_run")
    parser.add_argument("generate_run")
    parser.add_argument("--predicts", type=int, default=200)
    parser.add_argument("--streams", type=int, default=20)
    parser.add_argument("--length", type=int, default=200, help="tokens per stream")
    args = parser.parse_args(argv)

    import torch

    import rnnkit.serve as serving

    torch.set_num_threads(1)
    runs = serving.load_runs([args.predict_run, args.generate_run])
    predict, generate = runs.values()
    with running(serving.create_app(runs)) as base:
        result = load(base, predict.name, predict.example(), generate.name, {**generate.example(), "length": args.length},
                      args.predicts, args.streams)  # fmt: skip
    print(json.dumps(result.summary(), indent=2))
    for error in result.errors[:10]:
        print("error:", error, file=sys.stderr)
    return 1 if result.errors else 0


if __name__ == "__main__":
    sys.exit(main())
