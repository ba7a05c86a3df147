"""What ``pmrun -- COMMAND`` costs, and how closely it holds a limit.

Four measurements, each against a baseline taken in the same run:

1. start-up: wall time of ``pmrun --no-coordinator -- true`` vs ``true`` vs a bare
   ``python -c pass`` of the venv's interpreter (medians, interleaved rounds), plus the
   launch path's imports (``-X importtime``) so a regression names its module;
2. sampling cost: the launcher's own CPU (its pid's utime+stime and schedstat, read as
   a zombie just before it is reaped, plus its keeper fork's) while it wraps a 20-process
   tree sleeping 10 s, net of the same tree sleeping 0 s, vs a do-nothing parent;
3. overshoot: the tree's peak RSS at the kill / --max-rss, for a C allocator growing
   as fast as one thread can, with 4 KiB pages and with MADV_HUGEPAGE (Python fallback
   without a compiler), per backend, and the allocator's growth rate on this machine;
4. cgroup group creation: ``--backend cgroup`` vs ``--backend sampling`` on ``true``;
5. parked: the launcher's CPU while the tree sits at 97% of ``--max-rss`` for 10 s (the
   worst case of the adaptive interval), per backend, vs the same tree unwrapped.

Run from anywhere (``--quick`` for fewer repetitions)::

    .venv/bin/python benchmarks/bench_launcher.py [--quick] [--only startup,sampling,parked,...]

It prints the command that reproduces it, a table, and writes
``benchmarks/results/launcher.json``. The benchmark makes itself a child subreaper
and kills every descendant it has on exit, so nothing it starts outlives it.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
VENV_PYTHON = REPO / ".venv" / "bin" / "python"
PMRUN = REPO / ".venv" / "bin" / "pmrun"
AGENTS = Path(__file__).resolve().parent / "agents"
RESULTS = Path(__file__).resolve().parent / "results" / "launcher.json"

CLK_TCK = os.sysconf("SC_CLK_TCK")
PR_SET_CHILD_SUBREAPER = 36
# Modules the launcher's fast path must not import (src/pmrun/cli/__init__.py says so
# for click and psutil; the rest are the heavy optional ones of other subcommands).
FORBIDDEN_ON_FAST_PATH = ("click", "psutil", "rich", "matplotlib", "prometheus_client", "numpy")

# Targets; each is checked against a baseline of the same run.
STARTUP_TARGET_INTERPRETERS = 2.0  # (pmrun - true) <= 2 x (python -c pass)
SAMPLING_TARGET_CORE_PCT = 0.5  # launcher CPU while idle-wrapping a tree, % of one core
OVERSHOOT_TARGET = {"sampling": 1.05, "cgroup": 1.01}  # peak at the kill / --max-rss
CGROUP_CREATE_TARGET_S = 0.005  # --backend cgroup minus --backend sampling, on `true`
# Launcher CPU with the tree parked at 97% of --max-rss. Sampling keeps a sample every
# 10 ms there (the overshoot bound of policy.PARKED_MAX_INTERVAL_S), the cgroup backend
# one every 50 ms (the kernel wakes it at the limit).
PARKED_TARGET_CORE_PCT = {"sampling": 3.0, "cgroup": 1.5}
PARKED_FRACTION = 0.97
PARKED_LIMIT = "400M"
# Grows to FRACTION of LIMIT bytes (its interpreter included), then holds still S seconds.
PARKED_TREE = (
    "import sys, time\n"
    "target = int(float(sys.argv[1]) * int(sys.argv[2]))\n"
    "page = 4096\n"
    "with open('/proc/self/statm') as f:\n"
    "    rss = int(f.read().split()[1]) * page\n"
    "held = b'x' * max(target - rss - (2 << 20), 0)\n"
    "time.sleep(float(sys.argv[3]))\n"
)

TREE_PROCESSES = 20  # sh + 19 sleeps
TREE_SCRIPT = (
    "i=1; while [ $i -lt {n} ]; do sleep {s} & i=$((i+1)); done; wait"  # sh + (n-1) sleeps
)
# A parent that does nothing but wait: the baseline of the sampling benchmark.
IDLE_PARENT = (
    "import os, sys\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    os.execvp('sh', ['sh', '-c', sys.argv[1]])\n"
    "os.waitpid(pid, 0)\n"
)

IMPORT_ALL = (
    "import sys\n"
    "for m in sys.argv[1:]:\n"
    "    try:\n"
    "        __import__(m)\n"
    "    except ImportError:\n"
    "        pass\n"
)

# -- processes: every one we start dies with us -------------------------------------


def become_subreaper() -> bool:
    """Orphans of anything we start (a daemonised coordinator, a stray sleep) reparent to us."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def descendants(pid: int | None = None) -> list[int]:
    """Every live descendant of ``pid`` (default: us), parents first."""
    out: list[int] = []
    stack = [pid or os.getpid()]
    while stack:
        p = stack.pop()
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{p}/task/{tid}/children") as f:
                    kids = [int(k) for k in f.read().split()]
            except OSError:
                continue
            out.extend(kids)
            stack.extend(kids)
    return out


def kill_descendants(deadline_s: float = 5.0) -> list[int]:
    """SIGKILL every descendant and reap them; returns the pids that were still there."""
    killed: list[int] = []
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        alive = [p for p in descendants() if _state(p) not in ("Z", "")]
        for p in alive:
            try:
                os.kill(p, signal.SIGKILL)
                killed.append(p)
            except ProcessLookupError:
                pass
        _reap_all()
        if not alive and not descendants():
            break
        time.sleep(0.01)
    return sorted(set(killed))


