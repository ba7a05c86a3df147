"""Wait before start, the launcher's side: ask the coordinator before running the command.

One connect and one round trip when a coordinator answers and the agent fits (the usual
case); nothing at all when none answers (the link thread then starts one on demand, and
there is nobody to wait for). A waiting launcher prints one line and blocks until the
coordinator says start, ``--wait-timeout`` passes (then it starts anyway or exits 75, as
``--wait-expired`` says) or the coordinator goes away (then it starts).
"""

from __future__ import annotations

import _socket  # the C module: socket.py would import enum and selectors (~4 ms)
import os
import select
import struct
import time

from .coordinator import protocol as p
from .sizes import format_size

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

EX_TEMPFAIL = 75  # sysexits.h: try again later (what --wait-expired exit returns)
ANSWER_TIMEOUT_S = 2.0  # a coordinator that does not answer in time is not waited for
_PEERCRED = struct.Struct("3i")


class AdmitSettings:
    """How a launcher waits before start."""

    __slots__ = ("expect", "timeout_s", "on_timeout")

    def __init__(
        self,
        expect: int | None = None,  # --expect bytes; None = the coordinator estimates
        timeout_s: float | None = None,  # --wait-timeout; None = no bound
        on_timeout: str = "start",  # --wait-expired: "start" or "exit"
    ) -> None:
        self.expect = expect
        self.timeout_s = timeout_s
        self.on_timeout = on_timeout


def _connect(path: str) -> _socket.socket | None:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(0.5)
        sock.connect(path)
        _pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, _PEERCRED.size)
        )
        if uid not in (os.geteuid(), 0):
            sock.close()
            return None
    except OSError:
        sock.close()
        return None
    return sock


def _answers(sock: _socket.socket, deadline: float | None) -> Iterator[p.Admission | None]:
    """Yield each ``admission`` until the deadline (then None) or the connection ends."""
    buf = p.FrameBuffer(p.MAX_REPLY_FRAME)
    while True:
        left = None if deadline is None else deadline - time.monotonic()
        if left is not None and left <= 0:
            yield None
            return
        r, _, _ = select.select([sock], [], [], left)
        if not r:
            continue
        data = sock.recv(1 << 16)
        if not data:
            return
        for frame in buf.feed(data):
            msg = p.decode(frame, p.MAX_REPLY_FRAME)
            if isinstance(msg, p.Admission):
                yield msg


def wait_turn(
    socket_path: str,
    *,
    agent_id: str,
    name: str,
    priority: int,
    warn_rss: int,
    max_rss: int,
    settings: AdmitSettings,
    say: Callable[[str], None],
) -> int | None:
    """None: start the command now. An int: exit with it instead (``--wait-expired exit``)."""
    sock = _connect(socket_path)
    if sock is None:
        return None
    try:
        msg = p.Admit(id=1, agent_id=agent_id, name=name, priority=priority,
                      expect=settings.expect, warn_rss=warn_rss, max_rss=max_rss)  # fmt: skip
        sock.settimeout(ANSWER_TIMEOUT_S)
        sock.sendall(p.encode(msg))
        sock.settimeout(None)
        first = next(_answers(sock, time.monotonic() + ANSWER_TIMEOUT_S), None)
        if first is None or first.start:
            return None
        started = time.monotonic()
        bound = "" if settings.timeout_s is None else f" (at most {settings.timeout_s:g}s)"
        size = (
            f"this agent expects {format_size(first.expect_bytes)}"
            if first.expect_bytes
            else "near the warning level"
        )
        say(
            f"waiting for memory: {format_size(first.used_bytes)} of"
            f" {format_size(first.limit_bytes)} in use, {first.ahead} ahead, {size}{bound};"
            " --no-wait to start anyway"
        )
        deadline = None if settings.timeout_s is None else started + settings.timeout_s
        for answer in _answers(sock, deadline):
            if answer is None:  # --wait-timeout
                if settings.on_timeout == "exit":
                    say(f"gave up waiting for memory after {settings.timeout_s:g}s")
                    return EX_TEMPFAIL
                say(f"starting after {settings.timeout_s:g}s of waiting, memory still short")
                return None
            if answer.start:
                return None
        return None  # the coordinator went away: nobody to wait for
    except (OSError, p.ProtocolError):
        return None
    finally:
        sock.close()
