"""One-shot requests to a running coordinator, for the CLI and the diagnostics.

Each opens a connection, sends one request, waits for its answer and closes. Nobody
serving the socket raises :class:`NotRunning`; a coordinator that runs but cannot be
reached (permission denied, it does not accept or does not answer, its socket is gone
while it holds the lock) raises :class:`~pmrun.errors.CoordinatorUnavailable` saying
which; both are the CLI's exit status 1. A refusal raises
:class:`~pmrun.errors.PmrunError` with the coordinator's own message.
"""

from __future__ import annotations

import errno
import itertools
import socket
import time
from typing import Any

from ..errors import CoordinatorUnavailable, PmrunError, SocketSecurityError
from . import protocol as p
from .endpoint import lock_held, lock_holder
from .link import connect
from .paths import lock_path, resolve_socket_path, shown

_ids = itertools.count(1)
# A coordinator whose socket a /tmp cleaner deleted binds it again within its
# socket_check_s (1 s): while it holds the lock, a query waits this long for it.
REBIND_WAIT_S = 3.0


class NotRunning(CoordinatorUnavailable):
    """Nobody serves the socket: no socket file, or a stale one, and nobody holds the lock."""


def _connect(path: str, timeout_s: float) -> socket.socket:
    """A connection to the coordinator on ``path``, or an error saying what is wrong."""
    deadline = time.monotonic() + min(timeout_s, REBIND_WAIT_S)
    while True:
        try:
            return connect(path, timeout_s=min(timeout_s, 2.0))
        except SocketSecurityError:
            raise
        except (TimeoutError, BlockingIOError):
            raise CoordinatorUnavailable(
                f"the coordinator on {shown(path)} does not accept connections (hung or overloaded)"
            ) from None
        except OSError as e:
            code = e.errno
            if code in (errno.EACCES, errno.EPERM):
                raise CoordinatorUnavailable(
                    f"permission denied on {shown(path)}: the socket or its directory is not yours "
                    "(choose your own with --socket or PMRUN_SOCKET)"
                ) from None
            if code not in (errno.ENOENT, errno.ECONNREFUSED):
                raise CoordinatorUnavailable(
                    f"cannot reach {shown(path)}: {e.strerror or e}"
                ) from None
            if not lock_held(path):
                raise NotRunning(
                    f"no coordinator answers on {shown(path)} (none runs); start one with "
                    "`pmrun coordinator` or run an agent with `pmrun -- CMD`"
                ) from None
            if time.monotonic() >= deadline:
                pid = lock_holder(path)
                raise CoordinatorUnavailable(
                    f"a coordinator (pid {pid or '?'}) holds {shown(lock_path(path))} but does not "
                    f"serve {shown(path)}: it is starting, or hung"
                ) from None
            time.sleep(0.05)  # its socket was deleted: it binds it again within a second


def request(socket_path: str | None, msg: p.Message, *, timeout_s: float = 5.0) -> p.Message:
    """Send ``msg`` (which carries an ``id``) and return the answer with the same id."""
    path = resolve_socket_path(socket_path)
    sock = _connect(path, timeout_s)
    want = getattr(msg, "id", None)
    deadline = time.monotonic() + timeout_s
    buf = p.FrameBuffer(p.MAX_REPLY_FRAME)
    try:
        sock.sendall(p.encode(msg))
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                data = sock.recv(1 << 16)
            except TimeoutError:
                break
            if not data:
                raise CoordinatorUnavailable(
                    f"the coordinator on {shown(path)} closed the connection"
                )
            for frame in buf.feed(data):
                answer = p.decode(frame, p.MAX_REPLY_FRAME)
                if getattr(answer, "id", None) not in (want, None):
                    continue
                if isinstance(answer, p.Error):
                    raise PmrunError(f"coordinator: {answer.message}")
                return answer
    except OSError as e:
        raise CoordinatorUnavailable(f"lost the coordinator on {shown(path)}: {e}") from None
    finally:
        sock.close()
    raise CoordinatorUnavailable(
        f"the coordinator on {shown(path)} accepted but did not answer in {timeout_s:g} s (hung?)"
    )


def ping(socket_path: str | None = None, *, timeout_s: float = 1.0) -> p.Pong:
    answer = request(socket_path, p.Ping(id=next(_ids)), timeout_s=timeout_s)
    assert isinstance(answer, p.Pong)
    return answer


def status(socket_path: str | None = None, *, timeout_s: float = 2.0) -> dict[str, Any]:
    """Everything ``pmrun status`` shows (see docs/protocol.md, ``status_result``)."""
    answer = request(socket_path, p.Status(id=next(_ids)), timeout_s=timeout_s)
    assert isinstance(answer, p.StatusResult)
    return answer.status


def cleanup(
    socket_path: str | None = None,
    *,
    agent: str | None = None,
    fraction: float | None = None,
    timeout_s: float = 10.0,
) -> p.CleanupResult:
    """Broadcast an eviction now (``pmrun cleanup``) and return what each service freed."""
    msg = p.Cleanup(id=next(_ids), agent=agent, fraction=fraction)
    answer = request(socket_path, msg, timeout_s=timeout_s)
    assert isinstance(answer, p.CleanupResult)
    return answer


def heap(
    socket_path: str | None = None,
    *,
    agent: str | None = None,
    limit: int = 20,
    timeout_s: float = 15.0,
) -> list[dict[str, Any]]:
    """Top object types (and allocation sites, where tracemalloc traces) per service process."""
    answer = request(
        socket_path, p.Heap(id=next(_ids), agent=agent, limit=limit), timeout_s=timeout_s
    )
    assert isinstance(answer, p.HeapResult)
    return answer.results
