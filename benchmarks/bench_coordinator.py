"""What the coordinator costs: eviction latency by number of services, and CPU at rest.

Measurements, each with a baseline taken in the same run:

1. Baseline round trips on the same socket type (AF_UNIX stream): a plain echo to
   another process, and ``ping``/``pong`` with the coordinator.
2. Eviction latency for 1, 10 and 100 connected services (each its own process using
   ``pmrun.client.register_cleanup``): the time from the start of a broadcast to the last
   service's answer, as the coordinator measures it (``elapsed_s``), over many manual
   broadcasts (``cleanup`` requests: the same code path as a pressure broadcast), median
   and p99. With 100 services also the real pressure path: a fake agent crosses the pool
   and the time from detection to the last answer is read from the event log.
   Target: p99 under 20 ms at 100 services. Also 100 services as 100 connections of the
   real client in one process (in-process services), and 100 connections answered by two
   minimal responder processes (a selector loop, no pmrun): the coordinator's own share.
3. Coordinator CPU while 100 agents are registered and reporting: "steady" (each link
   samples every 10 ms and sends its heartbeat every second) and "changing" (each agent
   also moves by 10 MiB every ~2 s, a meaningful change sent at once), from the CPU time
   in ``/proc/PID/task/*/schedstat`` over ``--cpu-seconds``; idle as the baseline.
   Target: under 2% of one core (steady).

Results are printed and written to benchmarks/results/coordinator.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pmrun.coordinator import protocol as p
from pmrun.coordinator import query
from pmrun.errors import CoordinatorUnavailable
from pmrun.events import read_new

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "coordinator.json"
PY = sys.executable
MIB = 1 << 20

ECHO_SERVER = r"""
import socket, sys, os
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(1)
print("READY", flush=True)
c, _ = s.accept()
f = c.makefile("rb")
for line in f:
    c.sendall(line)
"""

SERVICE = r"""
import sys, time
from pmrun.client import register_cleanup
register_cleanup("svc", lambda fraction: 0)
time.sleep(3600)
"""

# The real client, N connections in one process (the registry shares one connection per
# process, so the connections are made directly): in-process services.
IN_PROCESS = r"""
import sys, time
from pmrun import client
n, path = int(sys.argv[1]), sys.argv[2]
conns = []
for i in range(n):
    conn = client._Connection(path, None)
    conn.add(client.Registration(f"svc{i}", lambda fraction: 0, None, conn))
    conns.append(conn)
time.sleep(3600)
"""

# Minimal responders: many service connections per process, one selector loop, no pmrun
# import: what the coordinator's fan-out and fan-in cost without the services' own CPU.
RESPONDERS = r"""
import json, os, selectors, socket, sys
n, path = int(sys.argv[1]), sys.argv[2]
sel = selectors.DefaultSelector()
for j in range(n):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    s.sendall(json.dumps({"type": "service", "version": 1, "name": f"r{os.getpid()}-{j}",
                          "pid": os.getpid()}).encode() + b"\n")
    sel.register(s, selectors.EVENT_READ, [b"", f"r{os.getpid()}-{j}"])
while True:
    for key, _ in sel.select():
        s, state = key.fileobj, key.data
        data = s.recv(65536)
        if not data:
            sys.exit(0)
        state[0] += data
        while b"\n" in state[0]:
            line, state[0] = state[0].split(b"\n", 1)
            m = json.loads(line)
            if m["type"] == "evict":
                s.sendall(b'{"type":"evicted","version":1,"id":%d,"results":[{"name":"%s",'
                          b'"bytes":0,"rss_drop":0}]}\n' % (m["id"], state[1].encode()))
