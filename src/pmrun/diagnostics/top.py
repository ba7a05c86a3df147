"""``pmrun top``: the status screen, sorted by RSS, refreshed until q or Ctrl-C.

Drawn with rich's ``Live`` on the terminal's alternate screen (like ``top``), so quitting
gives the terminal back as it was. Keys are read from stdin in cbreak mode (no Enter
needed; Ctrl-C still interrupts); the terminal's mode and screen are restored on every way
out: q, Ctrl-C, SIGTERM, SIGHUP.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import termios
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..errors import PmrunError
from . import status as status_mod

QUIT_KEYS = frozenset("qQ")


class _Stop(Exception):
    """SIGTERM or SIGHUP arrived: end like q."""


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """SIGTERM and SIGHUP end the loop as q does, so the terminal is restored."""

    def handler(signum: int, frame: Any) -> None:
        raise _Stop(signum)

    saved = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in saved.items():
            signal.signal(sig, old)


@contextmanager
def cbreak(fd: int | None) -> Iterator[None]:
    """Put the terminal ``fd`` in cbreak mode for the block (nothing to do for None)."""
    if fd is None:
        yield
        return
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSAFLUSH, saved)


def wait_for_key(fd: int | None, timeout_s: float) -> str:
    """Keys typed within ``timeout_s`` (``""`` if none); just sleeps without a terminal."""
    if fd is None:
        time.sleep(timeout_s)
        return ""
    ready, _, _ = select.select([fd], [], [], timeout_s)
    if not ready:
        return ""
    data = os.read(fd, 64)
    if not data:  # the terminal went away: treat as quit
        return "q"
    return data.decode(errors="replace")


def frame(fetch: Callable[[], status_mod.Status], interval_s: float) -> Any:
    """One screen: the status sorted by RSS and a footer; a failed fetch is shown, not raised."""
    from rich.console import Group
    from rich.text import Text

    try:
        body = status_mod.render(fetch(), sort_by_rss=True)
    except PmrunError as e:
        body = Text(f"error: {e}", style="red")
    stamp = time.strftime("%H:%M:%S")
    footer = Text(
        f"{stamp}  refreshed every {interval_s:g}s, sorted by RSS  ·  q: quit", style="dim"
    )
    return Group(body, Text(""), footer)


def run_top(
    fetch: Callable[[], status_mod.Status],
    *,
    interval_s: float = 1.0,
    iterations: int | None = None,
    console: Any = None,
    stdin_fd: int | None = None,
) -> int:
    """Show :func:`frame` every ``interval_s`` until q, Ctrl-C or ``iterations`` frames.

    Returns the exit status (0). ``stdin_fd`` None means: stdin if it is a terminal.
    """
    from rich.console import Console
    from rich.live import Live

    if console is None:
        console = Console()
    if stdin_fd is None and sys.stdin.isatty():
        stdin_fd = sys.stdin.fileno()
    shown = 0
    try:
        with (
            stop_on_signals(),
            cbreak(stdin_fd),
            Live(
                frame(fetch, interval_s),
                console=console,
                screen=console.is_terminal,
                auto_refresh=False,
                transient=False,
            ) as live,
        ):
            shown = 1
            while iterations is None or shown < iterations:
                keys = wait_for_key(stdin_fd, interval_s)
                if QUIT_KEYS & set(keys):
                    break
                live.update(frame(fetch, interval_s), refresh=True)
                shown += 1
    except (KeyboardInterrupt, _Stop):
        pass
    return 0
