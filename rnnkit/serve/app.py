"""The web app: a JSON API per served run, the playground page, and the limits that keep one request from hurting the rest.

Routes (``RUN`` is a served run's folder name; no other name reaches a handler,
so no request can name a path)::

    GET  /                      the playground page (static files shipped in the package; nothing from the network)
    GET  /api/runs              the served runs: task, kind, endpoint, a request body that works
    POST /api/RUN/predict       sentiment, co2, stocks, translation, captioning, speech: one JSON answer
    POST /api/RUN/generate      charlm, music: server-sent events, ``token`` per token then ``done`` (or ``error``)
    GET  /openapi.json          the OpenAPI schema, one request model per run

Failures, each a JSON ``{"detail": ...}``: a body over ``Limits.max_body_bytes``
is a 413 before it is read; malformed JSON, a wrong type, an unknown field or a
value out of its limits is a 422 whose ``message`` names the field; an input
the task cannot use (an unknown prime character, a WAV that is not 16-bit
mono) is a 422 with the task's own message; a predict slower than
``Limits.request_timeout_s`` is a 504, and a stream past it ends with an
``error`` event. Any other exception is a 500 for that request only.
"""

# no `from __future__ import annotations`: FastAPI reads each route's body model from its live annotation
import json
import logging
import time
from pathlib import Path

import anyio
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from rnnkit import __version__
from rnnkit.serve.runs import ServedRun
from rnnkit.serve.schemas import Limits

STATIC = Path(__file__).parent / "static"
log = logging.getLogger("rnnkit.serve")
SECURITY_HEADERS = {  # the page may load only what this server serves
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; media-src 'self' data: blob:; object-src 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
}


def create_app(runs: dict[str, ServedRun], limits: Limits = Limits()) -> FastAPI:
    """The app serving ``runs`` (from :func:`rnnkit.serve.runs.load_runs`), each loaded once."""
    app = FastAPI(title="rnnkit serve", version=__version__, docs_url=None, redoc_url=None,  # the docs pages load from a CDN
                  description="JSON API of trained rnnkit runs; the playground page is at /.",
                  max_body_size=limits.max_body_bytes)  # a 413 from the Content-Length, or as a chunked body streams in; fmt: skip
    add_error_handlers(app, limits)
    app.add_middleware(SecurityHeaders)

    @app.get("/api/runs", summary="the served runs")
    def list_runs() -> list[dict]:
        return [run.describe() for run in runs.values()]

    for run in runs.values():
        if run.kind == "predict":
            app.post(f"/api/{run.name}/predict", summary=f"{run.name}: {run.task.summary}", tags=[run.name])(predict_route(run, limits))
        else:
            app.post(f"/api/{run.name}/generate", summary=f"{run.name}: {run.task.summary} (server-sent events)",
                     tags=[run.name], response_class=StreamingResponse)(generate_route(run, limits))  # fmt: skip

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    return app


def predict_route(run: ServedRun, limits: Limits):
    async def predict(body: run.request) -> dict:  # type: ignore[name-defined]
        try:
            with anyio.fail_after(limits.request_timeout_s):
                # abandoned on timeout: the thread finishes its (bounded) work, the client is answered now
                return await anyio.to_thread.run_sync(run.predict, body, abandon_on_cancel=True)
        except TimeoutError:
            return JSONResponse({"detail": f"the request took longer than {limits.request_timeout_s} s, the limit"}, 504)

    return predict


def generate_route(run: ServedRun, limits: Limits):
    async def generate(body: run.request):  # type: ignore[name-defined]
        tokens = await anyio.to_thread.run_sync(run.start, body)  # a bad prime is a 422 here, before the stream starts
        return StreamingResponse(stream(run, body, tokens, limits.request_timeout_s), media_type="text/event-stream",
                                 headers={"Cache-Control": "no-cache"})  # fmt: skip

    return generate


async def stream(run: ServedRun, body, tokens, timeout_s: float):
    """``token`` events as the worker thread draws them, then ``done``; a timeout or a failure ends it with ``error``."""
    deadline, drawn = time.monotonic() + timeout_s, []
    try:
        while True:
            if time.monotonic() > deadline:
                yield event("error", {"detail": f"the stream took longer than {timeout_s} s, the limit; {len(drawn)} tokens were sent"})
                return
            token = await anyio.to_thread.run_sync(next, tokens, None)
            if token is None:
                break
            drawn.append(token)
            yield event("token", {"token": token})
        yield event("done", await anyio.to_thread.run_sync(run.finish, body, drawn))
    except Exception as error:  # the response has started: report in the stream, not as a status
        log.exception("generation on run %s failed", run.name)
        yield event("error", {"detail": f"generation failed: {type(error).__name__}"})


def event(kind: str, data: dict) -> bytes:
    return f"event: {kind}\ndata: {json.dumps(data)}\n\n".encode()


# -- errors ---------------------------------------------------------------------------------


def add_error_handlers(app: FastAPI, limits: Limits) -> None:
    @app.exception_handler(StarletteHTTPException)
    async def refused(request: Request, error: StarletteHTTPException) -> JSONResponse:
        detail = error.detail
        if error.status_code == 413:  # Starlette's own words do not say what the limit is
            detail = f"request body: expected at most {limits.max_body_bytes} bytes, got more"
        return JSONResponse({"detail": detail}, error.status_code, headers=error.headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = error.errors()
        return JSONResponse({"message": "; ".join(map(describe_problem, problems)), "detail": _jsonable(problems)}, 422)

    @app.exception_handler(ValueError)  # DataError, CheckpointError and the library's argument checks
    async def unusable(request: Request, error: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(error)}, 422)

    @app.exception_handler(Exception)
    async def failed(request: Request, error: Exception) -> JSONResponse:
        log.exception("%s %s failed", request.method, request.url.path)
        return JSONResponse({"detail": f"the server failed on this request ({type(error).__name__}); it still serves others"}, 500)


def describe_problem(problem: dict) -> str:
    """``"temperature: Input should be greater than 0 (got -1)"``: the field first, as the project's errors read."""
    where = [str(part) for part in problem.get("loc", ()) if part != "body"]
    if problem.get("type") == "json_invalid":
        return f"body: expected valid JSON, got an error at character {where[-1] if where else '?'} ({problem.get('msg')})"
    field = ".".join(where) or "body"
    got = f" (got {problem['input']!r})" if "input" in problem and problem.get("type") != "missing" else ""
    return f"{field}: {problem.get('msg')}{got[:200]}"


def _jsonable(problems: list[dict]) -> list[dict]:
    return [{k: v for k, v in p.items() if k in ("type", "loc", "msg")} for p in problems]


class SecurityHeaders:
    """Adds :data:`SECURITY_HEADERS` to every response (pure ASGI: streams pass through untouched)."""

    HEADERS = [(k.lower().encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]

    def __init__(self, app) -> None:
        self.app = app

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *self.HEADERS]}
            await send(message)

        await self.app(scope, receive, with_headers)
