"""Fleet survival benchmark: one scripted agent session on a simulated small machine, four ways.

The session (see ``plan.py`` and ``session.py``) runs inside a memory cgroup with a fixed
limit (``--machine``, default 3G) so that the kernel's OOM killer acts as on a machine of
that size, without endangering the host. The same seeded session runs once per arm:

1. ``bare``: agents started directly; Python agents cache prompts in an unbounded dict
   with a 900 s TTL (the framework before pmrun);
2. ``percg``: each agent in its own memory cgroup with a hard limit, nothing else
   (what ``systemd-run -p MemoryMax=`` gives);
3. ``pmrun``: every agent through ``pmrun --max-rss ... --`` with a coordinator inside the
   machine, and the Python agents' prompts in ``SharedPromptCache``;
4. ``earlyoom``: agents as in ``bare`` with earlyoom watching (see the README: it cannot
   watch the machine's budget, only the host's MemAvailable).

Run as root, from anywhere::

    .venv/bin/python benchmarks/fleet/run.py [--machine 3G] [--seed 1] [--quick] [--arms bare,percg,pmrun,earlyoom]

It prints the command that reproduces it, a table per arm, the framework's three metrics
against the bare arm, and writes ``benchmarks/results/fleet.json`` and ``fleet.png``.
Every arm ends by killing whatever is left in its cgroup and removing it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import select
import shlex
import shutil
import signal
import socket as socketlib
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

import simcg  # noqa: E402
from plan import Plan, make_plan  # noqa: E402

RESULTS = REPO / "benchmarks" / "results"
MIB = 1 << 20
GIB = 1 << 30
SAMPLE_S = 0.1
ARMS = ("bare", "percg", "pmrun", "earlyoom")
ARM_TITLES = {
    "bare": "bare (dict cache, no limits)",
    "percg": "per-agent kernel limit",
    "pmrun": "pmrun (launcher+coordinator+cache)",
    "earlyoom": "earlyoom (host-relative threshold)",
}
PMRUN_STOPS = ("max-rss", "pool", "system-pressure")
# Kernel log line for every OOM kill: which group's limit was hit and which task died.
OOM_LINE = re.compile(
    r"oom-kill:.*?oom_memcg=(?P<memcg>[^,]+),task_memcg=(?P<task_memcg>[^,]+),task=(?P<task>[^,]*),pid=(?P<pid>\d+)"
)
EO_LINE = re.compile(r"sending (?P<sig>SIG\w+) to process (?P<pid>\d+)")


def parse_size(text: str) -> int:
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    m = re.fullmatch(r"\s*([0-9.]+)\s*([KMG]?)(?:I?B)?\s*", text.upper())
    if not m:
        raise argparse.ArgumentTypeError(f"invalid size {text!r}: use e.g. 3G or 1500M")
    return int(float(m.group(1)) * units[m.group(2)])


# -- watching the machine ----------------------------------------------------------------


class Sampler(threading.Thread):
    """Every 100 ms: the machine's usage and anon memory, and the cache agents' RSS.

    Also remembers each process's namespace pid (``NSpid``) so that kernel log lines
    (host pids) can be matched to the earlyoom arm's records (namespace pids).
    """

    def __init__(self, machine: simcg.SimMachine) -> None:
        super().__init__(daemon=True)
        self.machine = machine
        self.stop_event = threading.Event()
        self.samples: list[tuple[float, int, int, int]] = []  # (t, usage, anon, cache-agents RSS)
        self.cache_rss: dict[int, list[tuple[float, int]]] = {}  # pid -> [(t, rss)]
        self.host_to_ns: dict[int, int] = {}
        self._kind: dict[int, bool] = {}
        self.error: str | None = None

    def _is_cache_agent(self, pid: int) -> bool:
        """Whether ``pid`` is a cache agent itself (argv[1] is the agent script), not a
        launcher whose argv mentions it. Only a yes is remembered: between fork and exec
        a child still shows its parent's command line."""
        if self._kind.get(pid):
            return True
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if pid not in self.host_to_ns:
                with open(f"/proc/{pid}/status") as f:
                    for line in f:
                        if line.startswith("NSpid:"):
                            self.host_to_ns[pid] = int(line.split()[-1])
        except (OSError, ValueError):
            return False
        self._kind[pid] = len(argv) > 4 and argv[1].endswith(b"py_agent.py") and argv[3] == b"cache"
        return self._kind[pid]

    def run(self) -> None:
        try:
            while not self.stop_event.is_set():
                t = time.monotonic()
                r = self.machine.reading()
                cache_total = 0
                for pid in self.machine.pids():
                    if self._is_cache_agent(pid):
                        try:
                            with open(f"/proc/{pid}/statm") as f:
                                rss = int(f.read().split()[1]) * 4096
                        except (OSError, IndexError):
                            continue
                        cache_total += rss
                        self.cache_rss.setdefault(pid, []).append((t, rss))
                self.samples.append((t, r.usage_bytes, r.anon_bytes, cache_total))
                self.stop_event.wait(max(0.0, SAMPLE_S - (time.monotonic() - t)))
        except Exception as e:  # noqa: BLE001 - reported in the results, never a hang
            self.error = repr(e)

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)


