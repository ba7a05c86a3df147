"""The launcher's side of the coordinator: find or start one, and stay registered.

``pmrun -- cmd`` imports this on every agent start, so it imports only what the launcher
already pays for (``socket``, ``select``, ``threading``, ``json`` through the protocol);
the code that starts a daemon lives in :mod:`.spawn` and is imported only when needed.

Nothing here ever raises into the launcher or kills anything: if the coordinator goes
away, the link retries with backoff and registers again when one answers; the launcher
keeps enforcing its own limits meanwhile. A coordinator that *refuses* the registration
would refuse it again: the link says so once on stderr and gives up.
"""

from __future__ import annotations

import collections
import errno
import os
import select
import socket
import struct
import threading
import time
from collections.abc import Callable

from ..errors import PmrunError, SocketSecurityError
from ..policy import meaningful_change
from . import protocol as p
from .paths import default_socket_path

__all__ = ["AgentLink", "default_socket_path", "ensure_coordinator", "peer_uid_ok"]

TYPE_CHECKING = False  # typing costs ~4 ms to import: only the type checker reads these
if TYPE_CHECKING:
    from typing import Any


class _LazyLog:
    """``logging`` costs ~15 ms to import: imported on the first message, in the link thread."""

    def __getattr__(self, name: str) -> Any:
        import logging

        return getattr(logging.getLogger("pmrun.link"), name)


log = _LazyLog()

_PEERCRED = struct.Struct("3i")
MIB = 1 << 20
# Error codes that answer a register for what it is, not for the coordinator's load:
# sending the same frame again would be refused again.
REFUSALS = ("bad-frame", "too-large", "forbidden", "unknown-type", "bad-version")


class _Refused(Exception):
    """The coordinator refused this agent (or the agent cannot be put in a register)."""


def say_on_stderr(line: str) -> None:
    """One line on fd 2, as the launcher writes its own; a closed stderr is not an error."""
    try:
        os.write(2, f"pmrun: warning: {line}\n".encode(errors="replace"))
    except OSError:
        pass


def peer_uid_ok(sock: socket.socket) -> bool:
    """Whether the process at the other end is us (same uid) or root: trust it only then."""
    try:
        _pid, uid, _gid = _PEERCRED.unpack(
            sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
        )
    except OSError:
        return False
    return uid in (os.geteuid(), 0)


def connect(socket_path: str, timeout_s: float = 1.0) -> socket.socket:
    """A connected socket to a coordinator we may trust; raises OSError or SocketSecurityError."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    try:
        sock.settimeout(timeout_s)
        sock.connect(socket_path)
        if not peer_uid_ok(sock):
            raise SocketSecurityError(
                f"the process serving {socket_path} is not yours: refusing to talk to it"
            )
    except BaseException:
        sock.close()
        raise
    return sock


def ensure_coordinator(socket_path: str) -> bool:
    """True if a coordinator answers on ``socket_path``; else start one detached and return False.

    Costs one ``connect`` when a coordinator answers. The daemon started here holds a lock
    next to the socket, so launchers racing here start at most one coordinator (the others
    exit quietly). None is started while the lock is held: a coordinator is starting, or
    its socket was deleted and it is binding it again. Does not wait for the new daemon to
    be ready. Raises :class:`~pmrun.errors.SocketSecurityError` if the socket's directory
    is not safely ours.
    """
    try:
        connect(socket_path, timeout_s=0.5).close()
        return True
    except (TimeoutError, BlockingIOError):
        # Something is there but busy: a full listen backlog answers EAGAIN to a Unix
        # socket connect (100 launchers starting at once). Do not start another; the
        # link retries with backoff.
        return True
    except (FileNotFoundError, ConnectionRefusedError):
        pass
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ECONNREFUSED, errno.ENOTSOCK):
            raise SocketSecurityError(
                f"cannot use the socket {socket_path}: {e.strerror}"
            ) from None
    start_unless_locked(socket_path)
    return False


def start_unless_locked(socket_path: str) -> bool:
    """Start a detached coordinator unless one holds the socket's lock; True if started."""
    from .endpoint import check_lock, lock_held

    check_lock(socket_path)
    if lock_held(socket_path):
        return False
    from .spawn import spawn_coordinator

    spawn_coordinator(socket_path)
    return True


