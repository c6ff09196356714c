"""``rnnkit serve``: a local playground page and JSON API for trained runs (FastAPI on uvicorn).

An application, like :mod:`rnnkit.cli`: it imports :mod:`rnnkit.tasks`, and
nothing in the library imports it. Its dependencies are the ``serve`` extra
(``pip install rnnkit[serve]``). See docs/serving.md and docs/design/serving.md.
"""

from __future__ import annotations

import errno
import socket

from rnnkit.serve.runs import ServedRun, load_runs
from rnnkit.serve.schemas import Limits


def create_app(runs, limits: Limits = Limits()):
    """The FastAPI app for ``runs`` (run folders, or :func:`load_runs`'s mapping)."""
    from rnnkit.serve.app import create_app as build

    if not isinstance(runs, dict):
        runs = load_runs(runs, limits)
    return build(runs, limits)


def listen(host: str = "127.0.0.1", port: int = 8000) -> socket.socket:
    """A socket bound to ``host``:``port``, or one clear error: a port in use, or a host this machine does not have.

    Bound before the server starts, so that the command can say so in one line rather than through uvicorn's log.
    """
    try:
        family, _, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        listener = socket.socket(family, socket.SOCK_STREAM)
    except OSError as error:
        raise ValueError(f"host: expected an address of this machine, got {host!r} ({error})") from None
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        listener.bind(address)
    except OSError as error:
        listener.close()
        if error.errno == errno.EADDRNOTAVAIL:
            raise ValueError(f"host: expected an address of this machine, got {host!r} ({error.strerror})") from None
        raise ValueError(f"port: expected a port free on {host}, got {port} ({error.strerror or error})") from None
    return listener


def serve(app, listener: socket.socket, log_level: str = "info") -> None:
    """Run ``app`` with uvicorn on ``listener`` (see :func:`listen`) until interrupted."""
    import uvicorn

    host, port = listener.getsockname()[:2]
    with listener:
        uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level=log_level, timeout_keep_alive=5)).run(sockets=[listener])


__all__ = ["Limits", "ServedRun", "create_app", "listen", "load_runs", "serve"]