class KernelLog(threading.Thread):
    """Reads /dev/kmsg from now on and keeps the OOM kills made inside ``cgroup_rel``."""

    def __init__(self, cgroup_rel: str) -> None:
        super().__init__(daemon=True)
        self.cgroup_rel = cgroup_rel
        self.kills: list[dict[str, Any]] = []
        self.stop_event = threading.Event()
        self.available = True
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.available = False
            self.error = f"/dev/kmsg: {e.strerror}"

    def run(self) -> None:
        if not self.available:
            return
        while not self.stop_event.is_set():
            ready, _, _ = select.select([self.fd], [], [], 0.2)
            if not ready:
                continue
            while True:
                try:
                    rec = os.read(self.fd, 8192).decode(errors="replace")
                except BlockingIOError:
                    break
                except OSError:  # EPIPE: records overwritten before we read them
                    continue
                m = OOM_LINE.search(rec)
                if m and m.group("task_memcg").startswith(self.cgroup_rel):
                    self.kills.append(
                        {
                            "t": time.monotonic(),
                            "pid": int(m.group("pid")),
                            "task": m.group("task"),
                            "oom_memcg": m.group("memcg"),
                            "task_memcg": m.group("task_memcg"),
                        }
                    )

    def stop(self) -> None:
        self.stop_event.set()
        self.join(5)
        if self.available:
            os.close(self.fd)


# -- one arm ---------------------------------------------------------------------------------


@dataclass
class ArmRun:
    arm: str
    machine_path: str = ""
    cgroup_version: str = ""
    t0: float = 0.0  # orchestrator start (monotonic)
    t_end: float = 0.0
    orchestrator_exit: int | None = None
    session: dict[str, Any] = field(default_factory=dict)
    samples: list[tuple[float, int, int, int]] = field(default_factory=list)
    cache_rss: dict[int, list[tuple[float, int]]] = field(default_factory=dict)
    kernel_kills: list[dict[str, Any]] = field(default_factory=list)
    kernel_log: bool = True
    oom_kills_counter: int = 0
    kernel_peak_bytes: int | None = None
    earlyoom_kills: list[dict[str, Any]] = field(default_factory=list)
    host_to_ns: dict[int, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    coordinator: dict[str, Any] = field(default_factory=dict)
    skipped: str | None = None


def _python() -> str:
    venv = REPO / ".venv" / "bin" / "python"
    return str(venv) if venv.exists() else sys.executable


def _pmrun() -> str:
    venv = REPO / ".venv" / "bin" / "pmrun"
    return str(venv) if venv.exists() else shutil.which("pmrun") or "pmrun"


def ensure_tool(name: str, package: str) -> str | None:
    """The tool's path, installing its Debian package when root; None (and why) otherwise."""
    if shutil.which(name):
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        subprocess.run(["apt-get", "install", "-y", "-q", package], capture_output=True)
        if shutil.which(name):
            return None
    return f"{name} is not installed (Debian package {package}; needs root to install)"


def _coordinator_status(sock: str) -> dict[str, Any]:
    """``pmrun status --json`` of the arm's coordinator (what it sees as system memory)."""
    out = subprocess.run(
        [_pmrun(), "status", "--socket", sock, "--json"], capture_output=True, text=True, timeout=20
    )
    if out.returncode != 0:
        return {"error": (out.stderr or out.stdout).strip()[-500:]}
    try:
        return json.loads(out.stdout)
    except ValueError:
        return {"error": "not JSON: " + out.stdout[-300:]}


def start_coordinator(
    machine: simcg.SimMachine, plan: Plan, run_dir: str, arm: ArmRun
) -> tuple[subprocess.Popen[bytes], str]:
    """A coordinator inside the machine (so it sees the machine's limit as the system's)."""
    sock = os.path.join(run_dir, "coord", "coordinator.sock")
    os.makedirs(os.path.dirname(sock), mode=0o700, exist_ok=True)
    argv = [
        _python(), "-m", "pmrun", "coordinator",
        "--socket", sock,
        "--pool", str(plan.pool_bytes),
        "--events", os.path.join(run_dir, "coordinator-events.jsonl"),
    ]  # fmt: skip
    log = open(os.path.join(run_dir, "coordinator.log"), "wb")
    try:
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=machine.preexec
        )
    finally:
        log.close()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"the coordinator exited with {proc.returncode}: see {run_dir}/coordinator.log"
            )
        try:
            s = socketlib.socket(socketlib.AF_UNIX)
            s.connect(sock)
            s.close()
            break
        except OSError:
            time.sleep(0.05)
    else:
        raise RuntimeError("the coordinator did not open its socket within 20 s")
    arm.coordinator["argv"] = argv
    arm.coordinator["status_at_start"] = _coordinator_status(sock)
    return proc, sock