def _reap_all() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _state(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/stat") as f:
            text = f.read()
    except OSError:
        return ""
    return text[text.rfind(")") + 2 :].split()[0]


def own_cpu(pid: int) -> tuple[float, float]:
    """(utime+stime in s from /proc/PID/stat, precise run time in s from schedstat) of ``pid``.

    utime+stime cover every thread, in clock ticks (10 ms); schedstat is in ns but only
    for the main thread. Neither includes the children's time (that is cutime/cstime).
    """
    with open(f"/proc/{pid}/stat") as f:
        text = f.read()
    fields = text[text.rfind(")") + 2 :].split()
    ticks = int(fields[11]) + int(fields[12])
    try:
        with open(f"/proc/{pid}/schedstat") as f:
            run_ns = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        run_ns = -1
    return ticks / CLK_TCK, run_ns / 1e9


# Where the children's bytecode is cached (set in main). An installed pmrun has its .pyc
# files; an editable install under PYTHONDONTWRITEBYTECODE=1 (this project's dev
# environment) compiles every pmrun module at every start. We measure the installed case
# without writing into src/: the cache goes to a temporary PYTHONPYCACHEPREFIX.
PYCACHE_PREFIX: Path | None = None


def child_env(bytecode_cache: bool = True) -> dict[str, str]:
    """Our environment without PMRUN_* settings, so only the flags we pass count."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PMRUN_")}
    env.pop("PYTHONPROFILEIMPORTTIME", None)
    if PYCACHE_PREFIX is None:
        return env
    if bytecode_cache:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(PYCACHE_PREFIX)
    else:
        # Everything cached but pmrun's own modules, which are compiled at every start
        # (and never written), whatever __pycache__ directories src/ may hold.
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["PYTHONPYCACHEPREFIX"] = str(_prefix_without_pmrun())
    return env


def _prefix_without_pmrun() -> Path:
    assert PYCACHE_PREFIX is not None
    out = PYCACHE_PREFIX.with_name(PYCACHE_PREFIX.name + "-without-pmrun")
    if not out.exists():
        shutil.copytree(PYCACHE_PREFIX, out)
        shutil.rmtree(out / str(REPO / "src").lstrip("/"), ignore_errors=True)
    return out


def run_quiet(
    argv: Sequence[str], timeout_s: float = 60.0, **kw: Any
) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        timeout=timeout_s,
        cwd=REPO,
        env=kw.pop("env", None) or child_env(),
        **kw,
    )


def wall_s(argv: Sequence[str], env: dict[str, str] | None = None) -> float:
    """Wall time of one run of ``argv`` (fork+exec+wait), in seconds; fails loudly."""
    t0 = time.perf_counter()
    r = run_quiet(argv, env=env)
    t = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(
            f"{' '.join(map(str, argv))} exited {r.returncode}: {r.stderr.decode()[-400:]}"
        )
    return t


# -- statistics and formatting ------------------------------------------------------


def summary(xs: Sequence[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "median": statistics.median(s),
        "min": s[0],
        "p90": s[min(len(s) - 1, int(round(0.9 * (len(s) - 1))))],
        "max": s[-1],
        "n": len(s),
    }


def ms(x: float) -> str:
    return f"{x * 1e3:.1f} ms"


def signed_ms(x: float) -> str:
    return f"{'+' if x >= 0 else '-'}{abs(x) * 1e3:.1f} ms"


def gibps(x: float) -> str:
    return f"{x / (1 << 30):.2f} GiB/s"


def verdict(ok: bool | None) -> str:
    return "pending" if ok is None else ("PASS" if ok else "MISS")


def say(text: str) -> None:
    print(text, flush=True)


# -- what this checkout has -----------------------------------------------------------


def venv_has_module(name: str) -> bool:
    r = run_quiet(
        [
            str(VENV_PYTHON),
            "-c",
            f"import importlib.util, sys; sys.exit(importlib.util.find_spec({name!r}) is None)",
        ]
    )
    return r.returncode == 0


def cgroup_backend_status() -> tuple[bool, str]:
    """Whether ``--backend cgroup`` works here, and why not when it does not."""
    if not venv_has_module("pmrun.backends.cgroup"):
        return False, "src/pmrun/backends/cgroup.py not in this checkout yet"
    with tempfile.TemporaryDirectory() as d:
        rep = Path(d) / "r.json"
        r = run_quiet(
            [
                str(PMRUN),
                "--no-coordinator",
                "--backend",
                "cgroup",
                "--report",
                str(rep),
                "--",
                "true",
            ]
        )
        if r.returncode != 0 or not rep.exists():
            return (
                False,
                f"pmrun --backend cgroup failed ({r.returncode}): {r.stderr.decode().strip()[-300:]}",
            )
        name = json.loads(rep.read_text())["backend"].get("name", "")
    if not str(name).startswith("cgroup"):
        return False, f"--backend cgroup ran with backend {name!r}"
    return True, str(name)


def machine_info() -> dict[str, Any]:
    def read(path: str) -> str:
        try:
            return Path(path).read_text().strip()
        except OSError:
            return ""

    model = ""
    for line in read("/proc/cpuinfo").splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    mem_kib = 0
    for line in read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            mem_kib = int(line.split()[1])
    venv_version = subprocess.run(
        [str(VENV_PYTHON), "-c", "import sys; print(sys.version.split()[0])"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return {
        "nproc": os.cpu_count(),
        "cpu_model": model,
        "mem_total_bytes": mem_kib * 1024,
        "kernel": platform.release(),
        "python": venv_version,
        "benchmark_python": platform.python_version(),
        "cgroup": "v2" if Path("/sys/fs/cgroup/cgroup.controllers").exists() else "v1",
        "thp": read("/sys/kernel/mm/transparent_hugepage/enabled"),
        "clk_tck": CLK_TCK,
        "loadavg_at_start": read("/proc/loadavg"),
        "git_head": subprocess.run(
            ["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip(),
    }


# -- 1. start-up ----------------------------------------------------------------------


def parse_importtime(stderr: str) -> list[tuple[str, int, int, int]]:
    """``-X importtime`` lines as (module, self_us, cumulative_us, depth), in import order."""
    out = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cum_us, name = line.split(":", 1)[1].split("|", 2)
        depth = (len(name) - 1 - len(name.lstrip(" "))) // 2  # one space after "|", two a level
        out.append((name.strip(), int(self_us), int(cum_us), depth))
    return out


def importtime_of(argv: Sequence[str]) -> list[tuple[str, int, int, int]]:
    env = child_env()
    env["PYTHONPROFILEIMPORTTIME"] = "1"
    r = run_quiet(argv, env=env)
    return parse_importtime(r.stderr.decode(errors="replace"))


def bench_importtime(reps: int) -> dict[str, Any]:
    """The launch path's imports: those of a real ``pmrun --no-coordinator -- true`` not in ``python -c pass``."""
    importtime_of([str(PMRUN), "--no-coordinator", "--", "true"])  # fills the .pyc cache
    bare = {m for m, *_ in importtime_of([str(VENV_PYTHON), "-c", "pass"])}
    runs = [importtime_of([str(PMRUN), "--no-coordinator", "--", "true"]) for _ in range(reps)]
    self_us: dict[str, list[int]] = {}
    cum_us: dict[str, list[int]] = {}
    top_level: list[str] = []
    for run in runs:
        for name, s, c, depth in run:
            if name in bare:
                continue
            self_us.setdefault(name, []).append(s)
            cum_us.setdefault(name, []).append(c)
            if depth == 0 and name not in top_level:
                top_level.append(name)
    med_self = {m: statistics.median(v) for m, v in self_us.items()}
    med_cum = {m: statistics.median(v) for m, v in cum_us.items()}
    total_us = sum(med_cum[m] for m in top_level)
    forbidden = {m: med_cum[m] for m in FORBIDDEN_ON_FAST_PATH if m in med_cum}
    return {
        "reps": reps,
        "modules": len(med_self),
        "top_level_order": top_level,
        "total_cumulative_us": total_us,
        "top_self_us": sorted(med_self.items(), key=lambda kv: -kv[1])[:15],
        "top_level_cumulative_us": sorted(
            ((m, med_cum[m]) for m in top_level), key=lambda kv: -kv[1]
        ),
        "forbidden_imported_cumulative_us": forbidden,
        "note": "-X importtime inflates every figure; compare runs of this benchmark, not with wall time",
    }


def bench_startup(reps: int, imports: list[str], coordinator: bool, tmp: Path) -> dict[str, Any]:
    true = shutil.which("true") or "/bin/true"
    py = str(VENV_PYTHON)
    commands: dict[str, list[str]] = {
        "true": [true],
        "python -c pass": [py, "-c", "pass"],
        # The modules a real launch imports, in its order; some may be missing from
        # this checkout (the launcher tries pmrun.backends.cgroup, for one).
        "python -c 'import <launch path>'": [py, "-c", IMPORT_ALL, *imports],
        # The same, ending with os._exit: the difference is the interpreter's teardown.
        "python -c 'import <launch path>; os._exit(0)'": [
            py,
            "-c",
            IMPORT_ALL + "import os\nos._exit(0)\n",
            *imports,
        ],
        "pmrun --no-coordinator -- true": [str(PMRUN), "--no-coordinator", "--", "true"],
        "pmrun --no-coordinator --backend sampling -- true": [
            *(str(PMRUN), "--no-coordinator", "--backend", "sampling", "--", "true")
        ],
    }
    no_pyc = "pmrun --no-coordinator -- true (pmrun not byte-compiled)"
    commands[no_pyc] = commands["pmrun --no-coordinator -- true"]
    envs = {k: child_env(bytecode_cache=k != no_pyc) for k in commands}
    result: dict[str, Any] = {"commands": {k: v for k, v in commands.items()}}
    result["default_backend"] = default_backend(tmp)
    for name, argv in commands.items():  # warm the page cache and the .pyc files
        for _ in range(3):
            wall_s(argv, env=envs[name])
    times: dict[str, list[float]] = {k: [] for k in commands}
    for i in range(reps):  # interleaved, so drift on a shared machine hits all alike
        for name, argv in commands.items():
            times[name].append(wall_s(argv, env=envs[name]))
        if (i + 1) % 10 == 0:
            say(f"  start-up: {i + 1}/{reps} rounds")
    result["wall_s"] = {k: summary(v) for k, v in times.items()}
    med = {k: v["median"] for k, v in result["wall_s"].items()}
    overhead = med["pmrun --no-coordinator -- true"] - med["true"]
    interp = med["python -c pass"]
    result["pmrun_overhead_s"] = overhead
    result["python_start_s"] = interp
    result["overhead_in_interpreter_starts"] = overhead / interp
    result["imports_s"] = med["python -c 'import <launch path>'"] - interp
    result["teardown_s"] = (
        med["python -c 'import <launch path>'"]
        - med["python -c 'import <launch path>; os._exit(0)'"]
    )
    result["launcher_work_s"] = (
        med["pmrun --no-coordinator -- true"] - med["python -c 'import <launch path>'"]
    )
    result["target"] = f"(pmrun - true) <= {STARTUP_TARGET_INTERPRETERS:g} x (python -c pass)"
    result["pass"] = overhead <= STARTUP_TARGET_INTERPRETERS * interp
    result["no_pyc_extra_s"] = med[no_pyc] - med["pmrun --no-coordinator -- true"]
    result["coordinator"] = bench_startup_coordinator(reps, tmp) if coordinator else None
    return result


def default_backend(tmp: Path) -> str:
    """The backend ``--backend auto`` picks here (the report says)."""
    rep = tmp / "default-backend.json"
    run_quiet([str(PMRUN), "--no-coordinator", "--report", str(rep), "--", "true"])
    try:
        return str(json.loads(rep.read_text())["backend"]["name"])
    except (OSError, ValueError, KeyError):
        return "?"


def bench_startup_coordinator(reps: int, tmp: Path) -> dict[str, Any]:
    """``pmrun -- true`` through the coordinator, on a private socket so no shared one is touched."""
    sock = tmp / "coordinator" / "coordinator.sock"
    sock.parent.mkdir(parents=True, exist_ok=True)
    env = child_env()
    env["XDG_RUNTIME_DIR"] = str(sock.parent)
    argv = [str(PMRUN), "--socket", str(sock), "--", "true"]
    base = [str(PMRUN), "--no-coordinator", "--", "true"]
    out: dict[str, Any] = {"command": argv}
    try:
        out["first_run_s"] = wall_s(argv, env=env)  # starts the coordinator
        for _ in range(3):
            wall_s(argv, env=env)
        times, base_times = [], []
        for _ in range(reps):
            times.append(wall_s(argv, env=env))
            base_times.append(wall_s(base))
        out["wall_s"] = summary(times)
        out["no_coordinator_wall_s"] = summary(base_times)
        out["extra_s"] = out["wall_s"]["median"] - out["no_coordinator_wall_s"]["median"]
    except (RuntimeError, subprocess.TimeoutExpired) as e:
        out["error"] = str(e)[-400:]
    finally:
        out["daemons_killed"] = kill_descendants()  # the coordinator it started
    return out


# -- 2. sampling cost -----------------------------------------------------------------


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def forks_of(pid: int) -> list[int]:
    """Descendants of ``pid`` that are forks of it without an exec (pmrun's keeper)."""
    me = _cmdline(pid)
    return [d for d in descendants(pid) if me and _cmdline(d) == me]


def measure_parent_cpu(
    parents: dict[str, list[str]], timeout_s: float, poll_s: float = 0.05
) -> dict[str, dict[str, float]]:
    """Start every parent at once; for each, its own CPU and wall time at its exit.

    A parent's CPU is its own (read as a zombie, before we reap it) plus that of its
    forks that did not exec (pmrun's keeper), polled every ``poll_s``: the last
    reading of a fork comes at most ``poll_s`` before its exit, when it is idle.
    """
    procs: dict[str, subprocess.Popen] = {}
    started: dict[str, float] = {}
    forks: dict[str, dict[int, tuple[float, float]]] = {name: {} for name in parents}
    out: dict[str, dict[str, float]] = {}
    try:
        for name, argv in parents.items():
            started[name] = time.perf_counter()
            procs[name] = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, cwd=REPO, env=child_env()
            )
        deadline = time.monotonic() + timeout_s
        pending = dict(procs)
        while pending:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{', '.join(pending)} did not finish in {timeout_s:.0f} s")
            for name, p in list(pending.items()):
                for f in forks_of(p.pid):
                    try:
                        forks[name][f] = own_cpu(f)
                    except OSError:
                        pass
                if os.waitid(os.P_PID, p.pid, os.WEXITED | os.WNOWAIT | os.WNOHANG) is None:
                    continue
                wall = time.perf_counter() - started[name]
                ticks_s, run_s = own_cpu(p.pid)
                rc = p.wait()
                if rc != 0:
                    raise RuntimeError(f"{name} exited {rc}")
                fork_ticks = sum(t for t, _ in forks[name].values())
                fork_run = sum(r for _, r in forks[name].values())
                out[name] = {
                    "cpu_s": ticks_s + fork_ticks,
                    "schedstat_s": run_s + fork_run if run_s >= 0 else -1.0,
                    "wall_s": wall,
                    "forks": len(forks[name]),
                    "fork_cpu_s": fork_ticks,
                }
                del pending[name]
            time.sleep(poll_s if pending else 0)
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.wait()
    return out


