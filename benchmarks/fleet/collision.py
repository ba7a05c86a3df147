"""Collision benchmark: well-behaved agents whose peaks coincide, on a simulated small machine.

Only well-behaved agents (Python and Node, seeded sizes and times, see ``collision_agent.*``):
each ramps up to its peak, works while holding it, and exits 0. Started a second apart,
their peaks overlap so that their sum exceeds the machine by 30-50 % for a while. Nobody
needs to die: the work just must not all run at once. The same plan runs once per arm:

- ``bare``: started directly;
- ``percg``: each in its own memory cgroup (hard limit 1.25 x its peak), nothing else;
- ``pmrun-stop``: every agent through ``pmrun --no-wait`` and a coordinator with
  ``--no-pause`` (pmrun before pause and admission: it stops the largest);
- ``pmrun-pause``: as ``pmrun`` below but ``--no-wait``: pausing alone;
- ``pmrun``: every agent through ``pmrun --expect PEAK`` and a coordinator with pausing
  (wait before start, pause before kill);
- ``parallel``: GNU parallel ``--memfree``/``--memsuspend`` running the same commands;
- ``earlyoom``: as bare, earlyoom watching (host-relative thresholds, as in run.py).

Run as root::

    .venv/bin/python benchmarks/fleet/collision.py [--machine 3G] [--seed 1] [--agents 6]
        [--arms bare,percg,pmrun-stop,pmrun,parallel,earlyoom]

It prints the command that reproduces it and a table, and writes
``benchmarks/results/collision.json`` and ``collision.png`` (memory over time per arm, the
pmrun arm's paused intervals shaded).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import simcg  # noqa: E402
from run import KernelLog, Sampler, _pmrun, _python, ensure_tool, parse_size  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MIB = 1 << 20
GIB = 1 << 30
ARMS = ("bare", "percg", "pmrun-stop", "pmrun-pause", "pmrun", "parallel", "earlyoom")
PMRUN_ARMS = ("pmrun-stop", "pmrun-pause", "pmrun")
TITLES = {
    "bare": "bare",
    "percg": "per-agent kernel limit",
    "pmrun-stop": "pmrun, no pause/wait (before)",
    "pmrun-pause": "pmrun pause only (--no-wait)",
    "pmrun": "pmrun wait-and-pause",
    "parallel": "GNU parallel --memfree/--memsuspend",
    "earlyoom": "earlyoom",
}
STAGGER_S = 1.0  # between planned starts (GNU parallel's --delay)


@dataclass(frozen=True)
class Spec:
    name: str
    runtime: str  # python or node
    peak_mib: int
    ramp_s: float
    hold_s: float
    start_s: float  # planned start, from the session's start

    def argv(self) -> list[str]:
        args = [str(self.peak_mib), str(self.ramp_s), str(self.hold_s)]
        if self.runtime == "node":
            return ["node", str(HERE / "collision_agent.js"), *args]
        return [_python(), str(HERE / "collision_agent.py"), *args]


def make_plan(machine_bytes: int, n: int, seed: int) -> list[Spec]:
    """``n`` agents whose peaks sum to ~1.4-1.5x the machine, started a second apart."""
    rng = random.Random(seed)
    mean = machine_bytes * 1.45 / n / MIB
    return [
        Spec(
            name=f"{'py' if i % 2 == 0 else 'node'}{i}",
            runtime="python" if i % 2 == 0 else "node",
            peak_mib=int(mean * rng.uniform(0.9, 1.1)),
            ramp_s=round(rng.uniform(3.0, 5.0), 1),
            hold_s=round(rng.uniform(6.0, 10.0), 1),
            start_s=i * STAGGER_S,
        )
        for i in range(n)
    ]


def ideal_makespan(plan: list[Spec], capacity: int, solo_s: dict[str, float]) -> float:
    """The makespan if each agent starts, in plan order, as soon as its planned start has come
    and its peak plus the peaks of those still running fit in ``capacity``, and takes its own
    solo time: running them one after another as their peaks allow, with no overhead."""
    running: list[tuple[float, int]] = []  # (end, peak bytes)
    t = 0.0
    end_all = 0.0
    for s in plan:
        t = max(t, s.start_s)
        peak = s.peak_mib * MIB
        running = [(e, p) for e, p in running if e > t]
        while running and sum(p for _, p in running) + peak > capacity:
            running.sort()
            t = max(t, running.pop(0)[0])
            running = [(e, p) for e, p in running if e > t]
        end = t + solo_s[s.name]
        running.append((end, peak))
        end_all = max(end_all, end)
    return end_all


# -- the session, run inside the machine --------------------------------------------------


def session_main(a: argparse.Namespace) -> int:
    """Start every agent of the plan on time in this arm's way; record how each ended."""
    plan = [Spec(**d) for d in json.loads(Path(a.plan).read_text())]
    t0 = time.monotonic()
    records: list[dict[str, Any]] = []
    lock = threading.Lock()

    def run_one(s: Spec) -> None:
        time.sleep(max(0.0, t0 + s.start_s - time.monotonic()))
        argv, preexec, report = s.argv(), None, None
        if a.arm == "percg":
            group = os.path.join(a.machine_cgroup, f"agent-{s.name}")
            simcg.make_group(group, a.cgroup_version, int(s.peak_mib * MIB * 1.25))
            preexec = lambda: simcg.join(group)  # noqa: E731
        elif a.arm in PMRUN_ARMS:
            report = os.path.join(a.dir, f"{s.name}.report.json")
            pm = [a.pmrun, "--socket", a.socket, "--name", s.name, "--backend", "cgroup",
                  "--max-rss", str(int(s.peak_mib * MIB * 1.25)), "--grace", "2",
                  "--report", report, "--quiet"]  # fmt: skip
            pm += ["--expect", f"{s.peak_mib}M"] if a.arm == "pmrun" else ["--no-wait"]
            argv = [*pm, "--", *argv]
        started = time.monotonic()
        with open(os.path.join(a.dir, f"{s.name}.log"), "wb") as log:
            p = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                 preexec_fn=preexec)  # fmt: skip
        code = p.wait()
        rec: dict[str, Any] = {"name": s.name, "pid": p.pid, "exit": code,
                               "start": started - t0, "end": time.monotonic() - t0}  # fmt: skip
        if report and os.path.exists(report):
            r = json.loads(Path(report).read_text())
            rec["reason"] = r.get("reason")
            rec["exec_pid"] = r.get("pid")
            rec["paused_s"] = (r.get("extra") or {}).get("paused_s")
        with lock:
            records.append(rec)

    if a.arm == "parallel":
        joblog = os.path.join(a.dir, "joblog")
        cmds = "\n".join(shlex.join(s.argv()) for s in plan) + "\n"
        p = subprocess.run(
            ["parallel", "--joblog", joblog, "-j", str(len(plan)), "--delay", str(STAGGER_S),
             "--memfree", a.memfree, "--memsuspend", a.memsuspend, "--retries", "5"],
            input=cmds.encode(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        records = parallel_records(joblog, plan, t0)
        (Path(a.dir) / "parallel.stderr").write_bytes(p.stderr)
    else:
        threads = [threading.Thread(target=run_one, args=(s,)) for s in plan]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    Path(a.out).write_text(json.dumps({"agents": records, "t0": t0}))
    return 0


def parallel_records(joblog: str, plan: list[Spec], t0: float) -> list[dict[str, Any]]:
    """One record per plan entry from GNU parallel's job log (a job it killed and ran again
    appears once per attempt: every attempt but the last counts as a kill)."""
    by_cmd = {shlex.join(s.argv()): s.name for s in plan}
    out: dict[str, dict[str, Any]] = {}
    try:
        lines = Path(joblog).read_text().splitlines()[1:]
    except OSError:
        return []
    wall0 = None
    for line in lines:
        f = line.split("\t")
        if len(f) < 9:
            continue
        start, runtime, exitval, sig, cmd = float(f[2]), float(f[3]), int(f[6]), int(f[7]), f[8]
        wall0 = start if wall0 is None else min(wall0, start)
        name = by_cmd.get(cmd, cmd)
        rec = out.setdefault(name, {"name": name, "attempts": 0, "killed": 0})
        rec["attempts"] += 1
        if sig:
            rec["killed"] += 1
        rec.update(exit=128 + sig if sig else exitval, start_wall=start, end_wall=start + runtime)
    for rec in out.values():
        rec["start"] = rec.pop("start_wall") - (wall0 or 0)
        rec["end"] = rec.pop("end_wall") - (wall0 or 0)
    return list(out.values())


# -- the harness ----------------------------------------------------------------------------


@dataclass
class Arm:
    name: str
    agents: list[dict[str, Any]] = field(default_factory=list)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    kernel_kills: list[dict[str, Any]] = field(default_factory=list)
    oom_kills: int = 0
    t0: float = 0.0
    t_end: float = 0.0
    paused: list[tuple[str, float, float]] = field(default_factory=list)  # name, from, to
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None


class MachineMeminfo(threading.Thread):
    """A ``/proc/meminfo`` for the simulated machine, rewritten every 50 ms.

    GNU parallel and earlyoom read only ``/proc/meminfo``, the host's inside a cgroup. Their
    arms run in a mount namespace where this file is bind-mounted over it (what LXCFS does
    for containers), so they see the machine: MemTotal its size, MemAvailable its size minus
    its anonymous memory, no swap. Fixed-width numbers and one pwrite keep every read whole.
    """

    FIELDS = ("MemTotal", "MemFree", "MemAvailable", "Buffers", "Cached", "SwapTotal",
              "SwapFree")  # fmt: skip

    def __init__(self, machine: simcg.SimMachine, path: str) -> None:
        super().__init__(daemon=True)
        self.machine, self.path = machine, path
        self.stop_event = threading.Event()
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        self.write()

    def write(self) -> None:
        total = self.machine.limit_bytes
        try:
            anon = self.machine.reading().anon_bytes
        except OSError:
            anon = 0
        free = max(0, total - anon)
        values = (total, free, free, 0, 0, 0, 0)
        text = "".join(
            f"{k + ':':<16}{v // 1024:>12} kB\n" for k, v in zip(self.FIELDS, values, strict=True)
        )
        os.pwrite(self.fd, text.encode(), 0)

    def run(self) -> None:
        while not self.stop_event.wait(0.05):
            self.write()

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        os.close(self.fd)


def with_meminfo(path: str, argv: list[str], pid_ns: bool) -> list[str]:
    """``argv`` in a mount namespace (and a PID namespace for earlyoom) seeing ``path``
    as /proc/meminfo."""
    ns = ["unshare", "--pid", "--fork", "--mount-proc"] if pid_ns else ["unshare", "--mount"]
    inner = f"mount --bind {shlex.quote(path)} /proc/meminfo && exec {shlex.join(argv)}"
    return [*ns, "sh", "-c", inner]


def start_coordinator(machine: simcg.SimMachine, run_dir: str, pause: bool,
                      machine_bytes: int) -> tuple[subprocess.Popen[bytes], str]:  # fmt: skip
    sock = os.path.join(run_dir, "coord", "c.sock")
    os.makedirs(os.path.dirname(sock), mode=0o700)
    argv = [_python(), "-m", "pmrun", "coordinator", "--socket", sock,
            "--pool", str(int(machine_bytes * 0.90)), "--system-threshold", "90%",
            "--psi-threshold", "off", "--events", os.path.join(run_dir, "events.jsonl")]  # fmt: skip
    if not pause:
        argv.append("--no-pause")
    with open(os.path.join(run_dir, "coordinator.log"), "wb") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log,
                                preexec_fn=machine.preexec)  # fmt: skip
    deadline = time.monotonic() + 20
    while not os.path.exists(sock):
        if time.monotonic() > deadline or proc.poll() is not None:
            raise RuntimeError(f"coordinator did not start: see {run_dir}/coordinator.log")
        time.sleep(0.05)
    return proc, sock


def paused_intervals(events_path: str, t0_wall: float, t0: float) -> list[tuple[str, float, float]]:
    out: list[tuple[str, float, float]] = []
    open_: dict[str, float] = {}
    try:
        lines = Path(events_path).read_text().splitlines()
    except OSError:
        return out
    for line in lines:
        e = json.loads(line)
        if e["kind"] == "agent.pause":
            open_[e["name"]] = e["ts"] - t0_wall
        elif e["kind"] in ("agent.resume", "agent.deregister") and e.get("name") in open_:
            out.append((e["name"], open_.pop(e["name"]), e["ts"] - t0_wall))
    return out


def run_arm(name: str, plan: list[Spec], plan_path: str, work: str, machine_bytes: int) -> Arm:
    arm = Arm(name)
    run_dir = os.path.join(work, name)
    os.makedirs(run_dir)
    if name == "parallel" and (why := ensure_tool("parallel", "parallel")):
        arm.skipped = why
        return arm
    if name == "earlyoom" and (why := ensure_tool("earlyoom", "earlyoom")):
        arm.skipped = why
        return arm
    machine = simcg.SimMachine(machine_bytes, name=f"collision-{os.getpid()}-{name}")
    klog = KernelLog(machine.kernel_name)
    sampler = Sampler(machine)
    coord = None
    meminfo: MachineMeminfo | None = None
    sock = ""
    out = os.path.join(run_dir, "session.json")
    try:
        klog.start()
        sampler.start()
        if name in PMRUN_ARMS:
            coord, sock = start_coordinator(machine, run_dir, name != "pmrun-stop", machine_bytes)
        # parallel and earlyoom see the machine through its own /proc/meminfo.
        memfree = int(machine_bytes * 0.25)  # no start below; the youngest killed below half
        memsuspend = int(machine_bytes * 0.10)  # suspend below twice; one job below it
        if name in ("parallel", "earlyoom"):
            meminfo = MachineMeminfo(machine, os.path.join(run_dir, "meminfo"))
            meminfo.start()
        argv = [_python(), str(Path(__file__)), "--session", "--arm", name, "--plan", plan_path,
                "--out", out, "--dir", run_dir, "--machine-cgroup", machine.path,
                "--cgroup-version", machine.version, "--pmrun", _pmrun(), "--socket", sock,
                "--memfree", str(memfree), "--memsuspend", str(memsuspend)]  # fmt: skip
        if name == "earlyoom" and meminfo is not None:
            status = os.path.join(run_dir, "orchestrator.status")
            eo = [_python(), str(HERE / "eo_shim.py"), status,
                  os.path.join(run_dir, "earlyoom.log"), "-m", "10,5", "-r", "0", "--", *argv]  # fmt: skip
            argv = with_meminfo(meminfo.path, eo, pid_ns=True)
            arm.notes.append("earlyoom -m 10,5 (its defaults) on the machine's /proc/meminfo")
        if name == "parallel" and meminfo is not None:
            argv = with_meminfo(meminfo.path, argv, pid_ns=False)
            arm.notes.append(f"--memfree {memfree >> 20}M --memsuspend {memsuspend >> 20}M "
                             "on the machine's /proc/meminfo")  # fmt: skip
        arm.t0 = time.monotonic()
        t0_wall = time.time()
        subprocess.run(argv, stdin=subprocess.DEVNULL, preexec_fn=machine.preexec, timeout=900)
        arm.t_end = time.monotonic()
        if name in PMRUN_ARMS:
            arm.paused = paused_intervals(os.path.join(run_dir, "events.jsonl"), t0_wall, arm.t0)
    finally:
        time.sleep(0.3)
        sampler.stop()
        klog.stop()
        if meminfo is not None:
            meminfo.stop()
        if coord is not None:
            coord.terminate()
            coord.wait(10)
        arm.oom_kills = machine.oom_kills() - machine.oom_kills_at_start
        machine.close()
    arm.samples = [(t - arm.t0, u, an, c) for t, u, an, c in sampler.samples]
    arm.kernel_kills = klog.kills
    try:
        arm.agents = json.loads(Path(out).read_text())["agents"]
    except (OSError, ValueError):
        arm.notes.append("the session wrote no result")
    return arm


def solo_times(plan: list[Spec], work: str, machine_bytes: int) -> dict[str, float]:
    """Each agent's duration alone in the machine (start to exit), one after another."""
    machine = simcg.SimMachine(machine_bytes, name=f"collision-{os.getpid()}-solo")
    out: dict[str, float] = {}
    try:
        for s in plan:
            t = time.monotonic()
            subprocess.run(s.argv(), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                           preexec_fn=machine.preexec, check=True, timeout=300)  # fmt: skip
            out[s.name] = time.monotonic() - t
    finally:
        machine.close()
    return out


def summarize(arm: Arm, plan: list[Spec], ideal_s: float) -> dict[str, Any]:
    if arm.skipped:
        return {"arm": arm.name, "skipped": arm.skipped}
    finished = sum(1 for a in arm.agents if a.get("exit") == 0)
    # Every kill is an interruption, also one GNU parallel ran again afterwards.
    killed = sum(a.get("killed", int(a.get("exit") != 0)) for a in arm.agents)
    ends = [a["end"] for a in arm.agents if "end" in a]
    makespan = max(ends) if ends else None
    usage = [u for _, u, _, _ in arm.samples]
    dt = [arm.samples[i + 1][0] - arm.samples[i][0] for i in range(len(arm.samples) - 1)]
    avg = sum(u * d for u, d in zip(usage, dt, strict=False)) / sum(dt) if dt else 0
    return {
        "arm": arm.name,
        "finished": finished,
        "agents": len(plan),
        "killed": killed,
        # v1 counts a kill in the victim's own group: pmrun's agent groups may sit outside
        # the machine's subtree, so the kernel log (kills of tasks of the machine) counts too.
        "kernel_oom_kills": max(arm.oom_kills, len(arm.kernel_kills)),
        "makespan_s": round(makespan, 2) if makespan else None,
        "makespan_vs_ideal": round(makespan / ideal_s, 2) if makespan else None,
        "peak_mib": max(usage) // MIB if usage else None,
        "avg_mib": int(avg // MIB),
        "paused_s": round(sum(b - a for _, a, b in arm.paused), 1),
        "pauses": len(arm.paused),
        "reasons": sorted({str(a.get("reason")) for a in arm.agents if a.get("reason")}),
    }


def plot(arms: list[Arm], machine_bytes: int, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [a for a in arms if not a.skipped]
    fig, axes = plt.subplots(len(shown), 1, figsize=(9, 2.0 * len(shown)), sharex=True)
    for ax, arm in zip(axes if len(shown) > 1 else [axes], shown, strict=True):
        ax.plot([t for t, *_ in arm.samples], [u / GIB for _, u, _, _ in arm.samples], lw=1)
        ax.axhline(machine_bytes / GIB, color="red", lw=0.8, ls="--")
        for _, a, b in arm.paused:
            ax.axvspan(a, b, color="orange", alpha=0.15)
        for k in arm.kernel_kills:
            ax.axvline(k["t"] - arm.t0, color="black", lw=0.8)
        ax.set_ylabel("GiB")
        ax.set_title(TITLES[arm.name], fontsize=9, loc="left")
    (axes[-1] if len(shown) > 1 else axes).set_xlabel(
        "s (red: the machine; black: kernel OOM kills; shaded: an agent paused)"
    )
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--session", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--machine", type=parse_size, default=3 * GIB)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--agents", type=int, default=6)
    ap.add_argument("--arms", default=",".join(ARMS))
    for hidden in ("arm", "plan", "out", "dir", "machine-cgroup", "cgroup-version", "pmrun",
                   "socket", "memfree", "memsuspend"):  # fmt: skip
        ap.add_argument(f"--{hidden}", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.session:
        return session_main(a)
    if os.geteuid() != 0:
        print("collision.py needs root (memory cgroups)", file=sys.stderr)
        return 2
    print("reproduce:", shlex.join([_python(), *sys.argv]))
    plan = make_plan(a.machine, a.agents, a.seed)
    work = tempfile.mkdtemp(prefix="collision-")
    plan_path = os.path.join(work, "plan.json")
    Path(plan_path).write_text(json.dumps([asdict(s) for s in plan]))
    total = sum(s.peak_mib for s in plan) * MIB
    print(f"{len(plan)} agents, peaks {[s.peak_mib for s in plan]} MiB, sum "
          f"{total / a.machine:.2f}x the {a.machine / GIB:g} GiB machine")  # fmt: skip
    arms = []
    for name in a.arms.split(","):
        print(f"arm {name} ...", flush=True)
        arms.append(run_arm(name, plan, plan_path, work, a.machine))
    print("solo runs (for the ideal) ...", flush=True)
    solo = solo_times(plan, work, a.machine)
    ideal = ideal_makespan(plan, a.machine, solo)
    serial = sum(solo.values())
    rows = [summarize(x, plan, ideal) for x in arms]
    cols = ("finished", "killed", "kernel_oom_kills", "makespan_s", "makespan_vs_ideal",
            "peak_mib", "avg_mib", "pauses", "paused_s")  # fmt: skip
    print(f"\nideal makespan {ideal:.1f} s (FIFO in plan order, each started once its peak fits"
          f" the machine, taking its solo time); all one after another: {serial:.1f} s")  # fmt: skip
    print(f"{'arm':38}" + "".join(f"{c:>18}" for c in cols))
    for r in rows:
        if "skipped" in r:
            print(f"{TITLES[r['arm']]:38}  skipped: {r['skipped']}")
            continue
        cells = [f"{r['finished']}/{r['agents']}"] + [str(r[c]) for c in cols[1:]]
        print(f"{TITLES[r['arm']]:38}" + "".join(f"{c:>18}" for c in cells))
    RESULTS.mkdir(parents=True, exist_ok=True)
    doc = {
        "command": [_python(), *sys.argv],
        "machine_bytes": a.machine,
        "seed": a.seed,
        "plan": [asdict(s) for s in plan],
        "ideal_makespan_s": ideal,
        "serial_makespan_s": serial,
        "solo_s": solo,
        "rows": rows,
        "arms": [{**asdict(x), "samples": x.samples[::5]} for x in arms],
        "work_dir": work,
    }
    (RESULTS / "collision.json").write_text(json.dumps(doc, indent=1))
    plot(arms, a.machine, RESULTS / "collision.png")
    print(f"\nwrote {RESULTS / 'collision.json'} and {RESULTS / 'collision.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
