"""Run one agent under its memory limits: ``pmrun -- COMMAND``.

The agent's tree hangs under a keeper process (``pmrun._keeper``), a child subreaper,
so every descendant stays in it however it forks. One thread does everything that
matters for enforcement (a helper thread talks to the coordinator): it blocks the
signals it cares about and waits for them with ``sigtimedwait``, whose timeout is the
adaptive sampling interval. No signal handler ever runs, so there is no race between
a signal, a sample and a reap.
"""

from __future__ import annotations

import _signal as signal  # the C module: signal.py would import enum for its IntEnums
import _thread
import os
import select as _io
import time

from . import _procfs, _signals, policy
from ._keeper import COMMAND_ENDED, DRAIN, PARENT_DIED, Keeper, kill_below
from ._pause import PauseControl
from .backends import Backend, Sample, select
from .errors import PmrunError, UsageError
from .report import ExitReport, Limits, write_report
from .sizes import format_size
from .supervision import (
    TreeStats,
    agent_label,
    build_report,
    end_lines,
    end_reason,
    no_coordinator_line,
    refused_line,
    warn_line,
)

TYPE_CHECKING = False  # not `from typing import`: the launch path avoids importing typing
if TYPE_CHECKING:
    from typing import Any

# Signals asking the command to end: a paused tree is resumed so that it can.
_ENDING = frozenset((signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT))
# The coordinator link thread wakes the main thread with this (never forwarded).
WAKE = signal.SIGRTMIN + 3
# pmrun's own signals, never forwarded; SIGTSTP, SIGTTIN and SIGTTOU keep their default
# action, so pmrun stops with its job on ^Z and the shell sees the job stopped.
OWN = frozenset((signal.SIGCHLD, WAKE, PARENT_DIED, COMMAND_ENDED, DRAIN))
_UNCATCHABLE = (signal.SIGKILL, signal.SIGSTOP, signal.SIGTSTP, signal.SIGTTIN, signal.SIGTTOU)
# Every other signal a user or a supervisor sends to pmrun is the command's: forwarded.
# 32 and 33 are glibc's own (SIGRTMIN is 34), so they are left out.
FORWARDED = tuple(
    s
    for s in (*range(1, 32), *range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
    if s not in OWN and s not in _UNCATCHABLE
)
WAITED = frozenset((*FORWARDED, *OWN))
# si_code > 0 means the kernel sent it (e.g. the terminal's ^C to the foreground
# process group, which the command is in too): forwarding it would deliver it twice.
_SI_KERNEL_MIN = 1


class LaunchSettings:
    """How one agent is run; sizes in bytes."""

    __slots__ = (
        "limits",
        "name",
        "backend",
        "priority",
        "coordinator",
        "socket",
        "report_path",
        "record_path",
        "trace_heap",
        "quiet",
        "pid_fd",
        "pause",
        "admission",
    )

    def __init__(
        self,
        limits: Limits,
        name: str = "",  # shown in status and messages; default: the command's basename
        backend: str = "auto",  # auto, cgroup or sampling
        priority: int = 0,  # higher is spared longer by the coordinator
        coordinator: bool = True,  # register with (and start on demand) the host's coordinator
        socket: str = "",  # the coordinator's socket; "" = the default path
        report_path: str | None = None,  # --report FILE ("-" = stderr)
        record_path: str | None = None,  # --record FILE
        trace_heap: bool = False,  # set PMRUN_TRACEMALLOC=1 for Python services in the agent
        quiet: bool = False,  # no warning line on stderr (the report still records it)
        pid_fd: int | None = None,  # --pid-fd N: the command's pid is written there once it runs
        pause: bool = True,  # the coordinator may pause this agent instead of stopping it
        admission: Any = None,  # pmrun._admit.AdmitSettings: wait before start; None = don't
    ) -> None:
        self.limits = limits
        self.name = name
        self.backend = backend
        self.priority = priority
        self.coordinator = coordinator
        self.socket = socket
        self.report_path = report_path
        self.record_path = record_path
        self.trace_heap = trace_heap
        self.quiet = quiet
        self.pid_fd = pid_fd
        self.pause = pause
        self.admission = admission


# Below this no program starts, so a smaller --max-rss is a mistake ("1.5" is 1 byte).
MIN_MAX_RSS_BYTES = 1 << 20


def agent_name(argv: list[str]) -> str:
    return safe_id(os.path.basename(argv[0]) or "agent")


def safe_id(name: str) -> str:
    """``name`` as the ``[A-Za-z0-9_.-]`` an agent id (and its cgroup's name) is made of.

    The name itself, spaces and all, stays what status and messages show.
    """
    return "".join(c if c.isascii() and (c.isalnum() or c in "_.-") else "_" for c in name)[:64]


def validate(argv: list[str], settings: LaunchSettings) -> None:
    """Reject what cannot work before anything starts."""
    lim = settings.limits
    if not argv:
        raise UsageError("no command given: use pmrun [OPTIONS] -- COMMAND [ARGS]...")
    if lim.max_rss < MIN_MAX_RSS_BYTES:
        raise UsageError(
            f"--max-rss {format_size(lim.max_rss) if lim.max_rss >= 1024 else lim.max_rss}"
            f" is below {format_size(MIN_MAX_RSS_BYTES)}: no program starts in that"
            " (sizes without a unit are bytes)"
        )
    if lim.warn_rss > lim.max_rss:
        raise UsageError(
            f"--warn-rss {format_size(lim.warn_rss)} is above --max-rss {format_size(lim.max_rss)}:"
            " the warning would never come before the stop"
        )
    if lim.max_as is not None and lim.max_as < 16 << 20:
        raise UsageError(
            f"--max-as {format_size(lim.max_as)} is too small to start any program (min 16M)"
        )


class Launcher:
    """One run of one command. Use :meth:`run`; it returns pmrun's exit status."""

    def __init__(self, argv: list[str], settings: LaunchSettings) -> None:
        validate(argv, settings)
        self.argv = list(argv)
        self.settings = settings
        settings.name = settings.name or agent_name(argv)
        self.limits = settings.limits
        self.agent_id = f"{safe_id(self.settings.name) or 'agent'}.{os.getpid()}"
        self._order: tuple[str, dict[str, Any]] | None = None  # stop ordered by the coordinator
        self._child_status: int | None = None
        self._keeper = Keeper()
        self._keeper_done = False  # the keeper exited: no process of the tree is left
        self._keeper_lost = False  # ... without the command's status: killed from outside
        self._socket_path: str | None = None
        self._pid = 0
        self._pidfd: int | None = None
        self._main_thread = _thread.get_ident()
        self._recorder: Any = None
        self._link: Any = None
        self.report: ExitReport | None = None  # once the command has run and ended
        self._early_events: list[tuple[str, dict[str, Any]]] = []  # before the link existed
        self._pid_known = _thread.allocate_lock()  # released once the command runs
        self._pid_known.acquire()
        self._link_ready = _thread.allocate_lock()  # released when the link thread is done
        self._link_ready.acquire()
        self._start_times: dict[int, int] = {}  # pid -> start time, for the coordinator
        self._troubles: list[str] = []  # pmrun's own I/O trouble, said once each, in the report
        self._deferred: list[str] = []  # lines kept for the end (stderr is a terminal)
        self._kernel_wakes = False  # the kernel wakes us at the limit (cgroup v1 threshold)
        # pause before kill (pmrun._pause): orders from the link thread, applied here
        self._pausectl = PauseControl(lambda: signal.pthread_kill(self._main_thread, WAKE))

    # -- the parts --------------------------------------------------------------

    def _say(self, text: str) -> None:
        """One line on stderr, if it can take it now: never block, never fail on pmrun's words.

        A stderr whose reader is gone (EPIPE), full (a stalled pipe) or closed costs the
        line, not the command.
        """
        data = f"pmrun: {text}\n".encode(errors="replace")
        try:
            poller = _io.poll()
            poller.register(2, _io.POLLOUT)
            if any(ev & _io.POLLOUT for _, ev in poller.poll(0)):
                os.write(2, data)
        except OSError:
            pass

    def _trouble(self, text: str) -> None:
        """pmrun's own trouble (a recording that cannot be written, ...): said once, reported."""
        if text not in self._troubles:
            self._troubles.append(text)
            self._say(text)

    def _check_recorder(self) -> None:
        rec = self._recorder
        if rec is not None and rec.error is not None:
            self._trouble(rec.error)
            self._recorder = None

    def _reap(self) -> None:
        """Reap our exited children (the keeper); pick up the command's status from it."""
        while True:
            try:
                pid, _, _ = os.wait4(-1, os.WNOHANG)
            except ChildProcessError:
                self._keeper_done = True
                break
            if pid == 0:
                break
            if pid == self._keeper.pid:
                self._keeper_done = True
        if self._child_status is None:
            self._child_status = self._keeper.poll_status()
        if self._keeper_done and self._child_status is None:
            # The keeper died without a status (killed from outside, maybe by the agent
            # itself): the command got SIGKILL as its parent-death signal, and what else
            # lived below the keeper is now ours (pmrun is a subreaper too).
            self._child_status = signal.SIGKILL
            self._keeper_lost = True

    def _on_stop_order(self, reason: str, detail: dict[str, Any]) -> None:
        """Called from the coordinator link thread: stop this agent (pool or system pressure)."""
        if self._order is None:
            self._order = (reason, detail)
        signal.pthread_kill(self._main_thread, WAKE)

    def _relay_wakeups(self, backend: Backend) -> None:
        """Thread: turn each kernel notification into a wake-up of the main loop.

        Registering the notification takes the kernel ~5 ms (cgroup v1), so it happens
        here, off the start-up path. A thread blocked in read(2) costs nothing; it ends
        with the process.
        """
        try:
            fd = backend.wakeup_fd()
        except Exception:  # a best effort: sampling goes on at its own pace without it
            return
        if fd is None:
            return
        self._kernel_wakes = True
        while True:
            try:
                os.read(fd, 8)
            except OSError:
                return
            signal.pthread_kill(self._main_thread, WAKE)

    def _forward(self, sig: int) -> None:
        if self._pidfd is None or self._child_status is not None:
            return
        if self._group_got(sig):
            return
        try:
            signal.pidfd_send_signal(self._pidfd, sig)
        except ProcessLookupError:
            pass

    def _group_got(self, sig: int) -> bool:
        """Whether ``sig`` was sent to pmrun's whole process group, the command included.

        ``kill -TERM -- -PGID`` (and systemd's stop, which signals every process) reach the
        command in the same system call: forwarding would deliver it twice. The keeper
        blocks every forwarded signal and never takes one, so it is pending there exactly
        when the sender signalled more than pmrun; then the keeper is told to discard it.
        A command that left pmrun's process group gets it forwarded anyway.
        """
        keeper = self._keeper.pid
        if not keeper or self._keeper_done or not _signals.pending(keeper) >> (sig - 1) & 1:
            return False
        self._keeper.drain(sig)
        try:
            return os.getpgid(self._pid) == os.getpgrp()
        except OSError:
            return True  # the command is gone

    def _wait(self, timeout_s: float) -> None:
        """Wait up to ``timeout_s`` for a signal; handle it and any others pending."""
        info = signal.sigtimedwait(WAITED, timeout_s)
        while info is not None:
            sig = info.si_signo
            if sig in _ENDING:
                self._pausectl.release("signal")  # a frozen tree could not act on it
            if sig == signal.SIGCHLD:
                self._reap()
            elif sig not in FORWARDED or (
                info.si_pid == os.getpid() and info.si_code < _SI_KERNEL_MIN
            ):
                pass  # pmrun's own (e.g. SIGPIPE from its own write to a gone stderr)
            elif info.si_code < _SI_KERNEL_MIN:
                self._forward(sig)
            elif self._keeper.pid and not self._keeper_done:
                # The terminal signalled the whole foreground group, the keeper too: take
                # it off the keeper's pending set, or the next one sent to pmrun alone
                # would pass for a group signal and never reach the command.
                self._keeper.drain(sig)
            info = signal.sigtimedwait(WAITED, 0)
        self._reap()  # SIGCHLD can coalesce with one already consumed

    def _coordinator_socket(self) -> str | None:
        """The coordinator's socket path; None when running standalone. Touches nothing."""
        if not self.settings.coordinator:
            return None
        try:
            from .coordinator.paths import resolve_socket_path

            return resolve_socket_path(self.settings.socket)
        except PmrunError as e:
            self._say(no_coordinator_line(e))
            return None

    def _link_thread(self, socket_path: str, backend: dict[str, object]) -> None:
        """Thread: reach the coordinator (starting one if none answers), then register.

        Runs beside the command's start rather than before it: importing the link and
        connecting cost more than the rest of a launch, and nothing in the agent's own
        enforcement waits for them. The main thread waits for it only at the end, so
        that every registration is matched by a deregistration.
        """
        try:
            try:
                from .coordinator.link import AgentLink, ensure_coordinator

                ensure_coordinator(socket_path)
            except PmrunError as e:
                self._say(no_coordinator_line(e))
                return
            except OSError as e:
                self._say(no_coordinator_line(e.strerror))
                return
            self._pid_known.acquire()  # the command's pid is part of the registration
            if not self._pid:  # the command never started: nothing to register
                return
            lim = self.limits
            info = {
                "agent_id": self.agent_id,
                "name": self.settings.name,
                "launcher_pid": os.getpid(),
                "child_pid": self._pid,
                "argv": self.argv,
                "max_rss": lim.max_rss,
                "warn_rss": lim.warn_rss,
                "priority": self.settings.priority,
                "backend": backend,
                "started": time.time(),
                "pausable": self.settings.pause,
            }
            link = AgentLink(socket_path, info, self._on_stop_order, on_pause=self._pausectl.order)
            link.start()
            self._link = link
            self._flush_early_events()
        finally:
            self._link_ready.release()

    def _flush_early_events(self) -> None:
        """Hand the link the events that came before it existed (a stop in the first
        milliseconds of a fast runaway): the coordinator's log must have them too."""
        early = self._early_events
        while True:
            try:
                kind, fields = early.pop(0)  # atomic: each event goes out once
            except IndexError:
                return
            if self._link is not None:
                self._link.event(kind, **fields)

    def _event(self, kind: str, **fields: Any) -> None:
        if self._recorder is not None:
            self._recorder.event(kind, **fields)
            self._check_recorder()
        if self._link is not None:
            self._link.event(kind, **fields)
        elif self._socket_path:
            # The link thread may set the link between the check and the append: flush
            # once more here, so an event is never left behind.
            self._early_events.append((kind, fields))
            if self._link is not None:
                self._flush_early_events()

    # -- the run ------------------------------------------------------------------

    def run(self) -> int:
        lim = self.limits
        from ._spawn import raise_nofile_limit

        raise_nofile_limit()  # a wide tree needs fds; the command gets its own limit back
        socket_path = self._socket_path = self._coordinator_socket()
        _become_subreaper()
        if socket_path and self.settings.admission is not None:  # wait before start
            from ._admit import wait_turn

            code = wait_turn(
                socket_path, agent_id=self.agent_id, name=self.settings.name,
                priority=self.settings.priority, warn_rss=lim.warn_rss, max_rss=lim.max_rss,
                settings=self.settings.admission, say=self._say,
            )  # fmt: skip
            if code is not None:
                return code
        backend = select(
            self.settings.backend,
            agent_id=self.agent_id,
            max_rss=lim.max_rss,
            warn_rss=lim.warn_rss,
        )
        old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, WAITED)
        env = dict(os.environ)
        env["PMRUN_AGENT_ID"] = self.agent_id
        if socket_path:
            env["PMRUN_SOCKET"] = socket_path
        if self.settings.trace_heap:
            env["PMRUN_TRACEMALLOC"] = "1"
        start_wall = time.time()
        try:
            self._pid = self._keeper.start(
                self.argv,
                env,
                max_as=lim.max_as,
                prepare=backend.prepare_child,
                cleanup=backend.close,
                # Forked first, so that no thread holds a lock in the keeper's copy.
                after_fork=(
                    (
                        lambda: _thread.start_new_thread(
                            self._link_thread, (socket_path, backend.describe())
                        )
                    )
                    if socket_path
                    else None
                ),
            )
        except BaseException:
            backend.close()
            signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
            self._pid_known.release()  # the link thread sees pid 0 and registers nothing
            raise
        try:
            self._pidfd = os.pidfd_open(self._pid)
        except (OSError, AttributeError):  # pragma: no cover - kernels before 5.3
            self._pidfd = None
        self._pid_known.release()
        if self.settings.pid_fd is not None:
            _tell_pid(self.settings.pid_fd, self._pid)
        backend.keeper_pid = self._keeper.pid
        backend.started(self._pid)
        self._pausectl.bind(
            backend, self._say, self._event, agent_label(self.settings.name, self._pid)
        )
        if type(backend).wakeup_fd is not Backend.wakeup_fd:
            _thread.start_new_thread(self._relay_wakeups, (backend,))
        if self.settings.record_path:
            from .recording import Recorder

            self._recorder = Recorder(
                self.settings.record_path,
                header={
                    "command": self.argv,
                    "name": self.settings.name,
                    "pid": self._pid,
                    "limits": {
                        "max_rss": lim.max_rss,
                        "warn_rss": lim.warn_rss,
                        "max_as": lim.max_as,
                    },
                    "backend": backend.describe(),
                },
            )
            self._check_recorder()
        try:
            report = self._supervise(backend, start_wall)
        finally:
            backend.close()
            self._keeper.close()
            if self._pidfd is not None:
                os.close(self._pidfd)
        if socket_path and self._link_ready.acquire(timeout=2.0) and self._link is not None:
            self._link.close(report.to_dict())
        if self._recorder is not None:
            self._recorder.end(
                reason=report.reason, exit_status=report.exit_status, peak_rss=report.peak_rss_bytes
            )
            self._check_recorder()
        for line in end_lines(report, self._deferred):
            self._say(line)
        if self._troubles:
            report.extra["pmrun_errors"] = list(self._troubles)
        if self.settings.report_path:
            try:
                write_report(report, self.settings.report_path)
            except OSError as e:
                self._say(f"cannot write report {self.settings.report_path}: {e.strerror}")
        self.report = report
        return report.exit_status

    def _supervise(self, backend: Backend, start_wall: float) -> ExitReport:
        """Sample the tree until the command ends or must be stopped; stop what is left."""
        lim = self.limits
        stats = TreeStats(lim, time.monotonic(), _name)
        warned_at: float | None = None
        stopped_for: str | None = None  # why pmrun stops the tree, if it does
        stop: dict[str, Any] | None = None
        oom_before = backend.kernel_oom_kills()
        while self._child_status is None:
            s = backend.sample()
            crossing = stats.observe(s, time.monotonic())
            self._observe(s, stats.peak_bytes, force=crossing != policy.Crossing.NONE)
            if crossing == policy.Crossing.WARN:
                warned_at = time.time()
                self._warn(
                    warn_line(self.settings.name, self._pid, backend.counted, s.rss_bytes, lim)
                )
                self._event("warn", rss=s.rss_bytes, warn_rss=lim.warn_rss)
            elif crossing == policy.Crossing.MAX:
                stopped_for, stop = "max-rss", {"rss": s.rss_bytes, "max_rss": lim.max_rss}
                break
            if self._order is not None:
                stopped_for, stop = self._order[0], dict(self._order[1])
                break
            if backend.kernel_oom_kills() > oom_before:
                # The kernel's backstop killed a process of the group: the agent is
                # broken now; stop the rest rather than leave it half alive.
                stopped_for = "kernel-oom"
                stop = {"rss": s.rss_bytes, "oom_kills": _oom_detail(backend)}
                break
            self._pausectl.apply()  # pause/resume ordered by the coordinator
            self._wait(stats.next_interval_s(kernel_wakes=self._kernel_wakes))
        self._pausectl.release("stopping" if stopped_for else "exited")  # never stop frozen
        if stopped_for is not None:
            self._event("stop", reason=stopped_for, **(stop or {}))
            self._stop_tree(backend, stats)
        elif backend.pids():
            # The command is gone but left processes behind (daemons, workers):
            # nothing of the tree outlives pmrun.
            self._stop_tree(backend, stats)
        if self._keeper_lost:
            self._kill_adopted()
        # Wait for the command itself (it may still be exiting), then for the keeper,
        # which exits once it has reaped the last process of the tree, or once only
        # processes that refused our SIGKILL (another uid) are left.
        while self._child_status is None or not self._keeper_done:
            if self._child_status is not None and self._only_refused_left(backend):
                break
            self._wait(0.05)
        end_wall = time.time()
        status = self._child_status
        oom_kills = backend.kernel_oom_kills() - oom_before
        reason = end_reason(
            stopped_for=stopped_for,
            wait_status=status,
            oom_kills=oom_kills,
            peak_vsz_bytes=stats.peak_vsz_bytes,
            max_as_bytes=lim.max_as,
        )
        if stopped_for is None and reason == "kernel-oom":
            stop = {"oom_kills": _oom_detail(backend)}
        return build_report(
            stats,
            reason,
            wait_status=status,
            stop=stop,
            command=self.argv,
            name=self.settings.name,
            agent_id=self.agent_id,
            pid=self._pid,
            launcher_pid=os.getpid(),
            start_time=start_wall,
            end_time=end_wall,
            ru_maxrss_kib=self._keeper.command_maxrss_kib,
            backend=backend.describe(),
            kernel_peak_bytes=backend.kernel_peak_bytes(),
            kernel_oom_kills=oom_kills,
            warned_at=warned_at,
            extra=self._pausectl.summary(),
        )

    def _warn(self, line: str) -> None:
        """Say the --warn-rss line now, at the end (a terminal), or never (--quiet)."""
        if self.settings.quiet:
            return
        if _stderr_is_terminal():
            # A full-screen program (an agent's TUI) owns the terminal: a line in its
            # first row would garble it. Said at exit; the events have it at once.
            self._deferred.append(f"{line} at {time.strftime('%H:%M:%S')}")
        else:
            self._say(line)

    def _observe(self, s: Sample, peak: int, *, force: bool = False) -> None:
        """Hand one sample to the recorder and the coordinator link.

        ``force`` records the sample even inside the recorder's minimum interval: the
        sample that crossed a limit must be in the recording.
        """
        if self._recorder is not None:
            procs = {p.pid: p.rss_bytes for p in s.processes}
            names = {p: _name(p) for p in procs if not self._recorder.knows(p)}
            self._recorder.sample(s.rss_bytes, procs, names, force=force)
            self._check_recorder()
        if self._link is not None:
            # (pid, start time) identifies each process for the coordinator's orphan
            # cleanup; a start time never changes, so read it once per pid.
            known = self._start_times
            pids = []
            for p in s.processes:
                st = known.get(p.pid)
                if st is None:
                    try:
                        st = known[p.pid] = _procfs.start_time(p.pid)
                    except _procfs.ProcessGone:
                        continue
                pids.append((p.pid, st))
            if len(known) > 4 * len(pids) + 64:
                live = {p for p, _ in pids}
                self._start_times = {p: t for p, t in known.items() if p in live}
            self._link.report(s.rss_bytes, peak, pids, state=self._pausectl.state)

    def _stop_tree(self, backend: Backend, stats: TreeStats) -> None:
        """SIGTERM the whole tree, wait up to the grace, then SIGKILL whatever is left."""
        grace = self.limits.grace_s
        if grace > 0:
            backend.signal_all(signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline:
                self._wait(min(0.02, max(deadline - time.monotonic(), 0)))
                if not _live(backend) or self._only_refused_left(backend):
                    break
                s = backend.sample()
                if stats.during_grace(s.rss_bytes):
                    self._event(
                        "kill", why="grew past max-rss during the grace period", rss=s.rss_bytes
                    )
                    break
        if _live(backend):
            self._event("kill", why="grace over" if grace > 0 else "grace 0")
        if backend.describe().get("name") == "sampling" and self._keeper.pid:
            # The same freeze-and-kill walk, but one that gives up on what refuses it.
            self._refused(kill_below(self._keeper.pid, reap=self._reap))
        else:
            backend.kill_all(self._reap)
        self._reap()

    def _kill_adopted(self) -> None:
        """The keeper is gone: kill what it left to pmrun, its subreaper (by pidfd).

        A coordinator this launcher started on demand is its child too (double-forked
        daemons go to the nearest subreaper): it is spared.
        """
        self._refused(kill_below(os.getpid(), spare=self._is_coordinator, reap=self._reap))

    def _is_coordinator(self, pid: int) -> bool:
        if not self._socket_path:
            return False
        from .coordinator.spawn import coordinator_argv

        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")[:-1]
        except OSError:
            return False
        return [os.fsdecode(a) for a in argv] == coordinator_argv(self._socket_path)

    def _only_refused_left(self, backend: Backend) -> bool:
        alive = [p for p in backend.pids() if _procfs.any_alive([p])]
        return bool(alive) and all(p in _signals.REFUSED for p in alive)

    def _refused(self, pids: list[int]) -> None:
        """Say once which processes pmrun could not stop: they changed their uid."""
        if not pids:
            return
        self._trouble(refused_line(pids, _name, _owner))


def _tell_pid(fd: int, pid: int) -> None:
    """``--pid-fd``: tell whoever started pmrun (``pmrun.launch``) the command's pid."""
    try:
        os.write(fd, b"%d\n" % pid)
    except OSError:
        pass  # the reader is gone: nobody to tell
    finally:
        os.close(fd)


def _become_subreaper() -> None:
    """Make pmrun a child subreaper too: if the agent kills its keeper, the keeper's
    orphans (a setsid'd daemon) come to pmrun, which kills them, instead of to init."""
    try:
        import _prctl  # python-prctl's C module: its Python wrapper costs 1 ms more

        _prctl.prctl(_prctl.PR_SET_CHILD_SUBREAPER, 1)
    except (ImportError, OSError):  # pragma: no cover - best effort
        pass


def _owner(pid: int) -> str:
    try:
        return str(os.stat(f"/proc/{pid}").st_uid)
    except OSError:
        return "?"


def _stderr_is_terminal() -> bool:
    try:
        return os.isatty(2)
    except OSError:
        return False


def _name(pid: int) -> str:
    try:
        return _procfs.comm(pid)
    except (_procfs.ProcessGone, OSError):
        return "?"


def _oom_detail(backend: Backend) -> list[dict[str, object]]:
    """Which processes the kernel's OOM killer chose, as far as the backend can tell."""
    kills = getattr(backend, "oom_kills", None)
    if kills is None:
        return []
    try:
        return [k.to_dict() for k in kills()]
    except Exception:  # the kernel log is a best effort; never fail the report for it
        return []


def _live(backend: Backend) -> bool:
    return _procfs.any_alive(backend.pids())


def run(argv: list[str], settings: LaunchSettings) -> int:
    """Run ``argv`` under ``settings`` in this process; return pmrun's exit status."""
    return Launcher(argv, settings).run()
