"""``python -m pmrun.demo [--quick]``: a small fleet under one pool, start to finish in seconds.

Four agents (two Python, two Node; one holds its prompts in a :class:`pmrun.SharedPromptCache`
attached to the coordinator) run under ``pmrun`` on a private socket, so the coordinator starts
on demand and sees only them. One Node agent then grows until the pool is tight: the coordinator
asks the cache to shed first (the freed bytes and the RSS drop it measured are printed from its
events), and only when that is not enough stops one agent, which exits 137 with reason ``pool``.
Then ``pmrun status``, the last ``pmrun events`` and a ``pmrun plot`` of the run.

Everything it starts is stopped when it ends, also on Ctrl-C or SIGTERM: the agents, the
coordinator that started on demand, and any process that still carries the demo's token in
its environment. Exit status: 0 when every step happened, 1 when one did not (it says which),
130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from . import _procfs
from .sizes import format_size

MIB = 1 << 20
TOKEN_VAR = "PMRUN_DEMO_TOKEN"  # every process the demo starts inherits it: found at the end

# The agents, written to OUT/agents/ so that what ran can be read afterwards.
PLANNER_PY = '''\
"""planner: a Python agent whose prompts live in a pmrun SharedPromptCache."""
import signal
import sys

from pmrun import SharedPromptCache

mb = int(sys.argv[1])
# auto_attach=False: attached below once filled, so that the stats it sends when it
# registers already show what it holds (they are pushed again every 5 s).
cache = SharedPromptCache(max_bytes=f"{mb + 32}M", max_entries=100_000, ttl=3600, auto_attach=False)
base = "You are a careful coding agent. Read the file, make a plan, then change it. "
i = 0
while cache.cached_bytes < mb << 20:  # 64 KiB prompts, each its own string
    cache.set(f"prompt:{i}", f"[prompt {i}] " + base * (64 * 1024 // len(base)))
    i += 1
cache.attach()  # register with the coordinator that pmrun names in PMRUN_SOCKET
print(f"READY {len(cache)} prompts, {cache.cached_bytes >> 20} MiB cached", flush=True)
while True:
    signal.pause()  # the coordinator's eviction requests are answered on the client's thread
'''

REVIEWER_PY = '''\
"""reviewer: a Python agent that holds MB MiB of working memory and waits."""
import signal
import sys

held = [bytearray(b"r") * (1 << 20) for _ in range(int(sys.argv[1]))]
print(f"READY holding {len(held)} MiB", flush=True)
while True:
    signal.pause()
'''

TESTER_JS = """\
// tester: a Node agent that holds MB MiB of buffers and waits.
const held = [];
for (let i = 0; i < Number(process.argv[2]); i++) held.push(Buffer.alloc(1 << 20, i & 255));
console.log(`READY holding ${held.length} MiB`);
setInterval(() => {}, 1 << 30);
"""

CODER_JS = """\
// coder: a Node agent that, once told to go (a line on stdin), grows by STEP MiB every
// EVERY ms up to CAP MiB: the agent that tightens the pool.
const [step, every, cap] = process.argv.slice(2).map(Number);
const held = [];
console.log("READY waiting for go");
process.stdin.once("data", () => {
  const timer = setInterval(() => {
    if (held.length * step >= cap) return clearInterval(timer);
    held.push(Buffer.alloc(step << 20, 7));
  }, every);
});
setInterval(() => {}, 1 << 30);
"""


@dataclass(frozen=True)
class Plan:
    """The sizes of one demo run; the quick one is for the test suite."""

    pool: str  # the coordinator's --pool
    cache_mb: int  # prompts the planner caches
    reviewer_mb: int
    tester_mb: int
    step_mb: int  # the coder grows by this much ...
    every_ms: int  # ... this often ...
    cap_mb: int  # ... up to this (never reached: the pool stops it first)
    coder_max: str  # the coder's own --max-rss, above what the pool lets it reach
    coder_warn: str  # and its --warn-rss, crossed on the way: a marker in its plot
    deadline_s: float  # the whole run, start to stop


FULL = Plan("600M", 150, 80, 60, 8, 100, 550, coder_max="700M", coder_warn="200M", deadline_s=50)
QUICK = Plan("400M", 80, 30, 30, 10, 50, 400, coder_max="500M", coder_warn="150M", deadline_s=40)


@dataclass
class Agent:
    name: str
    what: str  # shown in the fleet table
    argv: list[str]  # the pmrun command line
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None


def say(text: str = "") -> None:
    print(text, flush=True)


def step(n: int, title: str) -> None:
    say()
    say(f"== {n}. {title}")


def _coordinators_with_token(token: str) -> list[int]:
    """The demo's coordinator daemons (``pmrun coordinator`` carrying ``token``)."""
    found = []
    for pid in pids_with_token(token):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"pmrun" in argv and b"coordinator" in argv:
            found.append(pid)
    return found


