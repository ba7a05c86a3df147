"""What cgroup v2 gives pmrun, measured on a real v2 kernel (run it in the v2 guest).

    scripts/test-v2 --bench            # boots the guest, runs this, copies the JSON back

Measurements, each against a baseline in the same run:

1. Overshoot: the kernel's peak of the agent's group (``memory.peak``, page cache and
   kernel memory included) and pmrun's sampled peak, over ``--max-rss``, for the C
   allocator (benchmarks/agents/alloc.c, 16 MiB mmap chunks, one write per page) at
   200M, 500M and 1G. Target: kernel peak / --max-rss <= 1.01. The baseline is the
   hard limit pmrun sets (kernel limit / --max-rss): the kernel alone would stop there.
2. Start-up: ``pmrun --no-coordinator -- true`` with ``--backend cgroup`` (a group per
   agent) against ``--backend sampling``, alternated. Target: ratio <= 1.2. Beside it
   the two ways a child can enter a group, from Python: fork + write ``cgroup.procs``
   (a migration) against clone3(CLONE_INTO_CGROUP), spaced 0.3 s apart as agents start.
3. Eviction latency: a coordinator with a system threshold a hog outside pmrun crosses
   (~200 MiB/s); the time from the hog's crossing (it reads MemAvailable after each
   chunk) to the coordinator's first eviction request (``evict.request`` in its event
   log). Target: median <= 50 ms. Baseline: the coordinator's own shortest tick.

Results are printed and written to benchmarks/results/v2.json (or --out).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from pmrun import cgroups
from pmrun.backends.cgroup import create_cgroup_backend, kernel_limit_bytes
from pmrun.coordinator import policy
from pmrun.errors import CgroupError
from pmrun.events import read_new

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "v2.json"
PY = sys.executable
PMRUN = str(Path(PY).parent / "pmrun")
MIB = 1 << 20
TARGETS = {"overshoot": 1.01, "startup_ratio": 1.2, "eviction_ms": 50.0}


def say(text: str) -> None:
    print(text, flush=True)


def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- 1. overshoot ----------------------------------------------------------------------


def build_allocator(tmp: Path) -> list[str]:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        raise RuntimeError("no C compiler for benchmarks/agents/alloc.c")
    exe = tmp / "alloc"
    subprocess.run([cc, "-O2", "-o", str(exe), str(HERE / "agents" / "alloc.c")], check=True)
    return [str(exe)]


def overshoot(alloc: list[str], tmp: Path, limits: list[str], reps: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for limit in limits:
        max_rss = int(limit[:-1]) * (1 << 30 if limit.endswith("G") else MIB)
        rows = []
        for i in range(reps):
            rep = tmp / f"over-{limit}-{i}.json"
            argv = [PMRUN, "--no-coordinator", "--backend", "cgroup", "--max-rss", limit]
            argv += ["--warn-rss", str(max_rss // 2), "--report", str(rep), "--"]
            argv += [*alloc, str(2 * max_rss)]  # the cap: never more than twice the limit
            subprocess.run(argv, capture_output=True, timeout=600)
            r = json.loads(rep.read_text())
            rows.append(
                {
                    "reason": r["reason"],
                    "exit_status": r["exit_status"],
                    "kernel_peak": r.get("kernel_peak_bytes"),
                    "sampled_peak": r["peak_rss_bytes"],
                    "memory_events": (r.get("backend") or {}).get("memory_events"),
                }
            )
        kernel = [x["kernel_peak"] / max_rss for x in rows if x["kernel_peak"]]
        sampled = [x["sampled_peak"] / max_rss for x in rows]
        cell = {
            "max_rss_bytes": max_rss,
            "kernel_peak_ratio": round(med(kernel), 4),
            "kernel_peak_ratio_max": round(max(kernel), 4) if kernel else None,
            "sampled_peak_ratio": round(med(sampled), 4),
            "baseline_kernel_limit_ratio": round(kernel_limit_bytes(max_rss) / max_rss, 4),
            "stopped_by_pmrun": sum(x["reason"] == "max-rss" for x in rows),
            "runs": rows,
        }
        cell["pass"] = cell["kernel_peak_ratio"] <= TARGETS["overshoot"]
        say(
            f"  overshoot {limit}: kernel peak {cell['kernel_peak_ratio']:.3f}"
            f" (max {cell['kernel_peak_ratio_max']}), sampled {cell['sampled_peak_ratio']:.3f},"
            f" kernel limit {cell['baseline_kernel_limit_ratio']:.3f};"
            f" {cell['stopped_by_pmrun']}/{reps} stopped by pmrun"
        )
        out[limit] = cell
    return out


# -- 2. start-up -----------------------------------------------------------------------


def startup(reps: int) -> dict[str, Any]:
    times: dict[str, list[float]] = {"cgroup": [], "sampling": []}
    for _ in range(reps):
        for backend in ("sampling", "cgroup"):
            t0 = time.perf_counter()
            subprocess.run(
                [PMRUN, "--no-coordinator", "--backend", backend, "--", "true"], check=True
            )
            times[backend].append(time.perf_counter() - t0)
    ratio = med(times["cgroup"]) / med(times["sampling"])
    res = {
        "cgroup_ms": round(med(times["cgroup"]) * 1000, 1),
        "sampling_ms": round(med(times["sampling"]) * 1000, 1),
        "ratio": round(ratio, 3),
        "pass": ratio <= TARGETS["startup_ratio"],
    }
    say(
        f"  start-up: cgroup {res['cgroup_ms']} ms, sampling {res['sampling_ms']} ms, ratio {res['ratio']}"
    )
    return res


def join_ways(reps: int, spacing_s: float = 0.3) -> dict[str, Any]:
    """fork + cgroup.procs against clone3(CLONE_INTO_CGROUP): parent's time to a child in
    the group that has exited and been reaped."""
    b = create_cgroup_backend(agent_id=f"bench.{os.getpid()}", max_rss=64 * MIB, warn_rss=0)
    fd = cgroups.open_for_clone(b.group.memory_dir)
    assert fd is not None
    times: dict[str, list[float]] = {"fork+write": [], "clone3": []}
    try:
        for _ in range(reps):
            for way in times:
                time.sleep(spacing_s)
                t0 = time.perf_counter()
                pid = os.fork() if way == "fork+write" else cgroups.fork_into(fd)
                if pid == 0:
                    if way == "fork+write":
                        b.group.join_self()
                    os._exit(0)
                if pid is None:
                    raise RuntimeError("clone3(CLONE_INTO_CGROUP) refused here")
                os.waitpid(pid, 0)
                times[way].append(time.perf_counter() - t0)
    finally:
        os.close(fd)
        b.close()
    res = {k: round(med(v) * 1000, 2) for k, v in times.items()}
    say(f"  join: fork+write {res['fork+write']} ms, clone3 {res['clone3']} ms (median)")
    return {"median_ms": res, "spacing_s": spacing_s, "reps": reps}


# -- 3. eviction latency ---------------------------------------------------------------

HOG = r"""
import mmap, sys, time
cross = int(sys.argv[1]); out = sys.argv[2]; step = 8 << 20
def used():
    kv = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":"); kv[k] = int(v.split()[0]) * 1024
    return kv["MemTotal"] - kv["MemAvailable"]