def bench_sampling(rounds: int, sleep_s: float, backends: list[str], tmp: Path) -> dict[str, Any]:
    """Launcher CPU over a wrapped idle tree, net of the same tree with ``sleep 0``.

    One pmrun per backend and the idle parent run side by side in each round.
    """
    py = str(VENV_PYTHON)
    launchers = [f"pmrun {b}" for b in backends]

    def report(b: str, tag: str) -> Path:
        return tmp / f"sampling-{b}-{tag}.json"

    def parents(s: float, tag: str) -> dict[str, list[str]]:
        tree = TREE_SCRIPT.format(n=TREE_PROCESSES, s=s)
        out = {
            f"pmrun {b}": [
                *(str(PMRUN), "--no-coordinator", "--backend", b),
                *("--report", str(report(b, tag)), "--", "sh", "-c", tree),
            ]
            for b in backends
        }
        out["idle parent"] = [py, "-c", IDLE_PARENT, tree]
        return out

    def samples(b: str, tag: str) -> int:
        return int(json.loads(report(b, tag).read_text())["samples"])

    rows: list[dict[str, Any]] = []
    for i in range(rounds):
        long = measure_parent_cpu(parents(sleep_s, f"long{i}"), sleep_s + 30)
        short = measure_parent_cpu(parents(0, f"short{i}"), 30)
        row: dict[str, Any] = {"long": long, "short": short}
        row["samples"] = {f"pmrun {b}": samples(b, f"long{i}") for b in backends}
        row["short_samples"] = {f"pmrun {b}": samples(b, f"short{i}") for b in backends}
        rows.append(row)
        done = [
            f"{who} {long[who]['cpu_s'] * 1e3:.0f} ms CPU"
            + (f" ({row['samples'][who]} samples)" if who in row["samples"] else "")
            for who in long
        ]
        say(f"  sampling: round {i + 1}/{rounds}: {', '.join(done)}")

    def med(who: str, key: str, net: bool = False) -> float:
        """Median over rounds of the long run's ``key``, less the short run's when ``net``."""
        return statistics.median(
            r["long"][who][key] - (r["short"][who][key] if net else 0.0) for r in rows
        )

    out: dict[str, Any] = {
        "rounds": rounds,
        "sleep_s": sleep_s,
        "tree_processes": TREE_PROCESSES,
        "backends": backends,
        "runs": rows,
    }
    # schedstat is precise (ns) but per main thread and may be missing; ticks are 10 ms.
    precise = all(
        v["schedstat_s"] >= 0 for r in rows for run in ("long", "short") for v in r[run].values()
    )
    for who in (*launchers, "idle parent"):
        wall = med(who, "wall_s")
        total = med(who, "cpu_s")
        net = med(who, "schedstat_s" if precise else "cpu_s", net=True)
        out[who] = {
            "cpu_s": total,
            "net_cpu_s": net,
            "net_cpu_source": "schedstat" if precise else "utime+stime",
            "net_cpu_ticks_s": med(who, "cpu_s", net=True),
            "wall_s": wall,
            "total_core_pct": 100 * total / wall,
            "net_core_pct": 100 * net / wall,
        }
        if who in launchers:
            n = statistics.median(r["samples"][who] for r in rows)
            net_n = statistics.median(r["samples"][who] - r["short_samples"][who] for r in rows)
            out[who]["samples"] = n
            out[who]["samples_per_s"] = n / wall
            out[who]["cpu_us_per_sample"] = 1e6 * net / net_n if net_n > 0 else None
            out[who]["pass"] = out[who]["net_core_pct"] < SAMPLING_TARGET_CORE_PCT
    out["target"] = (
        f"< {SAMPLING_TARGET_CORE_PCT}% of one core, net of start-up (same tree, sleep 0)"
    )
    out["pass"] = all(out[w]["pass"] for w in launchers)
    return out


