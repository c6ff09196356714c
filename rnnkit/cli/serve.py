"""``rnnkit serve RUN [RUN ...]``: a playground page and JSON API for trained runs, on this machine only unless --host says otherwise."""

from __future__ import annotations

from rnnkit.cli import _shared

EPILOG = """examples:
  rnnkit serve runs/demo/sentiment runs/demo/charlm          # then open http://127.0.0.1:8000/
  curl -s localhost:8000/api/sentiment/predict -H 'content-type: application/json' -d '{"text": "This is not a good movie"}'

Each run's name in the API is its folder's name. The API is described at /openapi.json and in docs/serving.md."""


def register(subparsers) -> None:
    parser = subparsers.add_parser("serve", help="a local web playground and JSON API for trained runs",
                                   description=__doc__.split(":", 1)[1].strip(), epilog=EPILOG, formatter_class=_shared.formatter)  # fmt: skip
    parser.add_argument("runs", nargs="+", metavar="RUN", help="run folders written by `rnnkit train`")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    _shared.add_threads(parser)
    parser.set_defaults(handler=handle)


@_shared.reports_errors("serve")
def handle(args) -> int:
    try:
        import rnnkit.serve as serving
    except ImportError as error:
        raise ValueError(f"serve: expected the serve extra (pip install 'rnnkit[serve]'), got an import error: {error}") from None
    if not 0 < args.port < 65536:
        raise _shared.UsageError(f"--port: expected a port from 1 to 65535, got {args.port}")
    _shared.set_threads(args)
    app = serving.create_app(args.runs)
    listener = serving.listen(args.host, args.port)
    print(f"rnnkit serve: {len(args.runs)} run(s) at http://{args.host}:{listener.getsockname()[1]}/ (Ctrl-C stops)", flush=True)
    serving.serve(app, listener)
    return 0