def earlyoom_args(plan: Plan) -> tuple[list[str], dict[str, Any]]:
    """earlyoom's -M thresholds placed where the *host's* MemAvailable would be when the
    session uses 90% (SIGTERM) and 95% (SIGKILL) of the machine, measured now.

    This is the closest earlyoom can come: it reads /proc/meminfo only, so anything else
    on the host moves its threshold, and it never sees the machine's limit.
    """
    avail_kib = 0
    total_kib = 0
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemAvailable:"):
                avail_kib = int(line.split()[1])
            elif line.startswith("MemTotal:"):
                total_kib = int(line.split()[1])
    budget_kib = plan.machine_bytes // 1024
    term_kib = max(1, avail_kib - int(budget_kib * 0.90))
    kill_kib = max(1, avail_kib - int(budget_kib * 0.95))
    info = {
        "host_mem_total_kib": total_kib,
        "host_mem_available_kib_at_start": avail_kib,
        "term_below_kib": term_kib,
        "kill_below_kib": kill_kib,
    }
    return ["-M", f"{term_kib},{kill_kib}", "-r", "0"], info


def run_arm(
    arm_name: str, plan: Plan, plan_path: str, work: str, opts: argparse.Namespace
) -> ArmRun:
    arm = ArmRun(arm_name)
    run_dir = os.path.join(work, arm_name)
    os.makedirs(run_dir)
    if arm_name == "earlyoom":
        why = ensure_tool("earlyoom", "earlyoom") or ensure_tool("unshare", "util-linux")
        if why:
            arm.skipped = why
            return arm
    machine = simcg.SimMachine(plan.machine_bytes, name=f"fleet-bench-{os.getpid()}-{arm_name}")
    arm.machine_path, arm.cgroup_version = machine.path, machine.version
    klog = KernelLog(machine.kernel_name)
    arm.kernel_log = klog.available
    sampler = Sampler(machine)
    coord: subprocess.Popen[bytes] | None = None
    orch: subprocess.Popen[bytes] | None = None
    out = os.path.join(run_dir, "session.json")
    try:
        klog.start()
        sampler.start()
        sock = ""
        if arm_name == "pmrun":
            coord, sock = start_coordinator(machine, plan, run_dir, arm)
        orch_argv = [
            _python(), str(HERE / "session.py"),
            "--plan", plan_path, "--arm", arm_name, "--out", out, "--dir", run_dir,
            "--machine-cgroup", machine.path, "--cgroup-version", machine.version,
            "--pmrun", _pmrun(), "--socket", sock, "--backend", opts.pmrun_backend,
            "--grace", str(opts.grace),
        ]  # fmt: skip
        status_file = os.path.join(run_dir, "orchestrator.status")
        if arm_name == "earlyoom":
            eo, info = earlyoom_args(plan)
            arm.notes.append(
                "earlyoom reads the host's /proc/meminfo only: thresholds set relative to the host's "
                f"MemAvailable at the arm's start ({info['host_mem_available_kib_at_start'] // 1024} MiB)"
            )
            arm.coordinator["earlyoom"] = {**info, "args": eo}
            orch_argv = [
                "unshare", "--pid", "--fork", "--mount-proc",
                _python(), str(HERE / "eo_shim.py"), status_file, os.path.join(run_dir, "earlyoom.log"),
                *eo, "--", *orch_argv,
            ]  # fmt: skip
        arm.t0 = time.monotonic()
        orch = subprocess.Popen(orch_argv, stdin=subprocess.DEVNULL, preexec_fn=machine.preexec)
        try:
            code = orch.wait(timeout=plan.deadline_s + 60)
        except subprocess.TimeoutExpired:
            arm.notes.append("the orchestrator did not end in time: killed by the harness")
            orch.kill()
            code = orch.wait()
        arm.t_end = time.monotonic()
        if arm_name == "earlyoom" and os.path.exists(status_file):
            code = int(Path(status_file).read_text())
        arm.orchestrator_exit = code
        if coord is not None and coord.poll() is None:
            arm.coordinator["status_at_end"] = _coordinator_status(sock)
    finally:
        time.sleep(0.3)  # let the kernel log the last kills
        sampler.stop()
        klog.stop()
        if coord is not None and coord.poll() is None:
            coord.terminate()
            try:
                coord.wait(5)
            except subprocess.TimeoutExpired:
                coord.kill()
                coord.wait()
        arm.oom_kills_counter = machine.oom_kills() - machine.oom_kills_at_start
        arm.kernel_peak_bytes = machine.peak_bytes()
        machine.close()
        if orch is not None and orch.poll() is None:
            orch.kill()
            orch.wait()
    arm.samples, arm.cache_rss, arm.host_to_ns = (
        sampler.samples,
        sampler.cache_rss,
        sampler.host_to_ns,
    )
    arm.kernel_kills = klog.kills
    if sampler.error:
        arm.notes.append(f"sampler: {sampler.error}")
    try:
        arm.session = json.loads(Path(out).read_text())
    except (OSError, ValueError):
        arm.session = {"agents": [], "done": False}
    if arm_name == "earlyoom":
        try:
            for line in Path(run_dir, "earlyoom.log").read_text(errors="replace").splitlines():
                m = EO_LINE.search(line)
                if m:
                    arm.earlyoom_kills.append(
                        {"pid": int(m.group("pid")), "signal": m.group("sig")}
                    )
        except OSError:
            pass
    return arm


