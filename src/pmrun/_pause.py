"""Pause before kill, the launcher's side: freeze and thaw the agent's own tree.

The coordinator only asks (``pause``/``resume`` on the launcher's connection); the launcher,
which owns the tree and its cgroup, does it, so a coordinator killed while agents are
paused cannot leave them frozen: the link thread turns a dropped connection into a
resume. How a tree is frozen depends on the backend:

- cgroup v1: the agent's group in the freezer hierarchy (``freezer.state``);
- cgroup v2: ``cgroup.freeze``;
- sampling (or v1 without a freezer): SIGSTOP to every process of the tree, walked again
  until no new process appears (one may fork while the others are being stopped); SIGCONT
  to thaw. A process the user stopped on purpose is continued too.

Orders arrive on the link thread and are applied on the launcher's main thread (the one
that samples and signals), in :meth:`PauseControl.apply`.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import _thread
import os
import time

from .sizes import format_size

TYPE_CHECKING = False  # the launch path avoids importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    from .backends import Backend

_SIGSTOP_ROUNDS = 100  # walks of the tree while it forks; each finds fewer new processes


def freeze_method(backend: Backend) -> str:
    """How this backend's tree is frozen: ``freezer``, ``cgroup.freeze`` or ``sigstop``."""
    group = getattr(backend, "group", None)
    if group is not None:
        if getattr(group, "version", 0) == 2:
            return "cgroup.freeze"
        if getattr(group, "freezer_dir", None):
            return "freezer"
    return "sigstop"


def _write(path: str, text: str) -> None:
    # Only a cgroup backend freezes through files, and it has imported pmrun.cgroups already.
    from .cgroups._group import write_file

    write_file(path, text)


def _sigstop_tree(backend: Backend) -> int:
    stopped: set[int] = set()
    for _ in range(_SIGSTOP_ROUNDS):
        new = [p for p in backend.pids() if p not in stopped]
        if not new:
            break
        backend.signal_all(signal.SIGSTOP)
        stopped.update(new)
    return len(stopped)


def freeze(backend: Backend, method: str) -> None:
    """Stop every process of the tree; they keep their memory and lose no work."""
    group: Any = getattr(backend, "group", None)
    if method == "freezer":
        _write(os.path.join(group.freezer_dir, "freezer.state"), "FROZEN")
    elif method == "cgroup.freeze":
        _write(os.path.join(group.memory_dir, "cgroup.freeze"), "1")
    else:
        _sigstop_tree(backend)


def thaw(backend: Backend, method: str) -> None:
    """Let every process of the tree run again."""
    group: Any = getattr(backend, "group", None)
    try:
        if method == "freezer":
            _write(os.path.join(group.freezer_dir, "freezer.state"), "THAWED")
        elif method == "cgroup.freeze":
            _write(os.path.join(group.memory_dir, "cgroup.freeze"), "0")
        else:
            backend.signal_all(signal.SIGCONT)
    except FileNotFoundError:  # the group is gone: nothing is left frozen in it
        pass


class PauseControl:
    """The pause state of one agent: orders in from the link thread, applied by the main one.

    ``wake()`` interrupts the main thread's wait so that an order is applied at once.
    """

    def __init__(self, wake: Callable[[], None]) -> None:
        self._wake = wake
        self._lock = _thread.allocate_lock()
        self._want: tuple[bool, dict[str, Any]] | None = None  # latest order not yet applied
        self._backend: Backend | None = None
        self._method = "sigstop"
        self._say: Callable[[str], None] = lambda _t: None
        self._event: Callable[..., None] = lambda *_a, **_k: None
        self._label = ""
        self.paused_at: float | None = None  # monotonic, while paused
        self.pauses = 0
        self.paused_total_s = 0.0

    @property
    def state(self) -> str:
        """What the launcher reports to the coordinator: ``paused`` or ``running``."""
        return "paused" if self.paused_at is not None else "running"

    def bind(
        self,
        backend: Backend,
        say: Callable[[str], None],
        event: Callable[..., None],
        label: str,
    ) -> None:
        """Called once the tree runs: orders can be applied from now on."""
        self._backend = backend
        self._method = freeze_method(backend)
        self._say, self._event, self._label = say, event, label

    def order(self, pause: bool, detail: dict[str, Any]) -> None:
        """From the link thread: pause (True) or resume (False) as soon as possible."""
        with self._lock:
            self._want = (pause, dict(detail))
        self._wake()

    def apply(self) -> None:
        """On the main thread: carry out the latest order, if any."""
        if self._backend is None:
            return
        with self._lock:
            want, self._want = self._want, None
        if want is None:
            return
        pause, detail = want
        if pause and self.paused_at is None:
            self._pause(detail)
        elif not pause and self.paused_at is not None:
            self._resume(str(detail.get("why") or "headroom"), detail)

    def release(self, why: str) -> None:
        """Thaw now, whatever was ordered (the tree is about to be stopped, or pmrun exits)."""
        with self._lock:
            self._want = None
        if self.paused_at is not None:
            self._resume(why, {})

    def _pause(self, detail: dict[str, Any]) -> None:
        assert self._backend is not None
        t0 = time.monotonic()
        try:
            freeze(self._backend, self._method)
        except OSError as e:
            self._say(f"warning: could not pause {self._label}: {e.strerror}")
            return
        self.paused_at = time.monotonic()
        self.pauses += 1
        applied_ms = (self.paused_at - t0) * 1000
        used, limit = _figures(detail)
        where = f": {format_size(used)} of {format_size(limit)} in use" if limit else ""
        max_pause = detail.get("max_pause_s")
        bound = f" (at most {max_pause:g}s, then it may be stopped)" if max_pause else ""
        self._say(f"paused {self._label} for memory{where}; it resumes when memory frees up{bound}")
        self._event(
            "pause", method=self._method, applied_ms=round(applied_ms, 3),
            reason=detail.get("reason"), **{k: v for k, v in detail.items() if k != "reason"},
        )  # fmt: skip

    def _resume(self, why: str, detail: dict[str, Any]) -> None:
        assert self._backend is not None and self.paused_at is not None
        thaw(self._backend, self._method)
        paused_s = time.monotonic() - self.paused_at
        self.paused_at = None
        self.paused_total_s += paused_s
        self._say(f"resumed {self._label} after {paused_s:.1f}s ({why})")
        self._event("resume", method=self._method, paused_s=round(paused_s, 3), why=why)

    def summary(self) -> dict[str, Any]:
        """For the exit report."""
        return {"pauses": self.pauses, "paused_s": round(self.paused_total_s, 3)}


def _figures(detail: dict[str, Any]) -> tuple[int, int]:
    """(used, limit) of the signal the pause was decided on."""
    if detail.get("signal") == "pool":
        return int(detail.get("pool_used_bytes") or 0), int(detail.get("pool_limit_bytes") or 0)
    return int(detail.get("system_used_bytes") or 0), int(detail.get("system_threshold_bytes") or 0)
