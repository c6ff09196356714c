"""Ctrl-C (SIGINT) and SIGTERM: one line and exit code 130 or 143, never a traceback.

Outside training a signal stops the command at once: the handler raises
:class:`Interrupted` wherever Python is (reading data, building the C++
kernel, generating text), and the command's error handler prints one line.
While the trainer runs, the first signal only asks it to stop at the next
safe point (after the current update), where it writes its checkpoint; a
second signal stops at once. Checkpoint writes are atomic (a temporary file
renamed over the old one), so stopping at once never leaves a half-written
checkpoint in place of the last good one.
"""

from __future__ import annotations

import signal
import sys
import threading

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Interrupted(KeyboardInterrupt):
    """The command was stopped by a signal; ``exit_code`` is 128 + its number (130 for SIGINT, 143 for SIGTERM).

    A KeyboardInterrupt, so that no ``except Exception`` on the way swallows it.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = 128 + signum


class SignalGuard:
    """While entered, SIGINT and SIGTERM raise :class:`Interrupted`, or, after :meth:`defer`, call ``on_first`` once."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._on_first = None
        self._previous: dict = {}

    def __enter__(self) -> SignalGuard:
        if threading.current_thread() is threading.main_thread():  # Python only lets the main thread set handlers
            self._previous = {signum: signal.signal(signum, self._handle) for signum in SIGNALS}
        return self

    def __exit__(self, *exc_info) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}

    def _handle(self, signum: int, frame) -> None:
        if self._on_first is not None and self.received is None:
            self.received = signum
            self._on_first(signum)
            return
        raise Interrupted(signum)

    def defer(self, on_first) -> None:
        """From now on the first signal calls ``on_first(signum)`` and is kept in ``received``; a second one raises.

        ``defer(None)`` goes back to raising at once.
        """
        self._on_first = on_first


def exit_code(interruption: KeyboardInterrupt) -> int:
    """130 for Ctrl-C (also a plain KeyboardInterrupt, raised where no guard was installed), 143 for SIGTERM."""
    return getattr(interruption, "exit_code", 128 + signal.SIGINT)


def name(interruption: KeyboardInterrupt) -> str:
    return getattr(interruption, "name", "SIGINT")


def run_guarded(command: str, body) -> int:
    """``body(guard)`` under a :class:`SignalGuard` ``guard``: SIGINT or SIGTERM ends it with one line on stderr and
    exit code 130 or 143 (every command's handling, :func:`rnnkit.cli._shared.reports_errors` included)."""
    try:
        with SignalGuard() as guard:
            return body(guard)
    except KeyboardInterrupt as interruption:
        print(f"rnnkit {command}: interrupted by {name(interruption)}; stopped", file=sys.stderr)
        return exit_code(interruption)
