"""What the application subcommands share: common options, and errors reported without a traceback.

Exit codes: 0 success; 2 a usage error (argparse's own, an unknown override
key, a value of the wrong type); 1 any other error a user can fix (missing
data, a bad file, a run folder that is not one).
"""

from __future__ import annotations

import argparse
import functools
import sys

import torch

from rnnkit.config import ConfigError

EXIT_USAGE, EXIT_ERROR = 2, 1


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="CPU threads for torch (default 1: small RNNs gain little from more, and lose much when cores are shared)")  # fmt: skip


def set_threads(args) -> None:
    if getattr(args, "threads", None):
        torch.set_num_threads(args.threads)


def open_run(args, capability: str | None = None, expected: str = "", hint: str = ""):
    """Set the threads, read RUN's task and config, and import the task module.

    With ``capability`` (a function name such as ``"predict"``), a task without it
    is refused: ``expected`` says which runs have it and ``hint`` what to use instead.
    """
    from rnnkit import tasks

    set_threads(args)
    task, config = tasks.load_run(args.run)
    module = task.load()
    if capability is not None and not hasattr(module, capability):
        raise tasks.DataError(f"run {args.run}: expected {expected}, got {task.name}; {hint}")
    return task, config, module


def reports_errors(command: str):
    """Decorate a handler: ConfigError exits 2, other ValueErrors (DataError, CheckpointError) exit 1, with one line each."""

    def decorate(handler):
        @functools.wraps(handler)
        def wrapped(args) -> int:
            try:
                return handler(args)
            except ConfigError as error:
                print(f"rnnkit {command}: error: {error}", file=sys.stderr)
                return EXIT_USAGE
            except ValueError as error:
                print(f"rnnkit {command}: error: {error}", file=sys.stderr)
                return EXIT_ERROR

        return wrapped

    return decorate


def accept_positionals_anywhere(parser: argparse.ArgumentParser) -> None:
    """Let positionals follow options: ``train TASK --out RUN key=value``.

    argparse alone takes a run of positionals at once (TASK with no overrides),
    then rejects ``key=value``; its intermixed parsing accepts them anywhere. That
    parse calls ``parse_known_args`` itself, so the plain method serves those calls.
    """
    plain = parser.parse_known_args

    def parse(args=None, namespace=None):
        parser.parse_known_args = plain
        try:
            return parser.parse_known_intermixed_args(args, namespace)
        finally:
            parser.parse_known_args = parse

    parser.parse_known_args = parse


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)