# -- what happened ---------------------------------------------------------------------


def _helper_pids(run_dir: str, name: str) -> list[int]:
    try:
        text = Path(run_dir, f"{name}.log").read_text(errors="replace")
    except OSError:
        return []
    return [int(x) for x in re.findall(r"helper pid (\d+)", text)]


def classify(arm: ArmRun, work: str) -> list[dict[str, Any]]:
    """How each agent ended, and who stopped it."""
    run_dir = os.path.join(work, arm.arm)
    kernel_by_pid: dict[int, dict[str, Any]] = {}
    for k in arm.kernel_kills:
        pid = k["pid"]
        if arm.arm == "earlyoom":
            pid = arm.host_to_ns.get(pid, -pid)
        kernel_by_pid[pid] = k
    eo_pids = {k["pid"] for k in arm.earlyoom_kills}
    out = []
    for rec in arm.session.get("agents", []):
        rc = rec.get("returncode")
        rep = rec.get("report") or {}
        pids = [
            rec["pid"],
            *([rep["pid"]] if rep.get("pid") else []),
            *_helper_pids(run_dir, rec["name"]),
        ]
        # Who stopped it, from the evidence alone (the exit status may be unknown when the
        # orchestrator died first).
        killer = None
        if rep.get("reason") in PMRUN_STOPS:
            killer = "pmrun"
        elif any(p in kernel_by_pid for p in pids) or rep.get("reason") == "kernel-oom":
            hit = next((kernel_by_pid[p] for p in pids if p in kernel_by_pid), None)
            # Which limit was hit: the agent's own group (percg arm) or the machine's.
            at_agent = hit is not None and "/agent-" in hit["oom_memcg"]
            killer = "kernel (agent limit)" if at_agent else "kernel"
        elif any(p in eo_pids for p in pids):
            killer = "earlyoom"
        elif rec.get("timed_out"):
            killer = "harness (deadline)"
        elif rc is not None and rc < 0:
            killer = f"signal {-rc}"
        if rc == 0:
            outcome = "finished"
        elif killer is not None:
            outcome = "killed"  # a forking agent whose helper was killed too
        elif rc is None:
            outcome = "lost (orchestrator died)"
            killer = "session end"
        else:
            outcome = "killed" if rc in (137, 143) else "failed"
        out.append(
            {
                **rec,
                "outcome": outcome,
                "killer": killer,
                "report_reason": rep.get("reason"),
                "report_message": rep.get("message"),
            }
        )
    return out