# -- 5. parked near the limit ---------------------------------------------------------


def bench_parked(rounds: int, hold_s: float, backends: list[str], tmp: Path) -> dict[str, Any]:
    """Launcher CPU while its tree holds still at 97% of --max-rss, net of start-up.

    One backend at a time (the tree holds ~400 MB); each round runs the parked tree for
    ``hold_s`` and for 0 s, under pmrun and unwrapped, so the start-up cancels out.
    """
    limit = _size(PARKED_LIMIT)
    py = str(VENV_PYTHON)
    out: dict[str, Any] = {"limit": PARKED_LIMIT, "fraction": PARKED_FRACTION, "hold_s": hold_s}
    for b in backends:
        rows = []
        for i in range(rounds):
            runs = {}
            for tag, s in (("long", hold_s), ("short", 0.0)):
                rep = tmp / f"parked-{b}-{tag}{i}.json"
                tree = [py, "-c", PARKED_TREE, str(PARKED_FRACTION), str(limit), str(s)]
                argv = [str(PMRUN), "--no-coordinator", "--backend", b, "--max-rss"]
                argv += [PARKED_LIMIT, "--report", str(rep), "--", *tree]
                cpu = measure_parent_cpu({"pmrun": argv}, s + 60)["pmrun"]
                cpu["samples"] = json.loads(rep.read_text())["samples"]
                runs[tag] = cpu
            rows.append(runs)
            long = runs["long"]
            say(
                f"  parked {b}: round {i + 1}/{rounds}: {long['cpu_s'] * 1e3:.0f} ms CPU,"
                f" {long['samples']} samples in {long['wall_s']:.1f} s"
            )
        med = statistics.median
        precise = all(r[t]["schedstat_s"] >= 0 for r in rows for t in r)
        key = "schedstat_s" if precise else "cpu_s"
        net = med(r["long"][key] - r["short"][key] for r in rows)
        wall = med(r["long"]["wall_s"] - r["short"]["wall_s"] for r in rows)
        n = med(r["long"]["samples"] - r["short"]["samples"] for r in rows)
        out[b] = {
            "runs": rows,
            "net_cpu_s": net,
            "net_wall_s": wall,
            "net_core_pct": 100 * net / wall if wall > 0 else None,
            "samples_per_s": n / wall if wall > 0 else None,
            "pass": wall > 0 and 100 * net / wall < PARKED_TARGET_CORE_PCT[b],
        }
    out["target"] = {b: f"< {PARKED_TARGET_CORE_PCT[b]}% of one core" for b in backends}
    out["pass"] = all(out[b]["pass"] for b in backends)
    return out


