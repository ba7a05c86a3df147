"""One client connection of the coordinator, as an :class:`asyncio.Protocol`.

Frames are parsed as they arrive; the peer's pid and uid come from SO_PEERCRED, never
from what it sends. A peer that sends garbage, a too-large frame, no frame at all or an
incomplete frame for too long, or that does not read its socket, is answered with an
error or dropped without disturbing anyone else. What a frame means is the server's.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import socket
import struct
from typing import TYPE_CHECKING

from . import protocol as p

if TYPE_CHECKING:
    from .pool import AgentEntry
    from .server import Coordinator

log = logging.getLogger("pmrun.coordinator")

_PEERCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
FAIL_LINGER_S = 0.1  # input read and discarded after an error, so that the error arrives


class Connection(asyncio.Protocol):
    """One client connection: an agent's launcher, a service process, or a CLI query."""

    _next_id = itertools.count(1)

    def __init__(self, coord: Coordinator) -> None:
        self.coord = coord
        self.id = next(self._next_id)
        self.transport: asyncio.Transport | None = None
        self.buffer = p.FrameBuffer()
        self.pid = 0
        self.uid = -1
        self.pid_start: int | None = None  # the peer's start time (ticks), read on accept
        self.agent: AgentEntry | None = (
            None  # the agent its launcher registered (the pool links it)
        )
        self.deregistered = False
        self.pending: dict[int, asyncio.Future[tuple[p.Message, float]]] = {}
        self.bad_frames = 0
        self.in_flight = 0  # cleanup/heap requests being answered
        self.seen_frame = False
        self._timer: asyncio.TimerHandle | None = None
        self.closed = False

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<Connection {self.id} from pid {self.pid} uid {self.uid}, {state}>"

    # -- asyncio callbacks --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        sock = transport.get_extra_info("socket")
        try:
            creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
            self.pid, self.uid, _gid = _PEERCRED.unpack(creds)
        except OSError:
            self.uid = -1
        self.coord.accepted(self)

    def data_received(self, data: bytes) -> None:
        if self.closed:
            return
        try:
            frames = self.buffer.feed(data)
        except p.FrameTooLarge as e:
            self.fail("too-large", str(e))
            return
        for frame in frames:
            if self.closed:
                return
            try:
                msg = p.decode(frame)
            except p.ProtocolError as e:
                self.bad_frames += 1
                if self.bad_frames > self.coord.settings.max_bad_frames:
                    self.fail("bad-frame", f"{e} (too many bad frames: closing)")
                    return
                self.send(p.Error(code=p.error_code(e), message=str(e)))
                continue
            self.seen_frame = True
            try:
                self.coord.dispatch(self, msg)
            except p.ProtocolError as e:
                self.send(p.Error(code="bad-frame", message=str(e)))
            except Exception:  # a bug must not take the daemon down
                log.exception("handling %s from pid %d", msg.TYPE, self.pid)
                self.send(p.Error(code="internal", message="internal error (see the log)"))
        self.arm_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self._timer is not None:
            self._timer.cancel()
        self.coord.lost(self)

    # -- helpers --

    def arm_timer(self) -> None:
        """A new connection must send a frame, and a started frame must end, in time."""
        if self.closed:
            return  # fail() owns the timer now: it closes the connection
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        s = self.coord.settings
        if not self.seen_frame:
            self._timer = self.coord.loop.call_later(
                s.handshake_timeout_s, self.fail, "timeout", "no complete frame in time"
            )
        elif self.buffer.pending:
            self._timer = self.coord.loop.call_later(
                s.frame_timeout_s, self.fail, "timeout", "incomplete frame for too long"
            )

    def send(self, msg: p.Message) -> None:
        self.send_frame(p.encode(msg, p.MAX_REPLY_FRAME))

    def send_frame(self, frame: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        # A peer that has not read what was queued before is dropped; one large answer
        # (a status of many agents) is not a reason to.
        if self.transport.get_write_buffer_size() > self.coord.settings.max_write_buffer:
            log.warning("pid %d does not read its socket: dropping it", self.pid)
            self.closed = True
            self.transport.abort()
            return
        self.transport.write(frame)

    def fail(self, code: str, message: str) -> None:
        """Answer one error and close the connection."""
        if self.closed:
            return
        log.info("dropping connection from pid %d: %s", self.pid, message)
        self.send(p.Error(code=code, message=message))
        self.closed = True  # from now on what it sends is read and ignored
        if self._timer is not None:
            self._timer.cancel()
        # Closing with unread input would reset the connection and lose the error frame:
        # read and discard for a moment first.
        if self.transport is not None:
            self._timer = self.coord.loop.call_later(FAIL_LINGER_S, self.transport.close)
