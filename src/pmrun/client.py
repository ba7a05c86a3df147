"""Let any Python process free memory when the coordinator says memory is tight.

::

    from pmrun import register_cleanup

    def drop_cache(fraction: float) -> int:
        return my_cache.drop(fraction)        # bytes it accounted

    registration = register_cleanup("my-cache", drop_cache, stats=my_cache.stats)

``fn(fraction)`` may be a plain function or an ``async def``; it returns the bytes it
freed as an ``int``, or a dict ``{"bytes": ..., "rss_drop": ...}``. The client measures
the process's RSS around the call itself and reports both figures.

One background thread per process (shared by every registration in it) keeps one
connection to the coordinator, answers its requests and pushes each registration's
``stats()`` every few seconds. A process with one handler runs it in that thread (the
fastest answer); with several, each runs in a worker thread of its own, so a handler that
fails or hangs never stops the others, and the answer goes back by the coordinator's
deadline with ``"error": "timeout: still running"`` for a handler not done. A lone handler
that hangs is answered for by nobody until it returns, but a handler registered meanwhile
gets a new thread and is served as usual.

Registering never fails because of the coordinator: if none answers, the thread keeps
retrying quietly in the background. The socket is ``socket=``, else ``PMRUN_SOCKET``,
else the default; the agent the service belongs to is ``PMRUN_AGENT_ID`` (set by
``pmrun -- cmd`` for its children). ``PMRUN_TRACEMALLOC=1`` starts :mod:`tracemalloc`
at registration so that ``pmrun heap`` can show allocation sites.

After ``fork()`` the child has no registrations: register again there if needed.
"""

from __future__ import annotations

import collections
import logging
import os
import queue
import select
import socket as _socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from . import _procfs
from .coordinator import protocol as p
from .errors import PmrunError

__all__ = ["Registration", "register_cleanup"]

log = logging.getLogger("pmrun.client")

STATS_INTERVAL_S = 5.0  # stats are pushed this often (and after each eviction)
STATS_TIMEOUT_S = 0.5  # a stats() slower than this is skipped (the last value is kept)
HEAP_BUDGET_S = 4.0  # the object walk of a heap request stops after this
BACKOFF_S = (0.1, 5.0)
INLINE_STUCK_S = 0.5  # a handler run by the reading thread this long is taken as stuck


_statm: tuple[int, int] | None = None  # (pid, fd of /proc/PID/statm) kept open
_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    """This process's RSS in bytes.

    Read with one ``pread`` on a descriptor kept open (about 1 us, against 10 for an
    open/read/close): it is read four times per eviction, in every service at once. This
    is the only /proc read outside ``pmrun._procfs``, for that reason.
    """
    global _statm
    pid = os.getpid()
    try:
        if _statm is None or _statm[0] != pid:  # first call, or a forked child
            _statm = (pid, os.open(f"/proc/{pid}/statm", os.O_RDONLY | os.O_CLOEXEC))
        return int(os.pread(_statm[1], 128, 0).split()[1]) * _PAGE
    except (OSError, ValueError, IndexError):
        try:
            return _procfs.statm(pid)[1]
        except (_procfs.ProcessGone, OSError):
            return 0


class _Call:
    """One function call handed to a worker thread."""

    def __init__(self, func: Callable[[], Any], on_done: Callable[[_Call], None] | None) -> None:
        self.func = func
        self.on_done = on_done  # called in the worker thread once the call returned
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.seconds = 0.0

    def run(self) -> None:
        """Call it, timed; a handler's failure is its answer, not ours."""
        t0 = time.monotonic()
        try:
            self.value = self.func()
        except BaseException as e:
            self.error = e
        self.seconds = time.monotonic() - t0