def pids_with_token(token: str, var: str = TOKEN_VAR) -> list[int]:
    """Live processes whose environment has ``var=token`` (this process excluded): what a
    run started is found by the token it gave every process (the test suite's leak check
    looks for its own variable the same way)."""
    needle = f"{var}={token}".encode()
    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            with open(f"/proc/{name}/environ", "rb") as f:
                env = f.read()
            state = _procfs.stat(int(name)).state
        except (OSError, _procfs.ProcessGone):
            continue  # gone, or not ours to read
        if needle in env.split(b"\0") and state not in ("Z", "X"):
            found.append(int(name))
    return found


def _wait(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.05) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise DemoFailed(f"{what}: not within {timeout_s:.0f}s")
        time.sleep(interval_s)


class DemoFailed(Exception):
    """A step of the demo did not happen; the message says which."""


class EventTail:
    """New lines of the coordinator's event log, as they are written."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._f: IO[str] | None = None
        self._partial = ""
        self.seen: list[dict[str, Any]] = []

    def new(self) -> list[dict[str, Any]]:
        if self._f is None:
            try:
                self._f = open(self.path)
            except FileNotFoundError:
                return []
        text = self._partial + self._f.read()
        lines = text.split("\n")
        self._partial = lines.pop()
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        self.seen.extend(out)
        return out

    def close(self) -> None:
        if self._f is not None:
            self._f.close()


class Demo:
    def __init__(self, plan: Plan, out: Path, runtime: Path) -> None:
        self.plan = plan
        self.out = out
        self.runtime = runtime
        self.socket = str(runtime / "coordinator.sock")
        self.events_path = out / "events.jsonl"
        self.token = uuid.uuid4().hex
        self.bin = Path(sys.executable).parent
        self.pmrun = str(self.bin / "pmrun") if (self.bin / "pmrun").exists() else "pmrun"
        self.agents: list[Agent] = []
        self.coordinator_pid: int | None = None
        self.names: dict[str, str] = {}  # agent id -> name
        self.t0 = time.monotonic()
        self.env = {
            **os.environ,
            TOKEN_VAR: self.token,
            "XDG_RUNTIME_DIR": str(runtime),
            "PMRUN_SOCKET": self.socket,  # the agents' and the commands' coordinator ...
            "PMRUN_POOL": plan.pool,  # ... started on demand with these settings
            "PMRUN_EVENTS": str(self.events_path),
            # Only the pool decides here: other programs' memory pressure on this machine
            # (PSI) must not make the demo stop someone for another reason.
            "PMRUN_PSI_THRESHOLD": "off",
            # The grower is paused first (pause before kill); it cannot fit however long it
            # waits, so after a short pause it is the one stopped.
            "PMRUN_MAX_PAUSE": "2",
            "PYTHONUNBUFFERED": "1",
        }
        self.tail = EventTail(self.events_path)

    # -- helpers ---------------------------------------------------------------------

    def elapsed(self) -> str:
        return f"[{time.monotonic() - self.t0:5.1f}s]"

    def run_pmrun(self, *args: str, show: bool = True) -> subprocess.CompletedProcess[str]:
        if show:
            say(f"$ pmrun {shlex.join(args)}")
        done = subprocess.run(
            [self.pmrun, *args], env=self.env, capture_output=True, text=True, timeout=60
        )
        if show:
            text = (done.stdout + done.stderr).rstrip()
            say("\n".join("  " + line for line in text.splitlines()))
        return done

    def status(self) -> dict[str, Any]:
        from .diagnostics.status import gather

        return gather(self.socket)

    def agent(self, name: str) -> Agent:
        return next(a for a in self.agents if a.name == name)

    # -- the fleet -------------------------------------------------------------------

    def write_agents(self) -> dict[str, str]:
        code = self.out / "agents"
        code.mkdir(parents=True, exist_ok=True)
        files = {
            "planner.py": PLANNER_PY,
            "reviewer.py": REVIEWER_PY,
            "tester.js": TESTER_JS,
            "coder.js": CODER_JS,
        }
        for name, text in files.items():
            (code / name).write_text(text)
        return {name: str(code / name) for name in files}

    def plan_fleet(self) -> None:
        p = self.plan
        files = self.write_agents()
        node = shutil.which("node")
        if node is None:
            raise DemoFailed("node is not installed (scripts/setup installs it)")
        py = sys.executable

        def launch(name: str, limits: str, *cmd: str, record: bool = False) -> list[str]:
            argv = ["--name", name, *limits.split(), "--grace", "1"]
            argv += ["--report", str(self.out / f"{name}.report.json")]
            if record:
                argv += ["--record", str(self.out / f"{name}.jsonl")]
            return [*argv, "--", *cmd]

        self.agents = [
            Agent(
                "planner",
                f"Python, SharedPromptCache of {p.cache_mb} MiB prompts",
                launch(
                    "planner",
                    "--max-rss 400M",
                    py,
                    files["planner.py"],
                    str(p.cache_mb),
                    record=True,
                ),
            ),
            Agent(
                "reviewer",
                f"Python, holds {p.reviewer_mb} MiB",
                launch("reviewer", "--max-rss 300M", py, files["reviewer.py"], str(p.reviewer_mb)),
            ),
            Agent(
                "tester",
                f"Node, holds {p.tester_mb} MiB",
                launch("tester", "--max-rss 300M", node, files["tester.js"], str(p.tester_mb)),
            ),
            Agent(
                "coder",
                f"Node, will grow by {p.step_mb} MiB every {p.every_ms} ms",
                launch(
                    "coder",
                    f"--max-rss {p.coder_max} --warn-rss {p.coder_warn}",
                    node,
                    files["coder.js"],
                    str(p.step_mb),
                    str(p.every_ms),
                    str(p.cap_mb),
                    record=True,
                ),
            ),
        ]

    def start_fleet(self) -> None:
        for a in self.agents:
            shown = [Path(w).name if w.startswith("/") else w for w in a.argv]
            say(f"$ pmrun {shlex.join(shown)}")
            a.log = self.out / f"{a.name}.log"
            with open(a.log, "wb") as log:
                a.proc = subprocess.Popen(
                    [self.pmrun, *a.argv],
                    stdin=subprocess.PIPE,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=self.env,
                    start_new_session=True,  # Ctrl-C reaches the demo, which stops them in order
                    preexec_fn=_die_with_parent,
                )
        for a in self.agents:
            _wait(lambda a=a: self._ready(a), 30, f"{a.name} ready")

    def _ready(self, a: Agent) -> bool:
        assert a.proc is not None and a.log is not None
        if a.proc.poll() is not None:
            raise DemoFailed(f"{a.name} exited {a.proc.returncode}: {a.log.read_text()[-500:]}")
        return b"READY" in a.log.read_bytes()

    def fleet_registered(self) -> dict[str, Any] | None:
        doc = self.status()
        agents = {a.get("name"): a for a in doc.get("agents") or []}
        services = (agents.get("planner") or {}).get("services") or []
        held = sum(int(s.get("bytes") or 0) for s in services)
        # The cache's size reaches the coordinator with its next stats: wait for it.
        if len(agents) < len(self.agents) or held < 0.9 * self.plan.cache_mb * MIB:
            return None
        return doc

    def show_fleet(self, doc: dict[str, Any]) -> None:
        c = doc["coordinator"]
        self.coordinator_pid = int(c["pid"])
        pool = doc["pool"]
        say(
            f"coordinator started on demand by the launchers: pid {c['pid']}, socket "
            f"{self.socket}, pool {format_size(pool['limit_bytes'])}"
        )
        for a in doc["agents"]:
            self.names[a["id"]] = a["name"]
            what = self.agent(a["name"]).what
            services = ", ".join(
                f"service {s.get('name')} holding {format_size(int(s.get('bytes') or 0))}"
                for s in a.get("services") or []
            )
            tail = f"; {services}" if services else ""
            say(f"  {a['name']:<9} {format_size(int(a.get('rss_bytes') or 0)):>7}  {what}{tail}")
        say(f"  pool: {format_size(pool['used_bytes'])} of {format_size(pool['limit_bytes'])} used")

    # -- the pressure ------------------------------------------------------------------

    def narrate(self, e: dict[str, Any]) -> None:
        kind = e.get("kind")
        if kind == "agent.register":
            self.names[str(e.get("agent"))] = str(e.get("name"))
        elif kind == "pressure":
            ratio = (e.get("ratios") or {}).get("pool")
            used = e.get("pool_used_bytes")
            figures = f" (pool {format_size(used)}, {ratio:.0%})" if ratio is not None else ""
            say(f"{self.elapsed()} pressure {e.get('previous')} -> {e.get('pressure')}{figures}")
        elif kind == "evict.result":
            say(
                f"{self.elapsed()} evict ({e.get('pressure')}, asked for "
                f"{float(e.get('fraction') or 0):.0%}): "
                f"freed {format_size(int(e.get('freed_bytes') or 0))} accounted, "
                f"RSS fell by {format_size(int(e.get('rss_drop_bytes') or 0))}"
            )
            for r in e.get("answered") or []:
                agent = self.names.get(str(r.get("agent")), str(r.get("agent")))
                say(
                    f"          {r.get('service')} in {agent} (pid {r.get('pid')}): freed "
                    f"{format_size(int(r.get('bytes') or 0))}, its RSS fell by "
                    f"{format_size(int(r.get('rss_drop') or 0))}"
                )
        elif kind == "stop.decision":
            victims = ", ".join(
                f"{v.get('name')} ({format_size(int(v.get('bytes') or 0))})"
                for v in e.get("victims") or []
            )
            say(
                f"{self.elapsed()} still over the pool after evicting: stop {victims or 'no one'}"
                f" (reason {e.get('reason')}, {format_size(int(e.get('needed_bytes') or 0))}"
                f" to free, policy {e.get('policy')}, counted by {e.get('counted')})"
            )
        elif kind == "agent.pause":
            say(
                f"{self.elapsed()} still over after evicting: pause {e.get('name')} "
                f"({format_size(int(e.get('bytes') or 0))}, the one growing) instead of stopping"
                f" anyone; it may wait up to {self.env['PMRUN_MAX_PAUSE']} s for memory"
            )
        elif kind == "agent.resume":
            say(f"{self.elapsed()} resume {e.get('name')} ({e.get('why') or 'headroom'})")
        elif kind == "agent.deregister":
            report = e.get("report") or {}
            say(
                f"{self.elapsed()} {e.get('name')} exited {report.get('exit_status')}"
                f" (reason {report.get('reason')})"
            )

    def tighten(self) -> None:
        coder = self.agent("coder")
        assert coder.proc is not None and coder.proc.stdin is not None
        coder.proc.stdin.write(b"go\n")
        coder.proc.stdin.flush()
        last_print = 0.0
        deadline = time.monotonic() + self.plan.deadline_s
        while coder.proc.poll() is None:
            if time.monotonic() > deadline:
                raise DemoFailed("the coordinator did not stop the growing agent in time")
            for e in self.tail.new():
                self.narrate(e)
            if time.monotonic() - last_print >= 1.0:
                last_print = time.monotonic()
                self._pool_line()
            time.sleep(0.05)
        coder.proc.wait()
        _wait(lambda: self._deregistered("coder"), 10, "coder's exit in the event log")

    def _pool_line(self) -> None:
        doc = self.status()
        pool, pressure = doc.get("pool") or {}, doc.get("pressure") or {}
        if not pool:
            return
        rss = {a["name"]: int(a.get("rss_bytes") or 0) for a in doc.get("agents") or []}
        agents = ", ".join(f"{n} {format_size(b)}" for n, b in rss.items())
        limit = pool.get("limit_bytes") or 1
        say(
            f"{self.elapsed()} pool {format_size(pool['used_bytes'])} of {format_size(limit)}"
            f" ({pool['used_bytes'] / limit:.0%}, {pressure.get('level')}): {agents}"
        )

    def _deregistered(self, name: str) -> bool:
        for e in self.tail.new():  # told as they come, like every other event
            self.narrate(e)
        return any(
            e.get("kind") == "agent.deregister" and e.get("name") == name for e in self.tail.seen
        )

    def check(self) -> None:
        """The promises the demo shows, checked on the coordinator's own event log."""
        seen = self.tail.seen
        evictions = [
            i
            for i, e in enumerate(seen)
            if e.get("kind") == "evict.result" and int(e.get("freed_bytes") or 0) > 0
        ]
        stops = [i for i, e in enumerate(seen) if e.get("kind") == "stop.sent"]
        if not evictions:
            raise DemoFailed("the cache was never asked to shed (no evict.result freed bytes)")
        if len(stops) != 1:
            raise DemoFailed(f"expected one agent stopped, the coordinator stopped {len(stops)}")
        if evictions[0] > stops[0]:
            raise DemoFailed("an agent was stopped before the cache was asked to shed")
        stopped = seen[stops[0]]
        coder = self.agent("coder")
        assert coder.proc is not None
        report = json.loads((self.out / "coder.report.json").read_text())
        if stopped.get("name") != "coder" or coder.proc.returncode != 137:
            raise DemoFailed(
                f"expected coder stopped with exit 137, got {stopped.get('name')} stopped and "
                f"coder's exit {coder.proc.returncode}"
            )
        for a in self.agents:
            if a is not coder and a.proc is not None and a.proc.poll() is not None:
                raise DemoFailed(f"{a.name} ended ({a.proc.returncode}), it should still run")
        say(
            f"STOPPED coder: exit {coder.proc.returncode}, reason {report.get('reason')}: "
            f"{report.get('message')}"
        )
        freed = sum(int(seen[i].get("freed_bytes") or 0) for i in evictions)
        drop = sum(int(seen[i].get("rss_drop_bytes") or 0) for i in evictions)
        say(
            f"EVICTED first: {len(evictions)} eviction(s) before the stop freed "
            f"{format_size(freed)} accounted, the cache's RSS fell by {format_size(drop)}; "
            f"the other {len(self.agents) - 1} agents kept running"
        )

    # -- the whole run ----------------------------------------------------------------

    def run(self) -> int:
        p = self.plan
        say(
            f"pmrun demo: 4 agents (Python and Node) under one {p.pool} pool, on a private "
            f"coordinator socket; files in {self.out}"
        )
        self.plan_fleet()
        step(1, "start the fleet (each agent through pmrun; the first starts the coordinator)")
        self.start_fleet()
        doc = _wait(self.fleet_registered, 30, "all agents registered with the coordinator")
        for e in self.tail.new():
            if e.get("kind") == "agent.register":
                self.narrate(e)
        self.show_fleet(doc)
        step(
            2,
            "coder grows: the pool tightens, the cache sheds first, the grower is paused,"
            " then stopped as it cannot fit",
        )
        self.tighten()
        self.check()
        # The pressure level is left on the coordinator's next pass: wait for it, so that
        # the snapshot shows the fleet after the stop (it is only a nicer picture: no failure).
        try:
            _wait(lambda: self._calm(), 10, "pressure back to normal")
        except DemoFailed:
            pass
        step(3, "the coordinator's view now")
        self.run_pmrun("status", "--socket", self.socket)
        step(4, "its last events")
        self.run_pmrun("events", "--socket", self.socket, "-n", "12")
        step(5, "stop the rest of the fleet (SIGTERM to each pmrun, forwarded to its agent)")
        self.stop_fleet()
        step(6, "plots of the run (pmrun --record, then pmrun plot)")
        pngs = []
        for name in ("coder", "planner"):
            png = str(self.out / f"{name}.png")
            done = self.run_pmrun("plot", str(self.out / f"{name}.jsonl"), "-o", png)
            if done.returncode != 0 or not os.path.exists(png):
                raise DemoFailed(f"pmrun plot wrote no {png}")
            pngs.append(png)
        say(f"PLOT {pngs[0]}  (the coder: its growth, its warning, the stop by the pool)")
        say(f"PLOT {pngs[1]}  (the planner: its RSS falls at each eviction of the cache)")
        return 0

    def _calm(self) -> bool:
        self.tail.new()
        return (self.status().get("pressure") or {}).get("level") == "normal"

    def stop_fleet(self) -> None:
        running = [a for a in self.agents if a.proc is not None and a.proc.poll() is None]
        for a in running:
            assert a.proc is not None
            a.proc.send_signal(signal.SIGTERM)
        for a in running:
            assert a.proc is not None
            code = a.proc.wait(30)
            say(f"  {a.name}: exit {code}{_report_reason(self.out / f'{a.name}.report.json')}")

    def cleanup(self) -> int:
        """Stop everything started, in order; return how many processes had to be killed."""
        for a in self.agents:
            if a.proc is not None and a.proc.poll() is None:
                a.proc.send_signal(signal.SIGTERM)  # pmrun forwards it to the agent's tree
        for a in self.agents:
            if a.proc is None:
                continue
            try:
                a.proc.wait(15)
            except subprocess.TimeoutExpired:
                a.proc.kill()
                a.proc.wait()
            if a.proc.stdin is not None:
                a.proc.stdin.close()
        pid = self.coordinator_pid or self._coordinator_pid()
        # Every coordinator the launchers started on demand: the one serving, and one that
        # may still be waiting for the lock (launchers starting at the same instant), which
        # would take over the moment the first one stops.
        for daemon in {*([pid] if pid else []), *_coordinators_with_token(self.token)}:
            try:
                os.kill(daemon, signal.SIGTERM)
            except ProcessLookupError:
                pass
        self.tail.close()
        left: list[int] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = pids_with_token(self.token)
            if not left:
                break
            time.sleep(0.05)
        for leftover in left:
            try:
                os.kill(leftover, signal.SIGKILL)
            except ProcessLookupError:
                pass
        log = self.runtime / "coordinator.log"
        if log.exists():
            shutil.copy(log, self.out / "coordinator.log")
        shutil.rmtree(self.runtime, ignore_errors=True)
        stopped = sum(1 for a in self.agents if a.proc is not None)
        coordinator = f" and the coordinator (pid {pid})" if pid else ""
        if left:
            say(f"CLEANUP killed {len(left)} processes left behind: {left}")
        else:
            say(f"CLEANUP {stopped} agents{coordinator} are gone; no process left")
        return len(left)

    def _coordinator_pid(self) -> int | None:
        try:
            c = self.status().get("coordinator") or {}
        except Exception:
            return None
        return int(c["pid"]) if c.get("pid") else None


