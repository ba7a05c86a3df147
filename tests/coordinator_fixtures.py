"""Fixtures and helpers for the coordinator tests: real daemons, fake launchers, real agents.

Run as a script, this file is a *fake launcher*: it starts a real child that allocates
memory (optionally holding a cache behind ``register_cleanup``), registers it with the
coordinator through a real :class:`~pmrun.coordinator.link.AgentLink`, reports the tree's
RSS every 50 ms, and on a ``stop`` order kills its tree and exits 137, as the real
launcher does. It prints one line per fact the tests wait for::

    CHILD <pid>         the agent's first process
    GRANDCHILD <pid>    a process that escaped the parent-death signal (--escape)
    READY               the child allocated its memory
    STOP <reason>       the coordinator ordered a stop
    EXIT <code>

Every process a test starts is owned by :class:`Procs`, which kills and waits for it at
teardown and checks by pid that it is gone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from helpers import TIME_SCALE, agent_info, pid_alive, wait_until

PYTHON = sys.executable
PMRUN = str(Path(PYTHON).parent / "pmrun")
THIS = str(Path(__file__).resolve())
MIB = 1 << 20


def coordinator_pids(socket_path: str) -> list[int]:
    """Live processes running ``pmrun coordinator --socket socket_path``."""
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"coordinator" in argv and socket_path.encode() in argv and pid_alive(int(name)):
            found.append(int(name))
    return found


class Procs:
    """Owns processes started by a test: kills, reaps and checks them gone at teardown."""

    def __init__(self) -> None:
        self.popens: list[subprocess.Popen[Any]] = []
        self.pids: set[int] = set()

    def popen(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, **kw)
        self.popens.append(proc)
        return proc

    def adopt(self, pid: int) -> None:
        """A process we did not start directly (a grandchild, a detached daemon)."""
        self.pids.add(pid)

    def cleanup(self) -> None:
        for proc in self.popens:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
        for pid in self.pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        for proc in self.popens:
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(5)
            for stream in (proc.stdout, proc.stderr, proc.stdin):
                if stream is not None:
                    stream.close()
        every = [p.pid for p in self.popens] + sorted(self.pids)
        deadline = time.monotonic() + 5
        while any(pid_alive(p) for p in every) and time.monotonic() < deadline:
            time.sleep(0.01)
        left = [p for p in every if pid_alive(p)]
        assert not left, f"processes still alive after teardown: {left}"


# -- a real coordinator in a subprocess -------------------------------------------------


class Daemon:
    """``python -m pmrun coordinator`` on a temp socket."""

    def __init__(self, procs: Procs, socket_path: str, *args: str) -> None:
        self.procs = procs
        self.socket = socket_path
        self.args = list(args)
        self.proc: subprocess.Popen[Any] | None = None
        self.log = socket_path + ".stderr"
        self.events_path = os.path.join(os.path.dirname(socket_path), "events.jsonl")

    def start(self, wait: bool = True) -> Daemon:
        with open(self.log, "ab") as err:
            self.proc = self.procs.popen(
                [PYTHON, "-m", "pmrun", "coordinator", "--socket", self.socket,
                 "--log-level", "debug", *self.args],
                stdin=subprocess.DEVNULL, stdout=err, stderr=err,
            )  # fmt: skip
        if wait:
            self.wait_ready()
        return self

    def wait_ready(self, timeout: float = 10.0) -> None:
        from pmrun.coordinator import query
        from pmrun.errors import CoordinatorUnavailable

        def answers() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                pytest.fail(f"coordinator exited {self.proc.returncode}: {self.stderr()}")
            try:
                query.ping(self.socket, timeout_s=0.5)
                return True
            except CoordinatorUnavailable:
                return False

        wait_until(answers, timeout, "the coordinator answers")

    def stderr(self) -> str:
        try:
            return Path(self.log).read_text()[-4000:]
        except OSError:
            return ""

    def status(self) -> dict[str, Any]:
        from pmrun.coordinator import query

        return query.status(self.socket)

    def agents(self) -> dict[str, dict[str, Any]]:
        return {a["name"]: a for a in self.status()["agents"]}

    def events(self, *kinds: str) -> list[dict[str, Any]]:
        from pmrun.events import read_events

        return read_events(self.events_path, kinds=kinds or None)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(10)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)
        assert not pid_alive(self.proc.pid)


# -- fake launchers ----------------------------------------------------------------------


class FakeLauncher:
    """A fake launcher subprocess (this file as a script) and the lines it printed."""

    def __init__(self, procs: Procs, socket_path: str, name: str, mb: int, **opts: Any) -> None:
        argv = [PYTHON, THIS, "--socket", socket_path, "--name", name, "--mb", str(mb)]
        for key, value in opts.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif value not in (None, False):
                argv += [flag, str(value)]
        self.name = name
        self.procs = procs
        self.proc = procs.popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.strip()
            self.lines.append(line)
            kind, _, rest = line.partition(" ")
            if kind in ("CHILD", "GRANDCHILD"):
                self.procs.adopt(int(rest))

    def value(self, kind: str) -> str | None:
        for line in self.lines:
            k, _, rest = line.partition(" ")
            if k == kind:
                return rest
        return None

    def wait_line(self, kind: str, timeout: float = 10.0) -> str:
        def seen() -> bool:
            if self.value(kind) is not None:
                return True
            if self.proc.poll() is not None and not self._reader.is_alive():
                pytest.fail(
                    f"{self.name} exited {self.proc.returncode} before {kind}: {self.lines}"
                )
            return False

        wait_until(seen, timeout, f"{self.name} prints {kind} (so far: {self.lines})")
        return str(self.value(kind))

    @property
    def child_pid(self) -> int:
        return int(self.wait_line("CHILD"))


class PmrunAgent:
    """A real ``pmrun [OPTIONS] -- COMMAND`` launcher writing its report under ``tmp``, and
    the lines its agent printed (``out``) and it said on stderr (``err``)."""

    def __init__(self, procs: Procs, sock: str, name: str, command: list[str], *options: str,
                 tmp: Path, env: dict[str, str] | None = None) -> None:  # fmt: skip
        self.name = name
        self.report = tmp / f"{name}.json"
        self.proc = procs.popen(
            [PMRUN, "--socket", sock, "--name", name, "--report", str(self.report), *options,
             "--", *command],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            text=True, env={**os.environ, **(env or {})},
        )  # fmt: skip
        self.out: list[str] = []
        self.err: list[str] = []
        for stream, sink in ((self.proc.stdout, self.out), (self.proc.stderr, self.err)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    @staticmethod
    def _read(stream: Any, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))

    def finish(self, timeout: float = 30) -> dict[str, Any]:
        """Wait for the launcher to exit (``timeout`` stretched like every deadline); its report."""
        self.proc.wait(timeout * TIME_SCALE)
        wait_until(lambda: self.report.exists(), 5, f"{self.name}'s report")
        return json.loads(self.report.read_text())


# Code run by the fake launcher's child: allocate, optionally hold a cache behind a
# cleanup handler, then sleep. It dies with its parent (PR_SET_PDEATHSIG).
CHILD_CODE = r"""
import ctypes, os, sys, time, signal
ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
if os.getppid() == 1:
    sys.exit(1)