def _size(text: str) -> int:
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    return int(float(text[:-1]) * units[text[-1]]) if text[-1] in units else int(text)


# -- 3. overshoot ---------------------------------------------------------------------


def build_allocator(tmp: Path) -> tuple[list[str], str]:
    """The fastest allocator this machine can run: C if a compiler is here, else Python."""
    cc = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if cc:
        exe = tmp / "alloc"
        r = subprocess.run(
            [cc, "-O2", "-o", str(exe), str(AGENTS / "alloc.c")], capture_output=True
        )
        if r.returncode == 0:
            return [str(exe)], f"C ({Path(cc).name} -O2, 16 MiB mmap chunks, one write per page)"
        say(f"  {cc} failed, using the Python allocator: {r.stderr.decode()[-200:]}")
    return [str(VENV_PYTHON), str(AGENTS / "alloc.py")], "Python (16 MiB bytes objects)"


def growth_rate(
    alloc: list[str], cap_bytes: int, reps: int, flags: Sequence[str] = ()
) -> dict[str, Any]:
    """Bytes per second the allocator adds to its RSS, from its first chunk to ``cap_bytes``."""
    rates = []
    for _ in range(reps):
        r = subprocess.run(
            [*alloc, str(cap_bytes), "--rate", *flags], capture_output=True, text=True, timeout=120
        )
        if r.returncode != 0:
            raise RuntimeError(f"allocator failed ({r.returncode}): {r.stderr[-200:]}")
        nbytes, seconds = r.stdout.split()
        rates.append(int(nbytes) / float(seconds))
    return {"cap_bytes": cap_bytes, "bytes_per_s": summary(rates), "runs": rates}


def overshoot_run(
    alloc: list[str], flags: list[str], backend: str, limit: str, tmp: Path, i: int
) -> dict[str, Any]:
    rep = tmp / f"overshoot-{backend}-{limit}-{'-'.join(flags)}-{i}.json"
    argv = [
        str(PMRUN),
        "--no-coordinator",
        "--backend",
        backend,
        "--max-rss",
        limit,
        "--warn-rss",
        limit,
        "--grace",
        "0",
        "--quiet",
        "--report",
        str(rep),
        "--",
    ]
    # The allocator gives up by itself at 3x the limit, should pmrun fail to stop it.
    limit_bytes = int(float(limit[:-1]) * {"M": 1 << 20, "G": 1 << 30}[limit[-1]])
    r = run_quiet([*argv, *alloc, str(3 * limit_bytes), *flags], timeout_s=120)
    if not rep.exists():
        return {"error": f"no report (exit {r.returncode}): {r.stderr.decode()[-300:]}"}
    d = json.loads(rep.read_text())
    max_rss = d["limits"]["max_rss"]
    row = {
        "reason": d["reason"],
        "exit_status": d["exit_status"],
        "samples": d["samples"],
        "max_rss_bytes": max_rss,
        "peak_rss_bytes": d["peak_rss_bytes"],
        "ru_maxrss_bytes": d.get("ru_maxrss_bytes"),
        "kernel_peak_bytes": d.get("kernel_peak_bytes"),
        "kernel_oom_kills": d.get("kernel_oom_kills"),
        "sampled_ratio": d["peak_rss_bytes"] / max_rss,
        "wall_s": d["end_time"] - d["start_time"],
    }
    if d.get("ru_maxrss_bytes"):
        row["kernel_hiwater_ratio"] = d["ru_maxrss_bytes"] / max_rss
    if d.get("kernel_peak_bytes"):
        row["kernel_peak_ratio"] = d["kernel_peak_bytes"] / max_rss
    # The peak at the kill: the largest of what the launcher sampled (the crossing sample),
    # the kernel's RSS high-water mark of the command at its death (wait4 ru_maxrss; the
    # tree is stopped with SIGSTOP before SIGKILL, so it cannot grow in between) and, for a
    # cgroup, the group's own peak. The kernel's per-CPU RSS counters lag by up to a few
    # hundred KiB, so either of the first two may be the larger.
    row["peak_at_kill_ratio"] = max(
        row[k] for k in ("sampled_ratio", "kernel_hiwater_ratio", "kernel_peak_ratio") if k in row
    )
    return row


def bench_overshoot(
    allocators: dict[str, tuple[list[str], list[str], float]],
    backends: list[str],
    limits: list[str],
    reps: int,
    tmp: Path,
) -> dict[str, Any]:
    """Cells keyed "BACKEND LIMIT[ LABEL]"; ``allocators``: label -> (argv, flags, growth B/s)."""
    out: dict[str, Any] = {}
    for backend in backends:
        for label, (alloc, flags, growth_bps) in allocators.items():
            for limit in limits:
                name = f"{backend} {limit}" + (f" {label}" if label else "")
                rows = [overshoot_run(alloc, flags, backend, limit, tmp, i) for i in range(reps)]
                out[name] = overshoot_cell(rows, backend, growth_bps)
                cell = out[name]
                ratio = f"{cell['ratio']:.3f}" if "ratio" in cell else "-"
                say(f"  overshoot: {name}: {ratio} ({cell['stopped']}/{reps} stopped)")
    return out