class _Worker:
    """A thread that runs one registration's calls, one at a time.

    The hand-off is a C-level ``SimpleQueue``: it is on the path of every eviction answer,
    and a ``Condition`` costs about twice as much there.
    """

    def __init__(self, name: str) -> None:
        self._queue: queue.SimpleQueue[_Call | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self.busy = False
        self._thread = threading.Thread(target=self._run, name=f"pmrun-cleanup-{name}", daemon=True)
        self._thread.start()

    def submit(
        self, func: Callable[[], Any], on_done: Callable[[_Call], None] | None = None
    ) -> _Call | None:
        """Run ``func`` soon; None if the previous call is still running."""
        with self._lock:
            if self.busy:
                return None
            self.busy = True
        call = _Call(func, on_done)
        self._queue.put(call)
        return call

    def stop(self) -> None:
        """End the thread after its current call (a hung handler keeps it, harmlessly)."""
        self._queue.put(None)

    def _run(self) -> None:
        while (call := self._queue.get()) is not None:
            call.run()
            with self._lock:
                self.busy = False
            call.done.set()
            if call.on_done is not None:
                try:
                    call.on_done(call)
                except Exception:  # pragma: no cover - our own bookkeeping
                    log.exception("pmrun client: answering an eviction failed")


def _bind(func: Callable[[float], Any], fraction: float) -> Callable[[], Any]:
    return lambda: func(fraction)


def _await(result: Any, loop: Any) -> Any:
    """The value of a coroutine a handler returned: on its own loop if that still runs."""
    import asyncio

    if loop is not None and loop.is_running() and not loop.is_closed():
        return asyncio.run_coroutine_threadsafe(result, loop).result()
    return asyncio.run(result)


class Registration:
    """One cleanup handler registered with the coordinator; :meth:`close` unregisters it."""

    def __init__(
        self,
        name: str,
        fn: Callable[[float], object],
        stats: Callable[[], dict[str, Any]] | None,
        connection: _Connection | None,
        loop: Any = None,
    ) -> None:
        self.name = name
        self.fn = fn
        self.stats = stats
        self._connection = connection
        self._loop = loop  # the event loop register_cleanup was called from, if any
        self._worker: _Worker | None = None
        self._running = False  # its handler runs in the reading thread now
        self.last_stats: dict[str, Any] = {}
        self.closed = False

    def __repr__(self) -> str:
        c = self._connection
        state = "closed" if self.closed else ("connected" if c and c.connected else "waiting")
        return f"<Registration {self.name!r} {state}>"

    @property
    def connected(self) -> bool:
        return bool(self._connection and self._connection.connected and not self.closed)

    def close(self) -> None:
        """Unregister; the handler is not called again. Never raises."""
        if self.closed:
            return
        self.closed = True
        if self._connection is not None:
            self._connection.remove(self)
        if self._worker is not None:
            self._worker.stop()

    def _idle(self) -> bool:
        """Neither its worker nor the reading thread is running one of its calls."""
        return not self._running and (self._worker is None or not self._worker.busy)

    def _submit(
        self, func: Callable[[], Any], on_done: Callable[[_Call], None] | None = None
    ) -> _Call | None:
        if self._running:
            return None
        if self._worker is None:
            self._worker = _Worker(self.name)
        return self._worker.submit(func, on_done)

    def _evict(self, fraction: float) -> dict[str, Any]:
        """Run the handler (in the worker); its result as the protocol reports it."""
        before = _rss()
        out = self.fn(fraction)
        if hasattr(out, "__await__"):
            out = _await(out, self._loop)
        measured = max(0, before - _rss())
        result: dict[str, Any] = {"name": self.name, "measured_rss_drop": measured}
        if isinstance(out, dict):
            b, drop = out.get("bytes"), out.get("rss_drop")
            result["bytes"] = b if isinstance(b, int) and not isinstance(b, bool) else None
            result["rss_drop"] = (
                drop if isinstance(drop, int) and not isinstance(drop, bool) else measured
            )
        else:
            result["bytes"] = out if isinstance(out, int) and not isinstance(out, bool) else None
            result["rss_drop"] = measured
        return result


class _Eviction:
    """One eviction request being answered.

    The worker that finishes last sends the answer (no extra thread switch), or the client
    thread does at the deadline, a little before the coordinator stops waiting, with
    ``"error": "timeout: still running"`` for the handlers not done.
    """

    def __init__(self, conn: _Connection, msg: p.Evict, regs: list[Registration]) -> None:
        self.conn, self.msg = conn, msg
        self.t0 = time.monotonic()
        self.deadline = self.t0 + max(0.01, msg.timeout_s * 0.8)
        self.rss_before = _rss()
        self.names = [r.name for r in regs]
        self.results: dict[str, dict[str, Any]] = {}
        self.left = len(regs)
        self.sent = False
        self._lock = threading.Lock()
        if not regs:
            self.finish()

    def done_for(self, name: str) -> Callable[[_Call], None]:
        """The callback for the worker of handler ``name``."""

        def done(call: _Call) -> None:  # in that worker's thread
            if call.error is not None:
                e = call.error
                result: dict[str, Any] = {"error": f"{type(e).__name__}: {e}"[:300]}
            else:
                result = dict(call.value)
            result["seconds"] = round(call.seconds, 6)
            self.record(name, result)

        return done

    def record(self, name: str, result: dict[str, Any]) -> None:
        with self._lock:
            self.results[name] = {**result, "name": name}
            self.left -= 1
            last = self.left <= 0
        if last:
            self.finish()

    def finish(self) -> None:
        with self._lock:
            if self.sent:
                return
            self.sent = True
            results = [
                self.results.get(n, {"name": n, "error": "timeout: still running"})
                for n in self.names
            ]
        self.conn._send(
            p.Evicted(
                id=self.msg.id,
                results=results,
                rss_before=self.rss_before,
                rss_after=_rss(),
                seconds=round(time.monotonic() - self.t0, 6),
            )
        )


class _Connection:
    """The process's one connection to one coordinator, and the thread that reads it.

    With one handler in the process, the reading thread runs it itself: a hand-off to a
    worker thread costs more than the rest of the answer (about a third of a service's
    CPU per eviction, measured with 100 services on 2 cores). Should that handler hang,
    no other handler is held up, since there is none; if one is registered meanwhile, a
    new thread takes over the connection (:meth:`_take_over_locked`) and the stuck one
    leaves when its handler returns. With several handlers each runs in its own worker.
    """

    def __init__(self, socket_path: str, agent_id: str | None) -> None:
        self.socket_path = socket_path
        self.agent_id = agent_id
        self.regs: list[Registration] = []
        self._lock = threading.Lock()  # guards regs, every send, and who reads (_gen)
        self._sock: _socket.socket | None = None
        self._quit = threading.Event()
        # Wakes the thread to push stats soon after a registration (pipe: select()-able).
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.connected = False
        self._evictions: list[_Eviction] = []  # answers not sent yet
        self._next_stats = 0.0
        self._gen = 0  # the generation of the thread that reads; a takeover bumps it
        self._inline_since: float | None = None  # the reader is running a handler itself
        self._buf = p.FrameBuffer(p.MAX_REPLY_FRAME)
        self._backlog: collections.deque[bytes] = collections.deque()  # frames not handled
        self._thread = threading.Thread(
            target=self._run, args=(0,), name="pmrun-client", daemon=True
        )
        self._thread.start()

    # -- called from the host's threads --

    def add(self, reg: Registration) -> None:
        with self._lock:
            names = {r.name for r in self.regs}
            base, n = reg.name, 2
            while reg.name in names:  # names are unique per process
                reg.name, n = f"{base}#{n}", n + 1
            self.regs.append(reg)
            self._send_locked(p.Service(name=reg.name, pid=os.getpid(), agent_id=self.agent_id))
            since = self._inline_since
            if since is not None and time.monotonic() - since > INLINE_STUCK_S:
                self._take_over_locked()
            if self._wake_w >= 0:
                try:
                    os.write(self._wake_w, b"s")
                except OSError:
                    pass

    def remove(self, reg: Registration) -> None:
        with self._lock:
            if reg in self.regs:
                self.regs.remove(reg)
                self._send_locked(p.ServiceClose(name=reg.name))
            empty = not self.regs
        if empty:
            self.stop()

    def stop(self) -> None:
        with _registry_lock:
            if _connections.get(self.socket_path) is self:
                del _connections[self.socket_path]
        self._quit.set()
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(_socket.SHUT_RDWR)
            except OSError:
                pass

    def _take_over_locked(self) -> None:
        """The reader is stuck in a handler: a new thread reads the connection from now on."""
        self._gen += 1
        self._inline_since = None
        self._thread = threading.Thread(
            target=self._run, args=(self._gen,), name="pmrun-client", daemon=True
        )
        self._thread.start()

    def _send_locked(self, msg: p.Message) -> None:
        sock = self._sock
        if sock is None:
            return  # sent on (re)connection
        try:
            sock.sendall(p.encode(msg))
        except (OSError, PmrunError) as e:
            log.debug("send to the coordinator failed: %s", e)

    def _send(self, msg: p.Message) -> None:
        with self._lock:
            self._send_locked(msg)

    # -- the reading thread --

    def _run(self, gen: int) -> None:
        from .coordinator.link import connect

        delay = BACKOFF_S[0]
        while not self._quit.is_set() and gen == self._gen:
            sock = self._sock
            connected_at = time.monotonic()
            if sock is None:
                try:
                    sock = connect(self.socket_path, timeout_s=2.0)
                except (OSError, PmrunError) as e:
                    log.debug(
                        "no coordinator at %s (%s); retry in %.1f s", self.socket_path, e, delay
                    )
                    self._quit.wait(delay)
                    delay = min(delay * 2, BACKOFF_S[1])
                    continue
                sock.settimeout(2.0)
                with self._lock:
                    if gen != self._gen:
                        sock.close()
                        return
                    self._sock = sock
                    self._buf = p.FrameBuffer(p.MAX_REPLY_FRAME)
                    self._backlog.clear()
                    for reg in self.regs:
                        self._send_locked(
                            p.Service(name=reg.name, pid=os.getpid(), agent_id=self.agent_id)
                        )
                self.connected = True
                self._push_stats()
                self._next_stats = time.monotonic() + STATS_INTERVAL_S
            try:
                self._serve(sock, gen)
            except (OSError, PmrunError) as e:
                log.debug("coordinator connection lost: %s", e)
            except Exception:  # never into the host process
                log.exception("pmrun client thread failed")
            finally:
                with self._lock:
                    mine = gen == self._gen
                    if mine:
                        self._sock = None
                if mine:  # a thread that was taken over leaves the connection alone
                    self.connected = False
                    sock.close()
            if not mine:
                return
            # A connection that lasted is retried soon; one refused at once backs off.
            if time.monotonic() - connected_at > 1.0:
                delay = BACKOFF_S[0]
            else:
                delay = min(delay * 2, BACKOFF_S[1])
            if not self._quit.is_set():
                self._quit.wait(delay)
        with self._lock:
            if gen == self._gen and self._wake_r >= 0:
                os.close(self._wake_r)
                os.close(self._wake_w)
                self._wake_r = self._wake_w = -1

    def _serve(self, sock: _socket.socket, gen: int) -> None:
        fd = sock.fileno()
        while not self._quit.is_set() and gen == self._gen:
            while self._backlog:
                self._handle(p.decode(self._backlog.popleft(), p.MAX_REPLY_FRAME), gen)
                if gen != self._gen:
                    return
            wake_at = min([self._next_stats, *(e.deadline for e in self._evictions)])
            timeout = max(0.0, wake_at - time.monotonic())
            r, _, _ = select.select([fd, self._wake_r], [], [], timeout)
            if self._wake_r in r:
                try:
                    os.read(self._wake_r, 512)
                except OSError:
                    pass
                self._next_stats = time.monotonic()  # a new registration: send its stats now
            if fd in r:
                data = sock.recv(1 << 16)
                if not data:
                    return
                self._backlog.extend(self._buf.feed(data))
            now = time.monotonic()
            for e in self._evictions:
                if now >= e.deadline:
                    e.finish()  # answer for the handlers done; the others time out
            self._evictions = [e for e in self._evictions if not e.sent]
            if now >= self._next_stats:
                self._push_stats()
                self._next_stats = time.monotonic() + STATS_INTERVAL_S

    def _handle(self, msg: p.Message, gen: int) -> None:
        if isinstance(msg, p.Evict):
            self._evict(msg, gen)
            # Fresh stats soon, not at once: answering first is what the coordinator waits for.
            self._next_stats = min(self._next_stats, time.monotonic() + 1.0)
        elif isinstance(msg, p.GetStats):
            self._push_stats(msg.id)
        elif isinstance(msg, p.Heap):
            try:
                result = heap_summary(msg.limit)
            except Exception as e:
                result = {"pid": os.getpid(), "error": f"{type(e).__name__}: {e}"}
            self._send(p.HeapResult(id=msg.id, results=[result]))
        elif isinstance(msg, p.Error):
            log.debug("coordinator: %s: %s", msg.code, msg.message)
            if msg.code == "forbidden":
                raise PmrunError(msg.message)

    def _evict(self, msg: p.Evict, gen: int) -> None:
        """Run the handlers; the answer is sent by the last one to finish, or by this thread
        at the deadline (see :class:`_Eviction`)."""
        with self._lock:
            regs = list(self.regs)
        eviction = _Eviction(self, msg, regs)
        if len(regs) == 1 and regs[0]._idle():
            self._evict_here(regs[0], msg, eviction)
            return
        for reg in regs:
            call = reg._submit(_bind(reg._evict, msg.fraction), eviction.done_for(reg.name))
            if call is None:
                eviction.record(reg.name, {"name": reg.name,
                                           "error": "busy: the previous cleanup is still running"})  # fmt: skip
        if not eviction.sent:
            self._evictions.append(eviction)

    def _evict_here(self, reg: Registration, msg: p.Evict, eviction: _Eviction) -> None:
        """Run the only handler in this (the reading) thread."""
        call = _Call(_bind(reg._evict, msg.fraction), eviction.done_for(reg.name))
        reg._running = True
        with self._lock:
            self._inline_since = time.monotonic()
        call.run()
        reg._running = False
        with self._lock:
            self._inline_since = None
        call.done.set()
        assert call.on_done is not None
        call.on_done(call)  # sends the answer (late, if this thread was taken over)

    def _push_stats(self, rid: int | None = None) -> None:
        with self._lock:
            regs = list(self.regs)
        services: dict[str, Any] = {}
        for reg in regs:
            if reg.stats is not None:
                call = reg._submit(reg.stats)
                if call is not None and call.done.wait(STATS_TIMEOUT_S) and call.error is None:
                    if isinstance(call.value, dict):
                        reg.last_stats = call.value
            services[reg.name] = reg.last_stats
        try:
            self._send(p.Stats(id=rid, pid=os.getpid(), rss=_rss(), services=services))
        except PmrunError as e:  # a stats dict that is not JSON: say so instead
            log.debug("stats not sent: %s", e)


_registry_lock = threading.Lock()
_connections: dict[str, _Connection] = {}


def _forget_after_fork() -> None:
    global _registry_lock, _connections
    _registry_lock = threading.Lock()
    _connections = {}


os.register_at_fork(after_in_child=_forget_after_fork)


def register_cleanup(
    name: str,
    fn: Callable[[float], object],
    *,
    stats: Callable[[], dict[str, Any]] | None = None,
    socket: str | None = None,
) -> Registration:
    """Call ``fn(fraction)`` when the coordinator asks services to free memory.

    ``stats()``, if given, returns a JSON-able dict of what the service holds (``"bytes"``
    is shown by ``pmrun status``). Returns at once, connected or not; never raises
    because of the coordinator. Raises ``TypeError`` if ``fn`` is not callable.
    """
    if not callable(fn):
        raise TypeError(f"register_cleanup({name!r}, ...): fn must be callable")
    loop = None
    try:
        import asyncio

        loop = asyncio.get_running_loop()
    except RuntimeError:
        pass
    if os.environ.get("PMRUN_TRACEMALLOC") == "1":
        import tracemalloc

        if not tracemalloc.is_tracing():
            tracemalloc.start(
                1
            )  # one frame: the line is what heap shows; 10 made a snapshot 4x slower
    try:
        from .coordinator.paths import resolve_socket_path

        path = resolve_socket_path(socket)
    except PmrunError as e:
        log.warning("pmrun: %s; %r is not registered", e, name)
        reg = Registration(str(name), fn, stats, None, loop)
        reg.closed = True
        return reg
    agent_id = os.environ.get("PMRUN_AGENT_ID") or None
    with _registry_lock:
        conn = _connections.get(path)
        if conn is None or conn._quit.is_set():
            conn = _connections[path] = _Connection(path, agent_id)
    reg = Registration(str(name)[:200] or "service", fn, stats, conn, loop)
    conn.add(reg)
    return reg


def heap_summary(limit: int = 20, budget_s: float = HEAP_BUDGET_S) -> dict[str, Any]:
    """This process's biggest object types and, if traced, allocation sites.

    See :func:`pmrun.diagnostics.heap.count_types` for what is counted (gc-tracked objects
    and the strings, bytes and numbers they hold). Bounded: the walk stops after
    ``budget_s`` (``truncated``).
    """
    from .diagnostics.heap import count_types

    t0 = time.monotonic()
    counted = count_types(limit, budget_s)
    sites: list[dict[str, Any]] = []
    tracing = False
    if "tracemalloc" in sys.modules:
        import tracemalloc

        tracing = tracemalloc.is_tracing()
        if tracing:
            for st in tracemalloc.take_snapshot().statistics("lineno")[:limit]:
                frame = st.traceback[0]
                sites.append(
                    {
                        "where": f"{frame.filename}:{frame.lineno}"[-200:],
                        "bytes": st.size,
                        "count": st.count,
                    }
                )
    return {
        "pid": os.getpid(),
        "rss_bytes": _rss(),
        **counted,
        "tracemalloc": tracing,
        "sites": sites,
        "seconds": round(time.monotonic() - t0, 4),
    }