mb, cache_mb, escape = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "1"
ballast = bytearray(b"x") * (mb << 20)
cache = []
if cache_mb:
    from pmrun.client import register_cleanup
    cache = [bytearray(b"c") * (1 << 20) for _ in range(cache_mb)]
    def evict(fraction):
        n = int(len(cache) * fraction + 0.5)
        del cache[:n]
        return n << 20
    register_cleanup("cache", evict, stats=lambda: {"bytes": len(cache) << 20})
if escape:
    pid = os.fork()
    if pid == 0:
        os.setsid()  # no parent-death signal: only the coordinator can clean it up
        while True:
            time.sleep(60)
    print("GRANDCHILD", pid, flush=True)
print("READY", flush=True)
while True:
    time.sleep(60)
"""


def fake_launcher_main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--socket", required=True)
    ap.add_argument("--name", required=True)
    ap.add_argument("--mb", type=int, default=10)
    ap.add_argument("--cache-mb", type=int, default=0)
    ap.add_argument("--priority", type=int, default=0)
    ap.add_argument("--escape", action="store_true")
    ap.add_argument("--interval", type=float, default=0.05)
    args = ap.parse_args(argv)

    from pmrun import _procfs
    from pmrun.coordinator.link import AgentLink

    agent_id = uuid.uuid4().hex
    env = dict(os.environ, PMRUN_SOCKET=args.socket, PMRUN_AGENT_ID=agent_id)
    child = subprocess.Popen(
        [PYTHON, "-c", CHILD_CODE, str(args.mb), str(args.cache_mb), "1" if args.escape else "0"],
        env=env,
    )
    print("CHILD", child.pid, flush=True)
    order: list[tuple[str, dict[str, Any]]] = []
    wake = threading.Event()

    def on_stop(reason: str, detail: dict[str, Any]) -> None:
        order.append((reason, detail))
        wake.set()

    info = agent_info(
        args.name, agent_id=agent_id, child_pid=child.pid, argv=["fake", args.name],
        priority=args.priority, backend={"name": "sampling", "reason": "fake launcher"},
    )  # fmt: skip
    link = AgentLink(args.socket, info, on_stop, respawn_after_s=None)
    link.start()
    signal.signal(signal.SIGTERM, lambda *_: wake.set())
    peak = 0
    while True:
        if child.poll() is not None:
            link.close({"exit_status": child.returncode, "reason": "exit"})
            print("EXIT", child.returncode, flush=True)
            return child.returncode
        if order:
            reason = order[0][0]
            print("STOP", reason, flush=True)
            link.event("stop", reason=reason)
            for pid in reversed(_procfs.descendants([child.pid])):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            child.wait()
            link.close({"exit_status": 137, "reason": reason, "peak_rss_bytes": peak})
            print("EXIT 137", flush=True)
            return 137
        if wake.is_set() and not order:  # SIGTERM
            child.kill()
            child.wait()
            link.close({"exit_status": 143, "reason": "signal"})
            return 143
        pids, rss = [], 0
        for pid in _procfs.descendants([child.pid]):
            try:
                rss += _procfs.statm(pid)[1]
                pids.append((pid, _procfs.start_time(pid)))
            except _procfs.ProcessGone:
                continue
        peak = max(peak, rss)
        link.report(rss, peak, pids)
        wake.wait(args.interval)


# -- a coordinator inside the test process -----------------------------------------------


class InProcess:
    """A :class:`~pmrun.coordinator.server.Coordinator` on its own loop in a thread.

    For tests that inject a clock or a fake /proc, or call ``step()`` themselves.
    """

    def __init__(self, settings: Any, **kw: Any) -> None:
        from pmrun.coordinator.endpoint import bind_socket
        from pmrun.coordinator.server import Coordinator

        self.settings = settings
        self.sock = bind_socket(settings.socket_path)
        self.coord = Coordinator(settings, **kw)
        self._ready = threading.Event()
        self.loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10), "in-process coordinator did not start"

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.coord.serve(self.sock, ready=self._ready.set)

        asyncio.run(main())

    def call(self, coro: Any, timeout: float = 10.0) -> Any:
        assert self.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def sync(self, fn: Callable[[], Any]) -> Any:
        """Run ``fn`` on the coordinator's loop (reads state without races)."""

        async def run() -> Any:
            return fn()

        return self.call(run())

    def close(self) -> None:
        assert self.loop is not None
        self.loop.call_soon_threadsafe(self.coord.request_stop)
        self._thread.join(10)
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.settings.socket_path)


