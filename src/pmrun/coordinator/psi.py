"""PSI triggers: the kernel wakes the coordinator the moment memory stalls, not at a tick.

A trigger is a line written to ``/proc/pressure/memory`` (or a cgroup v2 group's
``memory.pressure``): ``some 150000 1000000`` asks for POLLPRI on that fd once tasks
have stalled on memory for 150 ms within any 1 s window. Unprivileged writers may only
use windows that are multiples of 2 s (Linux 6.5+); root may use 500 ms-10 s. The fd
must stay open: closing it removes the trigger.

:class:`Watch` holds the triggers on ``<proc>/pressure/memory`` and a daemon thread blocked in poll(2); each event
calls ``on_event`` (from that thread: hand it to the event loop thread-safely).
"""

from __future__ import annotations

import _thread
import os
import select

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

# 100 ms of "some" stall in a 500 ms window, the smallest window root may ask for: the
# coordinator hears of memory pressure within the window rather than at its next tick.
DEFAULT_TRIGGERS = ("some 100000 500000",)
# Unprivileged (Linux 6.5+: windows in whole multiples of 2 s).
UNPRIVILEGED_TRIGGERS = ("some 200000 2000000",)


def open_trigger(path: str, trigger: str) -> int:
    """Register ``trigger`` on ``path``; returns the fd to poll for POLLPRI. Raises OSError."""
    fd = os.open(path, os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.write(fd, trigger.encode() + b"\0")
    except OSError:
        os.close(fd)
        raise
    return fd


class Watch:
    """Triggers on one pressure file and the thread that waits on them."""

    def __init__(self, on_event: Callable[[], object], path: str = "/proc/pressure/memory") -> None:
        self.path = path  # /proc/pressure/memory, or a v2 group's memory.pressure
        self.fds: list[int] = []
        self.error: str | None = None  # why no trigger could be set, for status
        self._stop_w = -1
        self._on_event = on_event
        for triggers in (DEFAULT_TRIGGERS, UNPRIVILEGED_TRIGGERS):
            try:
                self.fds = [open_trigger(path, t) for t in triggers]
                self.triggers = triggers
                break
            except OSError as e:
                self.error = f"cannot set a PSI trigger on {path}: {e.strerror}"
        if self.fds:
            self.error = None
            self._stop_r, self._stop_w = os.pipe2(os.O_CLOEXEC)
            self._poll = select.poll()
            self._poll.register(self._stop_r, select.POLLIN)
            for fd in self.fds:
                self._poll.register(fd, select.POLLPRI)
            _thread.start_new_thread(self._run, ())

    @property
    def active(self) -> bool:
        return bool(self.fds)

    def _run(self) -> None:
        try:
            while True:
                events = self._poll.poll()
                if any(fd == self._stop_r for fd, _ in events):
                    break
                if any(ev & select.POLLPRI for _, ev in events):
                    self._on_event()
                if any(ev & (select.POLLERR | select.POLLNVAL) for _, ev in events):
                    break  # the group went away (a removed cgroup's memory.pressure)
        except Exception:  # never a traceback from a helper thread; the tick still runs
            pass
        finally:
            for fd in (*self.fds, self._stop_r):
                os.close(fd)
            self.fds = []

    def close(self) -> None:
        """Remove the triggers (the thread closes them on its way out)."""
        stop_w, self._stop_w = self._stop_w, -1
        if stop_w >= 0:
            try:
                os.write(stop_w, b"x")  # a pipe's buffer always takes one byte
            except OSError:  # the thread ended already (EPIPE)
                pass
            os.close(stop_w)