def summarize(arm: ArmRun, plan: Plan, work: str) -> dict[str, Any]:
    if arm.skipped:
        return {"arm": arm.arm, "skipped": arm.skipped}
    agents = classify(arm, work)
    good = [a for a in agents if a["good"]]
    bad = [a for a in agents if not a["good"]]
    planned_good = sum(1 for a in plan.agents if a.good)
    code = arm.orchestrator_exit
    orch_killer = None
    if code not in (0, None):
        orch_pid = int(arm.session.get("pid") or 0)
        if arm.arm == "earlyoom":  # session.json has its namespace pid; the kernel logs host pids
            host_pid = next((h for h, n in arm.host_to_ns.items() if n == orch_pid), 0)
        else:
            host_pid = orch_pid
        if orch_pid and any(k["pid"] == host_pid for k in arm.kernel_kills):
            orch_killer = "kernel"
        elif orch_pid and orch_pid in {k["pid"] for k in arm.earlyoom_kills}:
            orch_killer = "earlyoom"
        elif code is not None and code < 0:
            orch_killer = f"signal {-code}"
        else:
            orch_killer = f"exit {code}"
    t0, t1 = arm.t0, arm.t_end
    window = [s for s in arm.samples if t0 <= s[0] <= t1] or arm.samples
    usage = [s[1] for s in window]
    anon = [s[2] for s in window]
    cache_sum = [s[3] for s in window]
    per_cache_agent = []
    for series in arm.cache_rss.values():
        if len(series) >= 2:
            per_cache_agent.append(sum(r for _, r in series) / len(series))
    # pmrun's per-agent groups (cgroup backend) must nest under the machine, or the agents
    # would escape the machine's limit.
    groups = [
        str(b.get("group"))
        for a in agents
        if isinstance(b := (a.get("report") or {}).get("backend"), dict) and b.get("group")
    ]
    nested = [g.startswith(arm.machine_path + "/") for g in groups]
    backends = _count(
        str(((a.get("report") or {}).get("backend") or {}).get("name", "?"))
        for a in agents
        if a.get("report")
    )
    stopped = [a for a in bad if a["outcome"] != "finished"]
    killed_good = [a for a in good if a["outcome"] != "finished" and a["returncode"] is not None]
    lost_good = [a for a in good if a["returncode"] is None]
    return {
        "arm": arm.arm,
        "title": ARM_TITLES[arm.arm],
        "orchestrator_survived": code == 0,
        "orchestrator_exit": code,
        "orchestrator_killer": orch_killer,
        "good_planned": planned_good,
        "good_started": len(good),
        "good_finished": sum(1 for a in good if a["outcome"] == "finished"),
        "good_killed": len(killed_good),
        "good_killed_by": _count(a["killer"] or a["outcome"] for a in killed_good),
        "good_lost_with_orchestrator": len(lost_good),
        "runaways": len(bad),
        "runaways_stopped": len(stopped),
        "runaways_stopped_by": _count(a["killer"] or "?" for a in stopped),
        # v1 counts a kill in the victim's own group only, and per-agent groups (percg, or
        # pmrun's cgroup backend) are removed when their agent ends: their counts were
        # read just before (the orchestrator's record, pmrun's report) and are added here.
        "kernel_oom_kills": arm.oom_kills_counter
        + sum(a.get("group_oom_kills") or 0 for a in agents)
        + sum((a.get("report") or {}).get("kernel_oom_kills") or 0 for a in agents),
        "kernel_oom_kills_logged": len(arm.kernel_kills),
        "earlyoom_kills": len(arm.earlyoom_kills),
        "interruptions": len(killed_good) + len(lost_good) + (0 if code == 0 else 1),
        "peak_bytes": max(usage) if usage else None,
        "kernel_peak_bytes": arm.kernel_peak_bytes,
        "avg_bytes": int(sum(usage) / len(usage)) if usage else None,
        "avg_anon_bytes": int(sum(anon) / len(anon)) if anon else None,
        "cache_agents_avg_sum_bytes": int(sum(cache_sum) / len(cache_sum)) if cache_sum else None,
        "cache_agent_avg_bytes": int(sum(per_cache_agent) / len(per_cache_agent))
        if per_cache_agent
        else None,
        "wall_s": round(t1 - t0, 2),
        "machine_cgroup": arm.machine_path,
        "pmrun_backends": backends,
        "pmrun_groups_nested": None if not groups else all(nested),
        "pmrun_groups_outside": [g for g, n in zip(groups, nested, strict=True) if not n],
        "cgroup_version": arm.cgroup_version,
        "notes": arm.notes,
        "coordinator": arm.coordinator,
        "kernel_log_read": arm.kernel_log,
        "agents": agents,
    }


