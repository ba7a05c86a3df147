"""A randomized process tree for the no-escape tests.

``tree.py SEED PIDDIR [ALLOC_MB]``: builds a tree from SEED (double forks, setsid,
processes that ignore SIGTERM, processes that fork when SIGTERM arrives, a bounded
fork storm). Every process writes "pid starttime" to PIDDIR/<pid> as soon as it
runs, so the test knows every process that ever existed. The root prints "ready"
once the whole planned tree has started. If ALLOC_MB > 0, one process then
allocates that much (to cross a limit).
"""

from __future__ import annotations

import os
import random
import signal
import sys
import time

SEED, PIDDIR = int(sys.argv[1]), sys.argv[2]
ALLOC_MB = int(sys.argv[3]) if len(sys.argv) > 3 else 0
rng = random.Random(SEED)
MAX_PROCS = 40


def record() -> None:
    pid = os.getpid()
    with open(f"/proc/{pid}/stat") as f:
        start = f.read().rsplit(")", 1)[1].split()[19]
    with open(os.path.join(PIDDIR, f".{pid}"), "w") as f:
        f.write(f"{pid} {start}")
    os.rename(os.path.join(PIDDIR, f".{pid}"), os.path.join(PIDDIR, str(pid)))


def fork_on_term(signum: int, frame: object) -> None:
    # Fork while being killed: the child must be caught too.
    if os.fork() == 0:
        record()
        time.sleep(60)
        os._exit(0)


def behave(kind: str) -> None:
    if kind == "ignore":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    elif kind == "fork-on-term":
        signal.signal(signal.SIGTERM, fork_on_term)
    else:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


def plan(depth: int, budget: list[int]) -> list[tuple[str, str, list]]:
    """[(how, kind, children)]: how = plain | setsid | double-fork."""
    out = []
    for _ in range(rng.randint(0, 3) if depth > 0 else 0):
        if budget[0] <= 0:
            break
        budget[0] -= 1
        how = rng.choice(["plain", "setsid", "double-fork"])
        kind = rng.choice(["default", "ignore", "fork-on-term"])
        out.append((how, kind, plan(depth - 1, budget)))
    return out


def spawn(nodes: list, ready_w: int) -> None:
    for how, kind, kids in nodes:
        pid = os.fork()
        if pid == 0:
            if how == "setsid":
                os.setsid()
            if how == "double-fork":
                os.setsid()
                if os.fork() != 0:
                    os._exit(0)
            record()
            behave(kind)
            spawn(kids, ready_w)
            os.write(ready_w, b".")
            while True:
                time.sleep(60)
        elif how == "double-fork":
            os.waitpid(pid, 0)


def count(nodes: list) -> int:
    return sum(1 + count(k) for _, _, k in nodes)


def main() -> None:
    record()
    budget = [MAX_PROCS]
    nodes = plan(3, budget)
    storm = rng.random() < 0.3
    r, w = os.pipe()
    spawn(nodes, w)
    got = 0
    while got < count(nodes):
        got += len(os.read(r, 64))
    if storm:
        # A fork storm bounded in size: processes keep forking until MAX_PROCS more exist.
        if os.fork() == 0:
            record()
            for _ in range(MAX_PROCS // 2):
                if os.fork() == 0:
                    record()
                    time.sleep(60)
                    os._exit(0)
            time.sleep(60)
            os._exit(0)
    print("ready", flush=True)
    if ALLOC_MB:
        blob = b"m" * (ALLOC_MB << 20)  # noqa: F841 - held until killed
    time.sleep(60)


main()