def overshoot_cell(rows: list[dict[str, Any]], backend: str, growth_bps: float) -> dict[str, Any]:
    """Medians of one (backend, allocator, limit) over its runs; judged on the peak at the kill."""
    good = [r for r in rows if "error" not in r and r["reason"] in ("max-rss", "kernel-oom")]
    cell: dict[str, Any] = {"runs": rows, "stopped": len(good), "reps": len(rows)}
    if not good:
        cell["pass"] = False
        return cell
    for key in ("peak_at_kill_ratio", "sampled_ratio", "kernel_hiwater_ratio", "kernel_peak_ratio"):
        vals = [r[key] for r in good if key in r]
        if vals:
            cell[key] = summary(vals)
    cell["ratio"] = cell["peak_at_kill_ratio"]["median"]
    over_bytes = (cell["ratio"] - 1) * good[0]["max_rss_bytes"]
    # How late the stop came, had the allocator grown at its median rate throughout.
    cell["reaction_ms_at_median_growth"] = 1e3 * over_bytes / growth_bps if growth_bps else None
    cell["samples"] = statistics.median(r["samples"] for r in good)
    target = OVERSHOOT_TARGET["cgroup" if backend == "cgroup" else "sampling"]
    cell["pass"] = cell["ratio"] <= target and len(good) == len(rows)
    return cell


# -- 4. cgroup group creation ---------------------------------------------------------


def bench_cgroup_create(reps: int) -> dict[str, Any]:
    cmds = {
        b: [str(PMRUN), "--no-coordinator", "--backend", b, "--", "true"]
        for b in ("sampling", "cgroup")
    }
    for argv in cmds.values():
        for _ in range(3):
            wall_s(argv)
    times: dict[str, list[float]] = {b: [] for b in cmds}
    for _ in range(reps):
        for b, argv in cmds.items():
            times[b].append(wall_s(argv))
    out: dict[str, Any] = {"wall_s": {b: summary(v) for b, v in times.items()}}
    out["extra_s"] = out["wall_s"]["cgroup"]["median"] - out["wall_s"]["sampling"]["median"]
    out["pass"] = out["extra_s"] < CGROUP_CREATE_TARGET_S
    return out


# -- the table ------------------------------------------------------------------------


