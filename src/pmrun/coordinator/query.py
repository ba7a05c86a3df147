"""One-shot requests to a running coordinator, for the CLI and the diagnostics.

Each opens a connection, sends one request, waits for its answer and closes. A
coordinator that does not answer raises :class:`~pmrun.errors.CoordinatorUnavailable`
(the CLI's exit status 1); a refusal raises :class:`~pmrun.errors.PmrunError` with the
coordinator's own message.
"""

from __future__ import annotations

import itertools
import time
from typing import Any

from ..errors import CoordinatorUnavailable, PmrunError, SocketSecurityError
from . import protocol as p
from .link import connect
from .paths import resolve_socket_path

_ids = itertools.count(1)


def request(socket_path: str | None, msg: p.Message, *, timeout_s: float = 5.0) -> p.Message:
    """Send ``msg`` (which carries an ``id``) and return the answer with the same id."""
    path = resolve_socket_path(socket_path)
    try:
        sock = connect(path, timeout_s=min(timeout_s, 2.0))
    except SocketSecurityError:
        raise
    except OSError as e:
        raise CoordinatorUnavailable(
            f"no coordinator answers on {path} ({e.strerror or e}); start one with "
            f"`pmrun coordinator` or run an agent with `pmrun -- CMD`"
        ) from None
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
                raise CoordinatorUnavailable(f"the coordinator on {path} closed the connection")
            for frame in buf.feed(data):
                answer = p.decode(frame, p.MAX_REPLY_FRAME)
                if getattr(answer, "id", None) not in (want, None):
                    continue
                if isinstance(answer, p.Error):
                    raise PmrunError(f"coordinator: {answer.message}")
                return answer
    except OSError as e:
        raise CoordinatorUnavailable(f"lost the coordinator on {path}: {e}") from None
    finally:
        sock.close()
    raise CoordinatorUnavailable(f"the coordinator on {path} did not answer in {timeout_s:g} s")


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
