"""What the application subcommands share: common options, input limits, and errors reported without a traceback.

Exit codes: 0 success; 2 a usage error (argparse's own, an unknown override
key, a value of the wrong type, an argument out of its range, a run folder
that needs --resume or --overwrite); 1 any other error a user can fix
(missing data, a bad file or checkpoint, a run folder that is not one, a
disk that is full, a loss that became NaN); 130 stopped by Ctrl-C (SIGINT),
143 by SIGTERM. Each error is one line on stderr: ``rnnkit COMMAND: error: ...``.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys

import torch

from rnnkit.cli import _signals
from rnnkit.config import ConfigError
from rnnkit.training import NonFiniteLossError

EXIT_USAGE, EXIT_ERROR = 2, 1
# Limits on what a user hands the commands, so that a slip cannot exhaust memory or run without end.
MAX_TEXT_CHARS = 10_000  # predict's TEXT (also from standard input), generate's --prime
MAX_FILE_BYTES = 20 * 2**20  # a file given as TEXT: an image (captioning), a WAV recording (speech)
MAX_GENERATE_LENGTH = 10_000  # generate's --length: characters (charlm) or note events (music)


class UsageError(ValueError):
    """A command line that cannot be carried out as given (exit code 2)."""


def add_threads(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--threads", type=int, default=1, metavar="N",
                        help="CPU threads for torch (default 1: small RNNs gain little from more, and lose much when cores are shared)")  # fmt: skip


def set_threads(args) -> None:
    threads = getattr(args, "threads", None)
    if threads is None:
        return
    if threads < 1:
        raise UsageError(f"--threads: expected a positive number of threads, got {threads}")
    torch.set_num_threads(threads)


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
    """Decorate a handler: errors and signals end it with one line on stderr and the exit codes above.

    ConfigError and UsageError exit 2; other ValueErrors (DataError,
    CheckpointError), OSErrors (WriteError: a full disk) and a NaN loss exit 1;
    SIGINT and SIGTERM, caught by a :class:`~rnnkit.cli._signals.SignalGuard`
    (``args.signals``), exit 130 and 143.
    """

    def decorate(handler):
        @functools.wraps(handler)
        def wrapped(args) -> int:
            def body(guard) -> int:
                args.signals = guard
                return handler(args)

            try:
                return _signals.run_guarded(command, body)
            except (ConfigError, UsageError) as error:
                return fail(command, error, EXIT_USAGE)
            except (ValueError, OSError, NonFiniteLossError) as error:
                return fail(command, error, EXIT_ERROR)

        return wrapped

    return decorate


def fail(command: str, error: Exception, code: int) -> int:
    print(f"rnnkit {command}: error: {error}", file=sys.stderr)
    return code


def check_text(argument: str, text: str) -> str:
    """Refuse empty or whitespace-only text, and text over :data:`MAX_TEXT_CHARS` (a usage error)."""
    if not text.strip():
        raise UsageError(f"{argument}: expected text with something in it, got {text!r}")
    if len(text) > MAX_TEXT_CHARS:
        raise UsageError(f"{argument}: expected at most {MAX_TEXT_CHARS:,} characters, got {len(text):,}")
    return text


def read_stdin(argument: str) -> str:
    """Standard input, read no further than :data:`MAX_TEXT_CHARS` + 1 characters (more is a data error)."""
    from rnnkit.tasks import DataError

    text = sys.stdin.read(MAX_TEXT_CHARS + 1)
    if len(text) > MAX_TEXT_CHARS:
        raise DataError(f"{argument} (standard input): expected at most {MAX_TEXT_CHARS:,} characters, got more")
    if not text.strip():
        raise DataError(f"{argument} (standard input): expected text with something in it, got {text!r}")
    return text


def check_file_size(argument: str, text: str) -> None:
    """A TEXT that names a file (an image, a recording) must be at most :data:`MAX_FILE_BYTES`."""
    from rnnkit.tasks import DataError

    if os.path.isfile(text) and os.path.getsize(text) > MAX_FILE_BYTES:
        raise DataError(f"{argument}: expected a file of at most {MAX_FILE_BYTES // 2**20} MB, got {text} of {os.path.getsize(text):,} bytes")


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
