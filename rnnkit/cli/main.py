"""The ``rnnkit`` command: one entry point, one module per subcommand.

Each subcommand module defines ``register(subparsers)``, which adds its parser
and sets ``handler`` to a function taking the parsed arguments and returning an
exit code.
"""

from __future__ import annotations

import argparse
import sys

from rnnkit import __version__

SUBCOMMANDS = [
    "rnnkit.cli.train", "rnnkit.cli.eval", "rnnkit.cli.predict", "rnnkit.cli.generate", "rnnkit.cli.demo",
    "rnnkit.cli.diagnose",
    "rnnkit.cli.serve", "rnnkit.cli.explain", "rnnkit.cli.export",
]  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="rnnkit", description="Recurrent neural networks: train, evaluate, diagnose.")
    parser.add_argument("--version", action="version", version=f"rnnkit {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in SUBCOMMANDS:
        importlib.import_module(module).register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.handler(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