def _count(items: Any) -> dict[str, int]:
    out: dict[str, int] = {}
    for x in items:
        out[x] = out.get(x, 0) + 1
    return out


def _change_pct(value: float, base: float) -> float | None:
    """Signed change against the baseline in percent (-100 = all gone; None: no baseline)."""
    return None if not base else round(100 * (value / base - 1), 1)


def metrics(rows: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The framework's three metrics for each arm against the bare arm of the same run.

    ``*_change_pct`` is signed: -90 means 90% fewer (or less) than bare, +50 means 50% more.
    """
    base = rows.get("bare")
    out: dict[str, Any] = {}
    for name, r in rows.items():
        if r.get("skipped") or base is None or base.get("skipped"):
            continue
        out[name] = {
            "interruptions": r["interruptions"],
            "interruptions_bare": base["interruptions"],
            "interruptions_change_pct": _change_pct(r["interruptions"], base["interruptions"]),
            "avg_memory_change_pct": _change_pct(r["avg_bytes"] or 0, base["avg_bytes"] or 0),
            "cache_agent_memory_change_pct": _change_pct(
                r.get("cache_agent_avg_bytes") or 0, base.get("cache_agent_avg_bytes") or 0
            ),
            "oom_errors": r["kernel_oom_kills"],
        }
    return out


# -- output ----------------------------------------------------------------------------


def _mib(b: int | None) -> str:
    return "-" if b is None else f"{b / MIB:.0f}"


def print_table(rows: dict[str, dict[str, Any]], plan: Plan, mets: dict[str, Any]) -> str:
    lines = []
    hdr = (
        f"{'arm':<38} {'orch':>5} {'good fin/start':>14} {'good killed (by)':<26} {'runaways stopped (by)':<30}"
        f" {'OOM':>4} {'peak MiB':>9} {'avg MiB':>8} {'cache agent MiB':>15} {'wall s':>7}"
    )
    lines.append(hdr)
    lines.append("-" * len(hdr))
    for r in rows.values():
        if r.get("skipped"):
            lines.append(f"{r['arm']:<38} skipped: {r['skipped']}")
            continue
        by = ", ".join(f"{k} {v}" for k, v in r["runaways_stopped_by"].items()) or "-"
        gby = ", ".join(f"{k} {v}" for k, v in r["good_killed_by"].items())
        lost = (
            f" +{r['good_lost_with_orchestrator']} lost" if r["good_lost_with_orchestrator"] else ""
        )
        lines.append(
            f"{r['title']:<38} {'yes' if r['orchestrator_survived'] else 'KILLED':>5}"
            f" {str(r['good_finished']) + '/' + str(r['good_started']) + ' of ' + str(r['good_planned']):>14}"
            f" {(str(r['good_killed']) + (' (' + gby + ')' if gby else '') + lost):<26}"
            f" {(str(r['runaways_stopped']) + '/' + str(r['runaways']) + ' (' + by + ')'):<30}"
            f" {r['kernel_oom_kills']:>4} {_mib(r['peak_bytes']):>9} {_mib(r['avg_bytes']):>8}"
            f" {_mib(r['cache_agent_avg_bytes']):>15} {r['wall_s']:>7}"
        )
    lines.append("")
    lines.append(
        f"machine {plan.machine_bytes / GIB:g} GiB, seed {plan.seed}, {len(plan.agents)} agents "
        f"({sum(a.good for a in plan.agents)} well-behaved, {sum(not a.good for a in plan.agents)} runaways)"
    )
    lines.append(
        "against bare, same run (interruptions = good agents killed or lost + orchestrator killed):"
    )
    for name, m in mets.items():
        if name == "bare":
            continue

        def pct(v: float | None) -> str:
            return "n/a" if v is None else f"{v:+.0f}%"

        lines.append(
            f"  {ARM_TITLES[name]:<38} interruptions {m['interruptions']} vs {m['interruptions_bare']}"
            f" ({pct(m['interruptions_change_pct'])})  avg memory {pct(m['avg_memory_change_pct'])}"
            f"  cache-agent memory {pct(m['cache_agent_memory_change_pct'])}  kernel OOM kills {m['oom_errors']}"
        )
    text = "\n".join(lines)
    print(text)
    return text


def plot(arms: dict[str, ArmRun], rows: dict[str, dict[str, Any]], plan: Plan, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colors = {
        "bare": "tab:red",
        "percg": "tab:purple",
        "pmrun": "tab:green",
        "earlyoom": "tab:orange",
    }
    markers = {
        "kernel": ("X", "black"),
        "kernel (agent limit)": ("P", "dimgray"),
        "pmrun": ("v", "tab:green"),
        "earlyoom": ("s", "tab:orange"),
    }
    fig, (ax, ax2) = plt.subplots(
        2, 1, figsize=(11, 8), sharex=True, gridspec_kw={"height_ratios": [3, 1.4]}
    )
    seen_labels: set[str] = set()
    for name, arm in arms.items():
        if arm.skipped or not arm.samples:
            continue
        ts = [s[0] - arm.t0 for s in arm.samples]
        ax.plot(
            ts,
            [s[1] / GIB for s in arm.samples],
            color=colors[name],
            lw=1.4,
            label=ARM_TITLES[name],
        )
        ax2.plot(ts, [s[3] / GIB for s in arm.samples], color=colors[name], lw=1.2)

        def at(t: float, arm: ArmRun = arm) -> float:
            # The orchestrator notices an end up to 50 ms late, after the memory was freed:
            # mark the kill at the highest usage of the half second before.
            near = [s[1] for s in arm.samples if t - 0.5 <= s[0] - arm.t0 <= t]
            if not near:
                near = [min(arm.samples, key=lambda s: abs(s[0] - arm.t0 - t))[1]]
            return max(near) / GIB

        for a in rows[name]["agents"]:
            if a["outcome"] == "killed" and a.get("end") is not None:
                kind = (
                    "pmrun"
                    if a["killer"] == "pmrun"
                    else a["killer"]
                    if a["killer"] in markers
                    else "kernel"
                )
                m, c = markers[kind]
                label = f"stopped by {kind}" if kind not in seen_labels else None
                seen_labels.add(kind)
                ax.scatter(
                    [a["end"]],
                    [at(a["end"])],
                    marker=m,
                    color=c,
                    s=70 if a["good"] else 40,
                    edgecolors=colors[name],
                    linewidths=1.5,
                    zorder=5,
                    label=label,
                )
        if not rows[name]["orchestrator_survived"]:
            t = arm.t_end - arm.t0
            ax.scatter(
                [t],
                [at(t)],
                marker="*",
                color=colors[name],
                s=250,
                edgecolors="black",
                zorder=6,
                label=f"orchestrator killed ({name})",
            )
    ax.axhline(
        plan.machine_bytes / GIB,
        color="black",
        ls="--",
        lw=1,
        label=f"machine limit {plan.machine_bytes / GIB:g} GiB",
    )
    ax.set_ylabel("session memory (cgroup usage), GiB")
    ax.set_title(
        f"Fleet survival: same seeded session (seed {plan.seed}) on a {plan.machine_bytes / GIB:g} GiB machine\n"
        "large markers: well-behaved agents killed; small: runaways stopped"
    )
    ax.legend(loc="upper right", fontsize=8)
    ax.grid(alpha=0.3)
    ax2.set_ylabel("cache agents' RSS, GiB")
    ax2.set_xlabel("seconds since the orchestrator started")
    ax2.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# -- main --------------------------------------------------------------------------------


def cleanup_stale() -> None:
    """Remove machine groups left by a harness that was SIGKILLed (its pid is gone)."""
    try:
        _, parent = simcg.detect()
    except simcg.SimMachineError:
        return
    for entry in os.listdir(parent):
        m = re.fullmatch(r"fleet-bench-(\d+)(-\w+)?", entry)
        if m and not os.path.exists(f"/proc/{m.group(1)}"):
            path = os.path.join(parent, entry)
            simcg.kill_tree(path)
            simcg.remove_tree(path)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Fleet survival benchmark (see benchmarks/fleet/README.md)"
    )
    ap.add_argument(
        "--machine",
        type=parse_size,
        default=3 * GIB,
        help="the simulated machine's memory (default 3G)",
    )
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--quick", action="store_true", help="a short session (~15 s an arm)")
    ap.add_argument(
        "--arms", default=",".join(ARMS), help=f"comma-separated, from {','.join(ARMS)}"
    )
    ap.add_argument("--pmrun-backend", default="auto", choices=("auto", "cgroup", "sampling"))
    ap.add_argument("--grace", type=float, default=2.0, help="pmrun --grace for the agents")
    ap.add_argument("--out", default=str(RESULTS / "fleet.json"))
    ap.add_argument("--png", default=str(RESULTS / "fleet.png"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, reports)")
    a = ap.parse_args(argv)
    arms = [x.strip() for x in a.arms.split(",") if x.strip()]
    bad = [x for x in arms if x not in ARMS]
    if bad:
        ap.error(f"unknown arm(s) {bad}: choose from {ARMS}")
    if os.geteuid() != 0:
        print("fleet benchmark: needs root to create memory cgroups", file=sys.stderr)
        return 2
    cmd = " ".join(
        shlex.quote(x)
        for x in [
            ".venv/bin/python",
            "benchmarks/fleet/run.py",
            *(argv if argv is not None else sys.argv[1:]),
        ]
    )
    print(f"reproduce: {cmd}", flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # run the finally blocks
    cleanup_stale()
    plan = make_plan(a.seed, a.machine, quick=a.quick)
    work = tempfile.mkdtemp(prefix="fleet-")
    plan_path = os.path.join(work, "plan.json")
    Path(plan_path).write_text(json.dumps(plan.to_dict(), indent=1))
    runs: dict[str, ArmRun] = {}
    rows: dict[str, dict[str, Any]] = {}
    try:
        for name in arms:
            print(f"arm {name} ...", flush=True)
            runs[name] = run_arm(name, plan, plan_path, work, a)
            rows[name] = summarize(runs[name], plan, work)
        mets = metrics(rows)
        table = print_table(rows, plan, mets)
        doc = {
            "command": cmd,
            "machine_bytes": plan.machine_bytes,
            "seed": plan.seed,
            "quick": a.quick,
            "kernel": os.uname().release,
            "plan": plan.to_dict(),
            "arms": rows,
            "metrics_vs_bare": mets,
            "table": table,
            "run_dir": work if a.keep else None,
        }
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(doc, indent=1, default=str))
        try:
            plot(runs, rows, plan, Path(a.png))
            print(f"wrote {a.out} and {a.png}")
        except ImportError:
            print(f"wrote {a.out} (no matplotlib: no plot)")
    finally:
        if a.keep:
            print(f"run directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