def table(res: dict[str, Any]) -> list[tuple[str, str, str, str, str, str]]:
    """Rows of (measure, value, baseline, ratio or delta, target, verdict)."""
    rows: list[tuple[str, str, str, str, str, str]] = []
    for key in (
        "importtime",
        "startup",
        "sampling",
        "growth",
        "overshoot",
        "cgroup_create",
        "parked",
    ):
        if "error" in res.get(key, {}):
            rows.append((f"{key}: failed", res[key]["error"][:60], "", "", "", "ERROR"))
            res = {k: v for k, v in res.items() if k != key}
    st = res.get("startup")
    if st:
        w = {k: v["median"] for k, v in st["wall_s"].items()}
        rows.append(("start-up: true", ms(w["true"]), "", "", "", ""))
        rows.append(("start-up: python -c pass", ms(w["python -c pass"]), "", "", "", ""))
        rows.append(
            (
                "start-up: python -c 'import launch path'",
                ms(w["python -c 'import <launch path>'"]),
                "python -c pass",
                f"+{ms(st['imports_s'])} imports",
                "",
                "",
            )
        )
        rows.append(
            (
                "start-up: same, ending in os._exit(0)",
                ms(w["python -c 'import <launch path>; os._exit(0)'"]),
                "with teardown",
                f"-{ms(st['teardown_s'])} interpreter teardown",
                "",
                "",
            )
        )
        rows.append(
            (
                f"start-up: pmrun --no-coordinator -- true (auto: {st['default_backend']})",
                ms(w["pmrun --no-coordinator -- true"]),
                f"true {ms(w['true'])}",
                f"+{ms(st['pmrun_overhead_s'])}"
                f" = {st['overhead_in_interpreter_starts']:.1f} x python start",
                f"<= {STARTUP_TARGET_INTERPRETERS:g} x ({ms(STARTUP_TARGET_INTERPRETERS * st['python_start_s'])})",
                verdict(st["pass"]),
            )
        )
        rows.append(
            (
                "start-up: pmrun --no-coordinator --backend sampling -- true",
                ms(w["pmrun --no-coordinator --backend sampling -- true"]),
                f"default ({st['default_backend']})",
                signed_ms(
                    w["pmrun --no-coordinator --backend sampling -- true"]
                    - w["pmrun --no-coordinator -- true"]
                ),
                "",
                "",
            )
        )
        rows.append(
            (
                "start-up: same, pmrun not byte-compiled (this dev env)",
                ms(w["pmrun --no-coordinator -- true (pmrun not byte-compiled)"]),
                "with .pyc",
                f"+{ms(st['no_pyc_extra_s'])} compiling pmrun",
                "",
                "",
            )
        )
        co = st.get("coordinator")
        if co is None:
            rows.append(("start-up: pmrun -- true (coordinator)", "-", "", "", "", "pending"))
        elif "error" in co:
            rows.append(
                ("start-up: pmrun -- true (coordinator)", "error", "", co["error"][:40], "", "MISS")
            )
        else:
            rows.append(
                (
                    "start-up: pmrun -- true (coordinator, warm)",
                    ms(co["wall_s"]["median"]),
                    f"--no-coordinator {ms(co['no_coordinator_wall_s']['median'])}",
                    f"+{ms(co['extra_s'])} (first run {ms(co['first_run_s'])})",
                    "",
                    "",
                )
            )
    it = res.get("importtime")
    if it:
        top = ", ".join(f"{m} {us / 1e3:.1f}" for m, us in it["top_level_cumulative_us"][:4])
        rows.append(
            (
                "imports on launch path (-X importtime, ms)",
                f"{it['total_cumulative_us'] / 1e3:.1f} ms",
                "",
                top,
                "",
                "",
            )
        )
        bad = it["forbidden_imported_cumulative_us"]
        rows.append(
            (
                "heavy modules on the fast path",
                ", ".join(f"{m} ({us / 1e3:.1f} ms)" for m, us in bad.items()) or "none",
                "",
                "",
                "none",
                verdict(not bad),
            )
        )
    sa = res.get("sampling")
    if sa:
        b = sa["idle parent"]
        for who in (f"pmrun {x}" for x in sa["backends"]):
            p = sa[who]
            rows.append(
                (
                    f"sampling: {who} CPU, {sa['sleep_s']:g} s, {sa['tree_processes']} processes",
                    f"{p['net_core_pct']:.2f}% core",
                    f"idle parent {b['net_core_pct']:.3f}%",
                    f"{p['samples_per_s']:.1f} samples/s, {p['cpu_us_per_sample'] or 0:.0f} us/sample;"
                    f" incl. start-up {p['total_core_pct']:.2f}%",
                    f"< {SAMPLING_TARGET_CORE_PCT}%",
                    verdict(p["pass"]),
                )
            )
    gr = res.get("growth")
    if gr:
        g = gr["bytes_per_s"]
        rows.append(
            (
                f"allocator growth rate ({gr['allocator'].split(' ')[0]})",
                gibps(g["median"]),
                f"ASSUMED_GROWTH_BPS {gibps(gr['assumed_bps'])}",
                f"max {gibps(g['max'])}, min {gibps(g['min'])}; assumed ="
                f" {gr['assumed_bps'] / g['max']:.1f} x the fastest run"
                + (
                    f", {gr['assumed_bps'] / gr['thp']['bytes_per_s']['max']:.1f} x the fastest THP run"
                    if "thp" in gr
                    else ""
                ),
                "",
                "",
            )
        )
        for key, label in (("thp", "C, MADV_HUGEPAGE"), ("python", "Python")):
            if key in gr:
                gp = gr[key]["bytes_per_s"]
                rows.append(
                    (
                        f"allocator growth rate ({label})",
                        gibps(gp["median"]),
                        "",
                        f"max {gibps(gp['max'])}",
                        "",
                        "",
                    )
                )
    ov = res.get("overshoot")
    if ov:
        for key, cell in ov["cells"].items():
            backend = key.split()[0]
            target = OVERSHOOT_TARGET["cgroup" if backend == "cgroup" else "sampling"]
            if cell.get("pending"):
                rows.append(
                    (f"overshoot: {key}", "-", "", cell["pending"][:50], f"<= {target}", "pending")
                )
                continue
            if "ratio" not in cell:
                rows.append((f"overshoot: {key}", "not stopped", "", "", f"<= {target}", "MISS"))
                continue
            parts = [f"sampled {cell['sampled_ratio']['median']:.3f}"]
            if "kernel_hiwater_ratio" in cell:
                parts.append(f"ru_maxrss {cell['kernel_hiwater_ratio']['median']:.3f}")
            if "kernel_peak_ratio" in cell:
                parts.append(f"cgroup peak {cell['kernel_peak_ratio']['median']:.3f}")
            extra = (
                ", ".join(parts)
                + f"; worst {cell['peak_at_kill_ratio']['max']:.3f}; {cell['samples']:.0f} samples"
            )
            if cell.get("reaction_ms_at_median_growth") is not None:
                extra += f", ~{cell['reaction_ms_at_median_growth']:.0f} ms late at median rate"
            if cell["stopped"] < cell["reps"]:
                extra += f"; only {cell['stopped']}/{cell['reps']} stopped"
            rows.append(
                (
                    f"overshoot: {key} (peak at kill / max, median)",
                    f"{cell['ratio']:.3f}",
                    "--max-rss",
                    extra,
                    f"<= {target}",
                    verdict(cell["pass"]),
                )
            )
    cg = res.get("cgroup_create")
    if cg is not None:
        if cg.get("pending"):
            rows.append(
                (
                    "cgroup creation: --backend cgroup - sampling",
                    "-",
                    "",
                    cg["pending"][:50],
                    "< 5 ms",
                    "pending",
                )
            )
        else:
            w = cg["wall_s"]
            rows.append(
                (
                    "cgroup creation: --backend cgroup - sampling",
                    f"+{ms(cg['extra_s'])}",
                    f"sampling {ms(w['sampling']['median'])}",
                    f"cgroup {ms(w['cgroup']['median'])}",
                    "< 5 ms",
                    verdict(cg["pass"]),
                )
            )
    pk = res.get("parked")
    if pk:
        for b in ("sampling", "cgroup"):
            if b not in pk:
                continue
            c = pk[b]
            rows.append(
                (
                    f"parked at {pk['fraction']:.0%} of {pk['limit']}: pmrun {b}",
                    f"{c['net_core_pct']:.2f}% core",
                    "same tree, 0 s",
                    f"{c['samples_per_s']:.0f} samples/s",
                    f"< {PARKED_TARGET_CORE_PCT[b]}%",
                    verdict(c["pass"]),
                )
            )
    return rows


