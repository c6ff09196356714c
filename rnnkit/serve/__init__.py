"""``rnnkit serve``: a local playground page and JSON API for trained runs (FastAPI on uvicorn).

An application, like :mod:`rnnkit.cli`: it imports :mod:`rnnkit.tasks`, and
nothing in the library imports it. Its dependencies are the ``serve`` extra
(``pip install rnnkit[serve]``). See docs/serving.md and docs/design/serving.md.
"""

from __future__ import annotations

from rnnkit.serve.runs import ServedRun, load_runs
from rnnkit.serve.schemas import Limits


def create_app(runs, limits: Limits = Limits()):
    """The FastAPI app for ``runs`` (run folders, or :func:`load_runs`'s mapping)."""
    from rnnkit.serve.app import create_app as build

    if not isinstance(runs, dict):
        runs = load_runs(runs, limits)
    return build(runs, limits)


def serve(app, host: str = "127.0.0.1", port: int = 8000, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn until interrupted. Loopback only unless ``host`` says otherwise."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)


__all__ = ["Limits", "ServedRun", "create_app", "load_runs", "serve"]