def _deregister_frame(report: dict[str, Any]) -> bytes:
    """The deregister with ``report``; its command line cut as a register's, if it must be."""
    try:
        return p.encode(p.Deregister(report=report))
    except PmrunError:
        pass
    command = report.get("command")
    if isinstance(command, list):
        try:
            shown = p.shown_argv([str(a) for a in command])
            return p.encode(p.Deregister(report={**report, "command": shown}))
        except PmrunError:
            pass
    return p.encode(p.Deregister(report={"error": "report not encodable"}))


class AgentLink:
    """Keeps one agent registered with the coordinator, from a daemon thread.

    ``info``: ``agent_id``, ``name``, ``launcher_pid``, ``child_pid``, ``argv``,
    ``max_rss``, ``warn_rss``, ``priority``, ``backend`` (dict), ``started`` (unix time).
    ``on_stop(reason, detail)`` runs in the link thread when the coordinator orders the
    agent stopped (reason ``pool`` or ``system-pressure``); it should only tell the
    launcher to stop, not stop the tree itself. When no coordinator has answered for
    ``respawn_after_s``, the link starts one (:func:`start_unless_locked`: the lock lets
    exactly one of the launchers that try it serve), unless the last one said it stopped
    cleanly (``pmrun coordinator stop``, SIGTERM): a stop holds.
    """

    def __init__(
        self,
        socket_path: str,
        info: dict[str, Any],
        on_stop: Callable[[str, dict[str, Any]], None],
        *,
        heartbeat_s: float = 1.0,
        min_interval_s: float = 0.02,
        backoff_s: tuple[float, float] = (0.1, 2.0),
        send_timeout_s: float = 2.0,
        say: Callable[[str], None] = say_on_stderr,
        respawn_after_s: float | None = 3.0,
        warn_after_s: float | None = 10.0,
        on_pause: Callable[[bool, dict[str, Any]], None] | None = None,
    ) -> None:
        self.socket_path = socket_path
        self.say = say
        # Nobody answering for this long (after a SIGKILL, say): start a coordinator. Not at
        # once, so that a supervisor or a person restarting it gets the lock first.
        self.respawn_after_s = respawn_after_s
        # Never registered after this long (a coordinator that cannot start): say so once.
        self.warn_after_s = warn_after_s
        self._warned_unreachable = False
        self.info = dict(info)
        self.on_stop = on_stop
        # on_pause(True, detail) on a pause order, (False, detail) on a resume, and
        # (False, {"why": ...}) when the connection drops while paused: a coordinator
        # that goes away must never leave the agent frozen.
        self.on_pause = on_pause
        self._paused = False
        self.heartbeat_s = heartbeat_s
        self.min_interval_s = min_interval_s
        self.backoff_s = backoff_s
        self.send_timeout_s = send_timeout_s
        # (rss, peak, pids, state): replaced as a whole, read by the link thread.
        self._latest: tuple[int, int, list[tuple[int, int]], str] = (0, 0, [], "running")
        self._sent_rss: int | None = None  # None while not registered
        self._sent_state = "running"
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._poked = False
        self._pipe_lock = threading.Lock()  # the pipe is closed once, never written after
        self._pipe_open = True
        self._outbox: collections.deque[bytes] = collections.deque(maxlen=256)
        self._deregister: bytes | None = None
        self._finished = threading.Event()  # deregistered, or the thread ended
        self._quit = False
        self._sock: socket.socket | None = None
        self._thread = threading.Thread(target=self._run, name="pmrun-link", daemon=True)
        self.registrations = 0  # successful registrations (1, then one per reconnect)
        self.stop_reason: str | None = None
        self.refused: str | None = None  # why the coordinator refused this agent, once it did
        self._acked = False  # the coordinator answered ok to the current connection's register
        # The ``hold`` of the shutdown the last coordinator sent as it exited, until one
        # serves again: True (a stop) starts none, False (an idle exit) starts one at once.
        self._exit_hold: bool | None = None

    def __repr__(self) -> str:
        state = "connected" if self._sent_rss is not None else "not connected"
        return f"<AgentLink {self.info.get('name')!r} {state} to {self.socket_path}>"

    @property
    def connected(self) -> bool:
        return self._sent_rss is not None

    # -- called by the launcher ------------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def report(
        self,
        rss_bytes: int,
        peak_bytes: int,
        pids: list[tuple[int, int]],
        *,
        state: str = "running",
    ) -> None:
        """Record the latest sample. O(1), never blocks: the link thread decides when to send."""
        self._latest = (rss_bytes, peak_bytes, pids, state)
        sent = self._sent_rss
        if sent is None:
            return
        if state != self._sent_state or meaningful_change(sent, rss_bytes):
            self._poke()

    def event(self, kind: str, **fields: Any) -> None:
        """Queue one launcher event (warn crossed, stopping, exit) for the coordinator's log."""
        try:
            self._outbox.append(p.encode(p.Event(kind=kind, fields=fields)))
        except PmrunError as e:
            log.debug("event %s not sent: %s", kind, e)
            return
        self._poke()

    def close(self, report: dict[str, Any] | None = None, *, timeout_s: float = 0.5) -> None:
        """Deregister with the exit ``report`` (waiting at most ``timeout_s``), then stop."""
        self._deregister = _deregister_frame(report or {})
        if threading.current_thread() is self._thread:  # from on_stop: no one else to do it
            self._send_deregister_here(timeout_s)
        elif self._thread.is_alive():
            self._poke()
            self._finished.wait(timeout_s)
        elif self._thread.ident is None:  # never started: only the wake pipe to release
            with self._pipe_lock:
                if self._pipe_open:
                    self._pipe_open = False
                    os.close(self._wake_r)
                    os.close(self._wake_w)
        self._quit = True
        self._poke()
        if threading.current_thread() is not self._thread and self._thread.is_alive():
            self._thread.join(0.05)

    # -- the link thread -------------------------------------------------------------------

    def _poke(self) -> None:
        if self._poked:
            return
        with self._pipe_lock:
            if self._pipe_open:
                self._poked = True
                try:
                    os.write(self._wake_w, b"x")
                except OSError:
                    pass

    def _drain_pipe(self) -> None:
        self._poked = False
        try:
            while os.read(self._wake_r, 512):
                pass
        except OSError:
            pass

    def _sleep(self, seconds: float) -> None:
        r, _, _ = select.select([self._wake_r], [], [], seconds)
        if r:
            self._drain_pipe()

    def _maybe_respawn(self, error: OSError, unreachable_since: float) -> float:
        """Start a coordinator if none has answered for ``respawn_after_s``; returns the time
        to count the next attempt from."""
        now = time.monotonic()
        after = self.respawn_after_s
        if self._exit_hold is False and after is not None:
            after = 0.0  # until one is started (the exiting one may still hold the lock)
        if after is None or self._exit_hold or now - unreachable_since < after:
            return unreachable_since
        if error.errno not in (errno.ENOENT, errno.ECONNREFUSED):
            return unreachable_since  # something else is wrong: starting one would not help
        try:
            if start_unless_locked(self.socket_path):
                self._exit_hold = None
                log.debug("no coordinator on %s for %.1f s: started one", self.socket_path, after)
        except (OSError, PmrunError) as e:
            log.debug("cannot start a coordinator on %s: %s", self.socket_path, e)
        return now  # the next attempt another respawn_after_s from now

    def _maybe_warn(self, started: float, error: OSError) -> None:
        after = self.warn_after_s
        if self.registrations or self._warned_unreachable or after is None:
            return
        if time.monotonic() - started < after:
            return
        self._warned_unreachable = True
        from .paths import log_path

        self.say(
            f"no coordinator answers on {self.socket_path} after {after:g} s "
            f"({error.strerror or error}; its log: {log_path(self.socket_path)}): this agent "
            "is not in the pool yet, still trying"
        )

    def _maybe_warn_unanswered(self, sent_at: float) -> None:
        """A coordinator that accepted the register but never answered it (hung): say once."""
        after = self.warn_after_s
        if after is None or self._warned_unreachable or time.monotonic() - sent_at < after:
            return
        self._warned_unreachable = True
        self.say(
            f"the coordinator on {self.socket_path} has not answered this agent's registration "
            f"in {after:g} s (hung?): the agent may not be in the pool"
        )

    def _run(self) -> None:
        delay = self.backoff_s[0]
        started = unreachable_since = time.monotonic()
        try:
            while not self._quit and not self._finished.is_set():
                try:
                    sock = connect(self.socket_path, timeout_s=self.send_timeout_s)
                except SocketSecurityError as e:
                    self._refuse(str(e))
                    break
                except OSError as e:
                    if self._deregister is not None:
                        break  # exiting and no coordinator: nothing to deregister from
                    log.debug("coordinator not reachable at %s: %s", self.socket_path, e)
                    tried = self._maybe_respawn(e, unreachable_since)
                    if tried != unreachable_since:  # one was started: look for it soon
                        delay, unreachable_since = self.backoff_s[0], tried
                    self._maybe_warn(started, e)
                    wait = delay
                    if self.respawn_after_s is not None:  # do not sleep past the respawn
                        due = unreachable_since + self.respawn_after_s - time.monotonic()
                        wait = min(delay, max(self.backoff_s[0], due))
                    self._sleep(wait)
                    delay = min(delay * 2, self.backoff_s[1])
                    continue
                self._sock = sock
                connected_at = time.monotonic()
                try:
                    self._serve(sock)
                except _Refused:
                    break
                except (OSError, PmrunError) as e:
                    log.debug("coordinator connection lost: %s", e)
                finally:
                    self._sock = None
                    self._sent_rss = None
                    sock.close()
                    unreachable_since = time.monotonic()
                    self._pause_order(False, {"why": "coordinator connection lost"})
                # A connection that lasted (a coordinator that went away) is retried at
                # once; one refused or dropped at once backs off like a failed connect.
                if time.monotonic() - connected_at > 1.0:
                    delay = self.backoff_s[0]
                elif not self._quit and self._deregister is None:
                    self._sleep(delay)
                    delay = min(delay * 2, self.backoff_s[1])
        except Exception:  # never into the launcher
            log.exception("coordinator link failed")
        finally:
            self._finished.set()
            with self._pipe_lock:
                if self._pipe_open:
                    self._pipe_open = False
                    os.close(self._wake_r)
                    os.close(self._wake_w)

    def _refuse(self, why: str) -> None:
        """Say once that this agent is not in the pool, and stop trying."""
        if self.refused is None:
            self.refused = why
            self.say(
                f"the coordinator on {self.socket_path} refused this agent ({why}): it is not "
                "in the pool; enforcing its own limits only"
            )
        self._quit = True

    def _register_frame(self) -> bytes:
        """The register; what is only shown (argv, name) is cut by the protocol to fit."""
        rss, peak, pids, state = self._latest
        i = self.info
        try:
            return p.encode(
                p.Register(
                    agent_id=str(i["agent_id"]),
                    name=str(i.get("name", "")),
                    launcher_pid=int(i.get("launcher_pid", os.getpid())),
                    child_pid=int(i.get("child_pid", 0)),
                    argv=[str(a) for a in i.get("argv", [])],
                    max_rss=i.get("max_rss"),
                    warn_rss=i.get("warn_rss"),
                    priority=int(i.get("priority", 0)),
                    backend=dict(i.get("backend") or {}),
                    started=float(i.get("started", time.time())),
                    rss=rss,
                    peak=peak,
                    pids=[list(x) for x in pids[: p.MAX_PIDS]],
                    state=state,
                    pausable=self.on_pause is not None and bool(i.get("pausable", True)),
                    expect=i.get("expect"),
                )
            )
        except (PmrunError, TypeError, ValueError, OverflowError) as e:
            self._refuse(f"it cannot be registered: {e}")
            raise _Refused(str(e)) from None

    def _serve(self, sock: socket.socket) -> None:
        buf = p.FrameBuffer(p.MAX_REPLY_FRAME)
        sock.settimeout(self.send_timeout_s)
        frame = self._register_frame()
        self._acked = False
        sock.sendall(frame)
        rss, _, _, state = self._latest
        self._sent_rss, self._sent_state = rss, state
        self.registrations += 1
        last_sent = sent_at = time.monotonic()
        while not self._quit:
            if not self._acked:
                self._maybe_warn_unanswered(sent_at)
            if self._deregister is not None:
                self._send_deregister_here(0.5, buf)
                return
            while self._outbox:
                sock.sendall(self._outbox.popleft())
            now = time.monotonic()
            rss, peak, pids, state = self._latest
            since = now - last_sent
            changed = state != self._sent_state or meaningful_change(self._sent_rss, rss)
            if since >= self.heartbeat_s or (changed and since >= self.min_interval_s):
                sock.sendall(
                    p.encode(
                        p.Report(
                            rss=rss,
                            peak=peak,
                            pids=[list(x) for x in pids[: p.MAX_PIDS]],
                            state=state,
                        )
                    )
                )
                self._sent_rss, self._sent_state, last_sent = rss, state, now
                since = 0.0
            wait = self.heartbeat_s - since
            if changed and since < self.min_interval_s:
                wait = min(wait, self.min_interval_s - since)
            r, _, _ = select.select([sock.fileno(), self._wake_r], [], [], max(0.0, wait))
            if self._wake_r in r:
                self._drain_pipe()
            if sock.fileno() in r:
                data = sock.recv(1 << 16)
                if not data:
                    raise ConnectionResetError("coordinator closed the connection")
                for frame in buf.feed(data):
                    self._handle(p.decode(frame, p.MAX_REPLY_FRAME))

    def _handle(self, msg: p.Message) -> None:
        if isinstance(msg, p.Stop):
            self.stop_reason = msg.reason
            try:
                self.on_stop(msg.reason, msg.detail)
            except Exception:
                log.exception("on_stop failed")
        elif isinstance(msg, p.Ok) and msg.of == "register":
            self._acked = True
            self._exit_hold = None  # one serves again
        elif isinstance(msg, p.Shutdown):
            self._exit_hold = msg.hold
        elif isinstance(msg, p.Pause):
            self._pause_order(True, {"reason": msg.reason, **msg.detail})
        elif isinstance(msg, p.Resume):
            self._pause_order(False, {"why": "headroom", **msg.detail})
        elif isinstance(msg, p.Error):
            log.debug("coordinator: %s: %s", msg.code, msg.message)
            if msg.code == "forbidden" or (not self._acked and msg.code in REFUSALS):
                self._refuse(f"{msg.code}: {msg.message}")
                raise _Refused(msg.message)

    def _pause_order(self, pause: bool, detail: dict[str, Any]) -> None:
        if self.on_pause is None or pause == self._paused:
            return
        self._paused = pause
        try:
            self.on_pause(pause, detail)
        except Exception:
            log.exception("on_pause failed")

    def _send_deregister_here(self, timeout_s: float, buf: p.FrameBuffer | None = None) -> None:
        """Send the deregister frame and wait for its ``ok`` (from the link thread)."""
        sock, frame = self._sock, self._deregister
        if sock is None or frame is None:
            self._finished.set()
            return
        deadline = time.monotonic() + timeout_s
        buf = buf or p.FrameBuffer(p.MAX_REPLY_FRAME)
        try:
            while self._outbox:
                sock.sendall(self._outbox.popleft())
            sock.sendall(frame)
            while (left := deadline - time.monotonic()) > 0:
                r, _, _ = select.select([sock], [], [], left)
                if not r:
                    break
                data = sock.recv(1 << 16)
                if not data:
                    break
                for f in buf.feed(data):
                    msg = p.decode(f, p.MAX_REPLY_FRAME)
                    if isinstance(msg, p.Ok) and msg.of == "deregister":
                        return
        except (OSError, PmrunError):
            pass
        finally:
            self._sent_rss = None
            self._quit = True
            self._finished.set()