"""

AGENTS = r"""
import os, sys, time, random
from pmrun.coordinator.link import AgentLink
n, socket_path, changing = int(sys.argv[1]), sys.argv[2], sys.argv[3] == "changing"
links = []
for i in range(n):
    info = {"agent_id": f"bench-{i}", "name": f"agent{i}", "launcher_pid": os.getpid(),
            "child_pid": os.getpid(), "argv": ["bench"], "max_rss": 1 << 30,
            "warn_rss": 1 << 29, "priority": 0, "backend": {}, "started": time.time()}
    link = AgentLink(socket_path, info, lambda r, d: None)
    link.report(100 << 20, 100 << 20, [])
    link.start()
    links.append(link)
print("READY", flush=True)
rng = random.Random(1)
step = 0
while True:  # every agent samples every 10 ms; the links decide what to send
    step += 1
    for i, link in enumerate(links):
        # "changing": each agent moves by 10 MiB every ~2 s (a meaningful change), else
        # only by < 1 MiB (heartbeats only).
        big = changing and ((step + i * 2) // 200) % 2
        rss = (100 << 20) + big * (10 << 20) + rng.randrange(1 << 20)
        link.report(rss, rss, [(os.getpid(), 1)])
    time.sleep(0.01)
"""


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q / 100 * (len(s) - 1))))]


def summary_ms(values_s: list[float]) -> dict[str, float]:
    ms = [v * 1000 for v in values_s]
    return {
        "n": len(ms),
        "median_ms": round(statistics.median(ms), 3),
        "p99_ms": round(pct(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def wait_for(pred: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = pred()
        if v:
            return v
        time.sleep(0.02)
    raise SystemExit(f"benchmark: timed out waiting for {what}")


def cpu_seconds(pid: int) -> float:
    """CPU time of every thread of ``pid`` (schedstat: nanoseconds, finer than utime+stime)."""
    total = 0
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        except (OSError, ValueError):
            continue
    return total / 1e9


class Run:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.socket = str(tmp / "c.sock")
        self.events = str(tmp / "events.jsonl")
        self.children: list[subprocess.Popen[Any]] = []

    def spawn(self, argv: list[str], **kw: Any) -> subprocess.Popen[Any]:
        proc = subprocess.Popen(argv, **kw)
        self.children.append(proc)
        return proc

    def stop(self, procs: list[subprocess.Popen[Any]]) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
        for proc in procs:
            proc.wait()
            if proc in self.children:
                self.children.remove(proc)

    def close(self) -> None:
        self.stop(list(self.children))


def baseline_echo(run: Run, rounds: int) -> dict[str, float]:
    path = str(run.tmp / "echo.sock")
    server = run.spawn([PY, "-c", ECHO_SERVER, path], stdout=subprocess.PIPE, text=True)
    assert server.stdout is not None and server.stdout.readline().strip() == "READY"
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    frame = p.encode(p.Ping(id=1))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        s.sendall(frame)
        got = b""
        while not got.endswith(b"\n"):
            got += s.recv(65536)
        times.append(time.perf_counter() - t0)
    s.close()
    run.stop([server])
    return summary_ms(times)


def baseline_ping(run: Run, rounds: int) -> dict[str, float]:
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        query.ping(run.socket)
        times.append(time.perf_counter() - t0)
    return summary_ms(times)


def start_services(run: Run, n: int, total: int) -> list[subprocess.Popen[Any]]:
    """Start ``n`` more service processes; return once ``total`` are registered."""
    env = {**os.environ, "PMRUN_SOCKET": run.socket}
    env.pop("PMRUN_AGENT_ID", None)
    procs = [run.spawn([PY, "-c", SERVICE], env=env, stdin=subprocess.DEVNULL) for _ in range(n)]
    wait_for(lambda: len(query.status(run.socket)["services"]) == total, 120, f"{total} services")
    return procs


def start_many(run: Run, script: str, n: int, processes: int) -> list[subprocess.Popen[Any]]:
    """``n`` service connections from ``processes`` processes running ``script``."""
    per = n // processes
    procs = [
        run.spawn([PY, "-c", script, str(per), run.socket], stdin=subprocess.DEVNULL)
        for _ in range(processes)
    ]
    wait_for(lambda: len(query.status(run.socket)["services"]) == n, 60, f"{n} connections")
    return procs


def manual_broadcasts(run: Run, n: int, rounds: int) -> dict[str, Any]:
    coordinator_side, client_side = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        result = query.cleanup(run.socket, fraction=0.5)
        client_side.append(time.perf_counter() - t0)
        answered = [r for r in result.results if "error" not in r]
        if len(answered) != n:
            raise SystemExit(f"benchmark: only {len(answered)} of {n} services answered")
        coordinator_side.append(result.elapsed_s)
    return {"broadcast_to_last_answer": summary_ms(coordinator_side),
            "client_round_trip": summary_ms(client_side)}  # fmt: skip


def pressure_broadcasts(run: Run, n: int, rounds: int, pool: int) -> dict[str, Any]:
    """A fake agent crosses the pool and back; detection to last answer from the event log."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(run.socket)
    sock.sendall(p.encode(p.Register(agent_id="pressure", name="pressure", launcher_pid=os.getpid(),
                                     child_pid=os.getpid(), argv=[],
                                     started=time.time())))  # fmt: skip
    _, offset = read_new(run.events)
    latencies = []
    for _ in range(rounds):
        sock.sendall(p.encode(p.Report(rss=2 * pool, peak=2 * pool)))

        def answered() -> list[dict[str, Any]]:
            nonlocal offset
            events, offset = read_new(run.events, offset)
            return [
                e for e in events if e["kind"] == "evict.result" and e["pressure"] == "critical"
            ]

        [result] = wait_for(answered, 10, "a pressure broadcast")
        if len(result["answered"]) != n:
            raise SystemExit(f"benchmark: {len(result['answered'])} of {n} answered")
        latencies.append(result["elapsed_s"])
        sock.sendall(p.encode(p.Report(rss=0, peak=0)))
        wait_for(lambda: query.status(run.socket)["pressure"]["level"] == "normal", 10, "relief")
    sock.close()
    return {"detection_to_last_answer": summary_ms(latencies)}


def cpu_with_agents(run: Run, pid: int, n: int, seconds: float, mode: str) -> dict[str, Any]:
    """Coordinator CPU while ``n`` agents report (``mode``: "steady" or "changing")."""
    agents = run.spawn(
        [PY, "-c", AGENTS, str(n), run.socket, mode], stdout=subprocess.PIPE, text=True
    )
    assert agents.stdout is not None and agents.stdout.readline().strip() == "READY"
    wait_for(lambda: len(query.status(run.socket)["agents"]) == n, 60, f"{n} agents")
    time.sleep(2.0)  # let registrations and the first changes settle before measuring
    c0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    c1, t1 = cpu_seconds(pid), time.monotonic()
    rss = int(open(f"/proc/{pid}/statm").read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    run.stop([agents])
    wait_for(lambda: not query.status(run.socket)["agents"], 30, "agents gone")
    return {
        "agents": n,
        "mode": mode,
        "seconds": round(t1 - t0, 2),
        "cpu_percent_of_one_core": round(100 * (c1 - c0) / (t1 - t0), 3),
        "coordinator_rss_bytes": rss,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=200, help="broadcasts per service count")
    ap.add_argument("--pressure-rounds", type=int, default=30)
    ap.add_argument("--cpu-seconds", type=float, default=10.0)
    ap.add_argument("--services", default="1,10,100")
    ap.add_argument("--output", default=str(RESULTS))
    args = ap.parse_args()
    print("command:", " ".join([os.path.relpath(PY), os.path.relpath(__file__), *sys.argv[1:]]))

    tmp = Path(tempfile.mkdtemp(prefix="pmb", dir="/tmp"))
    os.chmod(tmp, 0o700)
    run = Run(tmp)
    pool = 1 << 40  # nothing but the pressure test crosses it
    daemon = run.spawn(
        [PY, "-m", "pmrun", "coordinator", "--socket", run.socket, "--pool", str(pool),
         "--events", run.events, "--dry-run", "--log-level", "warning"],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip

    def up() -> bool:
        try:
            query.ping(run.socket)
            return True
        except CoordinatorUnavailable:
            return False

    results: dict[str, Any] = {
        "machine": {
            "cpus": os.cpu_count(),
            "kernel": platform.release(),
            "python": platform.python_version(),
        },
        "settings": vars(args),
    }
    try:
        wait_for(up, 20, "the coordinator")
        results["baseline"] = {
            "echo_round_trip": baseline_echo(run, 2000),
            "coordinator_ping": baseline_ping(run, 2000),
        }
        print(f"baseline: AF_UNIX echo round trip {results['baseline']['echo_round_trip']}")
        print(f"baseline: connect + ping/pong      {results['baseline']['coordinator_ping']}")
        results["eviction"] = {}
        services: list[subprocess.Popen[Any]] = []
        for n in [int(x) for x in args.services.split(",")]:
            services += start_services(run, n - len(services), n)
            figures = manual_broadcasts(run, n, args.rounds)
            if n == max(int(x) for x in args.services.split(",")):
                figures.update(pressure_broadcasts(run, n, args.pressure_rounds, pool))
            base = results["baseline"]["echo_round_trip"]["median_ms"]
            figures["median_vs_echo"] = round(
                figures["broadcast_to_last_answer"]["median_ms"] / base, 1
            )
            results["eviction"][str(n)] = figures
            print(
                f"{n:>3} services: broadcast -> last answer {figures['broadcast_to_last_answer']}"
            )
            if "detection_to_last_answer" in figures:
                print(f"{n:>3} services: pressure detected -> last answer "
                      f"{figures['detection_to_last_answer']}")  # fmt: skip
        run.stop(services)
        wait_for(lambda: not query.status(run.socket)["services"], 30, "services gone")
        for label, script, processes in (
            ("100_in_one_process", IN_PROCESS, 1),
            ("100_minimal_responders", RESPONDERS, 2),
        ):
            group = start_many(run, script, 100, processes)
            figures = manual_broadcasts(run, 100, args.rounds)
            results["eviction"][label] = figures
            print(f"{label}: broadcast -> last answer {figures['broadcast_to_last_answer']}")
            run.stop(group)
            wait_for(lambda: not query.status(run.socket)["services"], 30, "services gone")
        cpu_idle0, t0 = cpu_seconds(daemon.pid), time.monotonic()
        time.sleep(min(args.cpu_seconds, 5.0))
        idle = 100 * (cpu_seconds(daemon.pid) - cpu_idle0) / (time.monotonic() - t0)
        results["cpu"] = {
            "idle_percent_of_one_core": round(idle, 3),
            "steady": cpu_with_agents(run, daemon.pid, 100, args.cpu_seconds, "steady"),
            "changing": cpu_with_agents(run, daemon.pid, 100, args.cpu_seconds, "changing"),
        }
        print(f"cpu: {results['cpu']}")
        p99_100 = (
            results["eviction"].get("100", {}).get("broadcast_to_last_answer", {}).get("p99_ms")
        )
        results["targets"] = {
            "p99_under_20ms_at_100_services": p99_100 is not None and p99_100 < 20,
            "cpu_under_2_percent_with_100_agents": (
                results["cpu"]["steady"]["cpu_percent_of_one_core"] < 2
            ),
        }
        print(f"targets: {results['targets']}")
    finally:
        daemon.send_signal(signal.SIGTERM)
        try:
            daemon.wait(10)
        except subprocess.TimeoutExpired:
            daemon.kill()
        run.close()
        shutil.rmtree(tmp, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"written: {os.path.relpath(out)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