def fake_proc(
    root: Path, *, total_mib: int = 1024, available_mib: int = 1024, psi: float = 0.0
) -> str:
    """A fake /proc with meminfo and pressure/memory; rewrite it to change the figures."""
    (root / "pressure").mkdir(parents=True, exist_ok=True)
    (root / "meminfo").write_text(
        f"MemTotal: {total_mib * 1024} kB\nMemFree: {available_mib * 1024} kB\n"
        f"MemAvailable: {available_mib * 1024} kB\n"
    )
    (root / "pressure" / "memory").write_text(
        f"some avg10={psi:.2f} avg60=0.00 avg300=0.00 total=0\n"
        "full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    return str(root)


if __name__ == "__main__":
    sys.exit(fake_launcher_main())


def stop_every_coordinator(socket_path: str) -> None:
    """Stop whichever coordinator serves, and one the launcher started on demand that was
    still starting (it gives way to a live one, or serves once none is left): until no
    coordinator of this test is left."""
    from pmrun.demo import pids_with_token

    def ours() -> list[int]:
        found = []
        for pid in pids_with_token(os.environ["PMRUN_TEST_TOKEN"], "PMRUN_TEST_TOKEN"):
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
            except OSError:
                continue
            if b"coordinator" in argv:
                found.append(pid)
        return found

    def none_left() -> bool:
        stop = subprocess.run(
            [PYTHON, "-m", "pmrun", "coordinator", "stop", "--socket", socket_path],
            capture_output=True,
            text=True, timeout=60,
        )  # fmt: skip
        assert stop.returncode == 0, stop.stderr
        return not ours()

    wait_until(none_left, 60, "every coordinator of the test stopped")
