"""How a bench starts and ends: progress on stderr, tables on stdout, signals that unwind,
and one exit-status convention (0 targets met, 1 not, 2 set-up failed, 130 Ctrl-C)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from typing import TypeVar

Args = TypeVar("Args")


class BenchError(Exception):
    """Set-up or a process failed; the message says which."""


def note(message: str) -> None:
    """Progress goes to stderr; the tables go to stdout."""
    print(message, file=sys.stderr, flush=True)


def _terminate(signum: int, _frame: object) -> None:
    raise SystemExit(f"stopped by {signal.Signals(signum).name}")


def install_signal_handlers() -> None:
    """SIGTERM and SIGHUP unwind like Ctrl-C does, so that every ``finally`` runs."""
    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGHUP, _terminate)
    # Even when started with SIGINT ignored (as a background job of a script).
    signal.signal(signal.SIGINT, signal.default_int_handler)


def run_main(
    name: str,
    parse_args: Callable[[], Args],
    run: Callable[[Args], bool],
    errors: tuple[type[BaseException], ...] = (BenchError,),
    on_interrupt: str = "everything it started is stopped",
) -> None:
    """Exit 0 when the targets are met, 1 when not, 2 on a set-up error, 130 on Ctrl-C."""
    install_signal_handlers()
    args = parse_args()
    try:
        ok = run(args)
    except errors as exc:
        print(f"bench/{name}: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print(f"bench/{name}: interrupted; {on_interrupt}", file=sys.stderr)
        sys.exit(130)
    sys.exit(0 if ok else 1)