def print_table(rows: Sequence[tuple[str, ...]]) -> None:
    head = ("measure", "value", "baseline (same run)", "ratio / detail", "target", "verdict")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    line = "  ".join("-" * w for w in widths)
    say(line)
    say("  ".join(h.ljust(w) for h, w in zip(head, widths, strict=True)))
    say(line)
    for r in rows:
        say("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)))
    say(line)


# -- main -----------------------------------------------------------------------------

SECTIONS = ("startup", "sampling", "overshoot", "cgroup", "parked")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (about a minute)")
    ap.add_argument(
        "--only", default=",".join(SECTIONS), help=f"comma-separated subset of {','.join(SECTIONS)}"
    )
    ap.add_argument("--out", default=str(RESULTS), help="where to write the JSON results")
    args = ap.parse_args(argv)
    only = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = set(only) - set(SECTIONS)
    if unknown:
        ap.error(
            f"unknown section(s) {', '.join(sorted(unknown))}; choose from {', '.join(SECTIONS)}"
        )

    cmd = " ".join(
        ["cd", str(REPO), "&&", ".venv/bin/python", "benchmarks/bench_launcher.py", *sys.argv[1:]]
    )
    say(f"reproduce: {cmd}")
    if not PMRUN.exists():
        say(f"no {PMRUN}: create the venv and `pip install -e .` first")
        return 2

    reps = {
        "startup": 15 if args.quick else 50,
        "importtime": 3 if args.quick else 7,
        "sampling_rounds": 1 if args.quick else 3,
        "overshoot": 3 if args.quick else 7,
        "growth": 3 if args.quick else 7,
        "cgroup": 15 if args.quick else 50,
    }
    subreaper = become_subreaper()
    # A SIGTERM/SIGHUP to the benchmark still runs the finally below.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, lambda s, f: sys.exit(128 + s))

    res: dict[str, Any] = {
        "command": cmd,
        "quick": args.quick,
        "reps": reps,
        "subreaper": subreaper,
    }
    res["machine"] = machine_info()
    m = res["machine"]
    say(
        f"machine: {m['nproc']} cores {m['cpu_model']}, {m['mem_total_bytes'] / (1 << 30):.1f} GiB,"
        f" kernel {m['kernel']}, python {m['python']}, cgroup {m['cgroup']}, THP {m['thp']}"
    )
    load_1m = float(m["loadavg_at_start"].split()[0] or 0)
    if load_1m > 0.5 * (m["nproc"] or 1):
        say(
            f"warning: the machine is busy (load {load_1m:.1f} on {m['nproc']} cores): absolute"
            " times are inflated; compare the ratios to this run's own baselines"
        )
    cgroup_ok, cgroup_why = cgroup_backend_status()
    has_coordinator = venv_has_module("pmrun.coordinator.link")
    res["available"] = {
        "cgroup_backend": cgroup_ok,
        "cgroup_detail": cgroup_why,
        "coordinator": has_coordinator,
    }
    say(
        f"cgroup backend: {'yes (' + cgroup_why + ')' if cgroup_ok else 'pending: ' + cgroup_why};"
        f" coordinator: {'yes' if has_coordinator else 'pending (no pmrun.coordinator.link)'}"
    )

    t_start = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench_launcher.") as tmp_s:
        tmp = Path(tmp_s)
        global PYCACHE_PREFIX
        PYCACHE_PREFIX = tmp / "pycache"
        try:
            warm = guarded("warm-up", warm_bytecode_cache)
            if "error" in warm:
                say("pmrun cannot run `true` in this checkout: nothing to measure")
                return 1
            if "startup" in only:
                say("1. start-up ...")
                res["importtime"] = guarded("importtime", bench_importtime, reps["importtime"])
                res["startup"] = guarded(
                    "start-up",
                    bench_startup,
                    reps["startup"],
                    res["importtime"].get("top_level_order", []),
                    has_coordinator,
                    tmp,
                )
            if "sampling" in only:
                say("2. sampling cost ...")
                res["sampling"] = guarded(
                    "sampling",
                    bench_sampling,
                    reps["sampling_rounds"],
                    10.0,
                    ["sampling", "cgroup"] if cgroup_ok else ["sampling"],
                    tmp,
                )
            if "overshoot" in only:
                say("3. overshoot ...")
                r = guarded("overshoot", run_overshoot, reps, cgroup_ok, cgroup_why, tmp)
                res.update(r if "error" not in r else {"overshoot": r})
            if "cgroup" in only:
                if cgroup_ok:
                    say("4. cgroup creation ...")
                    res["cgroup_create"] = guarded(
                        "cgroup creation", bench_cgroup_create, reps["cgroup"]
                    )
                else:
                    res["cgroup_create"] = {"pending": cgroup_why}
            if "parked" in only:
                say("5. parked at 97% of the limit ...")
                res["parked"] = guarded(
                    "parked",
                    bench_parked,
                    reps["sampling_rounds"],
                    10.0,
                    ["sampling", "cgroup"] if cgroup_ok else ["sampling"],
                    tmp,
                )
        finally:
            res["leftover_processes_killed"] = kill_descendants()
    res["duration_s"] = time.monotonic() - t_start
    res["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().strip()

    print_table(table(res))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".json.tmp")
    tmp_out.write_text(json.dumps(res, indent=2, default=str) + "\n")
    os.replace(tmp_out, out)
    say(f"wrote {out} ({res['duration_s']:.0f} s)")
    return 0


def run_overshoot(
    reps: dict[str, int], cgroup_ok: bool, cgroup_why: str, tmp: Path
) -> dict[str, Any]:
    """Growth rates, then the overshoot cells: {"growth": ..., "overshoot": ...}."""
    alloc, what = build_allocator(tmp)
    cap = 1 << 30
    g = growth_rate(alloc, cap, reps["growth"])
    g["allocator"] = what
    g["assumed_bps"] = _assumed_growth_bps()
    if alloc[0] != str(VENV_PYTHON):
        # Huge pages: 2 MiB per fault where THP allows it (may be slower in a VM).
        g["thp"] = growth_rate(alloc, cap, max(3, reps["growth"] // 2), ["--thp"])
        g["python"] = growth_rate(
            [str(VENV_PYTHON), str(AGENTS / "alloc.py")], cap, max(3, reps["growth"] // 2)
        )
    say(
        f"  growth rate: {gibps(g['bytes_per_s']['median'])} median,"
        f" {gibps(g['bytes_per_s']['max'])} max ({what})"
    )
    backends = ["sampling", "cgroup"] if cgroup_ok else ["sampling"]
    allocators: dict[str, tuple[list[str], list[str], float]] = {
        "": (alloc, [], g["bytes_per_s"]["median"])
    }
    if "thp" in g:
        allocators["THP allocator"] = (alloc, ["--thp"], g["thp"]["bytes_per_s"]["median"])
    limits = ["200M", "500M", "1G"]
    cells = bench_overshoot(allocators, backends, limits, reps["overshoot"], tmp)
    if not cgroup_ok:
        for label in allocators:
            for limit in limits:
                cells[f"cgroup {limit}" + (f" {label}" if label else "")] = {"pending": cgroup_why}
    return {"growth": g, "overshoot": {"allocator": what, "cells": cells}}


def guarded(name: str, fn: Any, *args: Any) -> dict[str, Any]:
    """Run one section; a failure (pmrun broken mid-edit, a timeout) is recorded, not fatal."""
    try:
        result: dict[str, Any] = fn(*args)
        return result
    except (RuntimeError, OSError, ValueError, KeyError, subprocess.SubprocessError) as e:
        say(f"  {name} failed: {type(e).__name__}: {str(e)[-300:]}")
        return {"error": f"{type(e).__name__}: {str(e)[-1000:]}"}


def warm_bytecode_cache() -> dict[str, Any]:
    """Compile once what every measured command imports, so no run pays for it."""
    for backend in ("sampling", "auto"):
        wall_s(
            [
                str(PMRUN),
                "--no-coordinator",
                "--backend",
                backend,
                "--report",
                os.devnull,
                "--",
                "true",
            ]
        )
    wall_s([str(VENV_PYTHON), "-c", IDLE_PARENT, "true"])
    return {}


def _assumed_growth_bps() -> int:
    """policy.ASSUMED_GROWTH_BPS as the venv's pmrun has it."""
    r = subprocess.run(
        [str(VENV_PYTHON), "-c", "from pmrun import policy; print(policy.ASSUMED_GROWTH_BPS)"],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    return int(r.stdout.strip() or 0)


if __name__ == "__main__":
    sys.exit(main())