def _report_reason(path: Path) -> str:
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError):
        return ""
    return f" (reason {report.get('reason')}, peak {format_size(int(report.get('peak_rss_bytes') or 0))})"


def _die_with_parent() -> None:
    """In a launcher before exec: SIGTERM if the demo dies, so not even kill -9 leaves agents."""
    import prctl

    prctl.set_pdeathsig(signal.SIGTERM)


def _on_sigterm(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m pmrun.demo", description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller and faster (for the tests)")
    ap.add_argument("--out", metavar="DIR", help="where the plots, logs and reports go")
    args = ap.parse_args(argv)
    plan = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="pmrun-demo-"))
    out.mkdir(parents=True, exist_ok=True)
    # Its own short directory: a socket path is limited to 107 bytes.
    runtime = Path(tempfile.mkdtemp(prefix="pmd", dir="/tmp"))
    demo = Demo(plan, out.resolve(), runtime)
    signal.signal(signal.SIGTERM, _on_sigterm)
    code = 1
    try:
        code = demo.run()
    except DemoFailed as e:
        say(f"FAILED {e}")
    except KeyboardInterrupt:
        say("\ninterrupted: stopping everything the demo started")
        code = 130
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup
        if demo.cleanup() and code == 0:
            code = 1
    return code


if __name__ == "__main__":
    sys.exit(main())