blocks = []; crossed = None
while crossed is None or time.time() - crossed < 1.0:
    if crossed is None:
        m = mmap.mmap(-1, step); m.write(b"\1" * step); blocks.append(m)
        if used() >= cross:
            crossed = time.time()
            open(out, "w").write(repr(crossed))
        time.sleep(0.04)  # ~200 MiB/s
    else:
        time.sleep(0.01)
"""


def meminfo() -> tuple[int, int]:
    kv = {}
    for line in open("/proc/meminfo"):
        k, v = line.split(":")
        kv[k] = int(v.split()[0]) * 1024
    return kv["MemTotal"], kv["MemTotal"] - kv["MemAvailable"]


def eviction(tmp: Path, reps: int) -> dict[str, Any]:
    total, used0 = meminfo()
    threshold = min(0.95, (used0 + 300 * MIB) / total / policy.DEFAULT_HYSTERESIS.warn_at)
    cross = int(threshold * total * policy.DEFAULT_HYSTERESIS.warn_at)
    sock, events = tmp / "c.sock", tmp / "events.jsonl"
    coord = subprocess.Popen(
        [PMRUN, "coordinator", "--socket", str(sock), "--events", str(events), "--pool", "100G",
         "--system-threshold", f"{threshold * 100:.2f}%", "--psi-threshold", "off",
         "--cooldown", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    lat_ms: list[float] = []
    try:
        deadline = time.monotonic() + 120
        while not sock.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        offset = 0
        for i in range(reps):
            mark = tmp / f"crossed-{i}"
            hog = subprocess.run([PY, "-c", HOG, str(cross), str(mark)], timeout=300)
            del hog
            time.sleep(1.0)  # the coordinator's last step reads its outcome
            new, offset = read_new(str(events), offset)
            requests = [e for e in new if e.get("kind") == "evict.request"]
            if mark.exists() and requests:
                lat_ms.append((float(requests[0]["ts"]) - float(mark.read_text())) * 1000)
            time.sleep(2.0)  # back under the threshold, past the hysteresis
    finally:
        coord.terminate()
        coord.wait(30)
    res = {
        "median_ms": round(med(lat_ms), 1),
        "runs_ms": [round(x, 1) for x in lat_ms],
        "reps": reps,
        "threshold": round(threshold, 4),
        "baseline_tick_min_ms": 100.0,
        "pass": bool(lat_ms) and med(lat_ms) <= TARGETS["eviction_ms"],
    }
    say(f"  eviction: median {res['median_ms']} ms over {len(lat_ms)}/{reps} ({res['runs_ms']})")
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="200M only, fewer runs")
    a = ap.parse_args()
    try:
        layout = cgroups.detect()
    except CgroupError as e:
        print(f"bench_v2: no cgroup here: {e}", file=sys.stderr)
        return 125
    if layout.version != 2:
        print(
            "bench_v2: the memory controller is on cgroup v1 here: run scripts/test-v2 --bench",
            file=sys.stderr,
        )
        return 125
    say("bench_v2: " + " ".join([PY, *sys.argv]))
    res: dict[str, Any] = {
        "command": "scripts/test-v2 --bench",
        "machine": {
            "kernel": os.uname().release,
            "nproc": os.cpu_count(),
            "mem_total_bytes": meminfo()[0],
        },
        "targets": TARGETS,
    }
    with tempfile.TemporaryDirectory(prefix="bv2", dir=os.environ.get("TMPDIR")) as d:
        tmp = Path(d)
        limits = ["200M"] if a.quick else ["200M", "500M", "1G"]
        for name, fn in (
            ("overshoot", lambda: overshoot(build_allocator(tmp), tmp, limits, a.reps)),
            ("startup", lambda: startup(5 if a.quick else 15)),
            ("join", lambda: join_ways(5 if a.quick else 15)),
            ("eviction", lambda: eviction(tmp, 3 if a.quick else 7)),
        ):
            try:
                res[name] = fn()
            except Exception as e:  # one failed measurement must not lose the others
                res[name] = {"error": f"{type(e).__name__}: {e}"}
                say(f"  {name}: failed: {res[name]['error']}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    say(f"bench_v2: results in {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
