"""A scripted Python agent with a realistic memory shape; exits 0 once its work is done.

Shapes (sizes in MiB, times in seconds):

- ``steady``: holds ``--hold`` MiB for ``--work`` seconds, touching it once a second.
- ``cache``: builds ``--prompts`` prompts of ``--prompt-kib`` KiB (some requested again)
  and caches them: ``--cache dict`` is the framework's old cache, an unbounded dict with a
  900 s TTL checked on read; ``--cache shared`` is ``pmrun.cache.SharedPromptCache()`` with
  its defaults (50 MB cap), which attaches to the coordinator when run under pmrun.
- ``spiky``: holds ``--hold`` MiB and, every ``--period`` s, allocates ``--burst`` MiB for
  ``--burst-s`` s, for ``--work`` s.
- ``fork``: holds ``--hold`` MiB and starts ``--helpers`` helper processes that each hold
  ``--helper-mib`` MiB for ``--work`` s; exits 0 only if every helper did.
- ``helper``: what ``fork`` starts (a steady shape).
- ``runaway``: leaks ``--step`` MiB every ``--every-ms`` ms until something stops it.

Memory is written to as it is allocated (``b"\\x01" * n``, never calloc'd zero pages), so it
is resident and charged to the cgroup at once.
"""

from __future__ import annotations

import argparse
import random
import subprocess
import sys
import time

MIB = 1 << 20
PAGE = 4096


def touch(buf: bytearray) -> None:
    """Write one byte per page, as a program working on its data would."""
    n = len(range(0, len(buf), PAGE))
    buf[::PAGE] = b"\x02" * n


def hold(mib: float) -> bytearray:
    return bytearray(b"\x01") * int(mib * MIB)


def steady(a: argparse.Namespace) -> int:
    data = hold(a.hold)
    end = time.monotonic() + a.work
    while time.monotonic() < end:
        touch(data)
        time.sleep(min(1.0, max(0.0, end - time.monotonic())))
    return 0


def spiky(a: argparse.Namespace) -> int:
    data = hold(a.hold)
    end = time.monotonic() + a.work
    while time.monotonic() < end:
        burst = hold(a.burst)
        time.sleep(a.burst_s)
        del burst
        touch(data)
        time.sleep(max(0.0, min(a.period - a.burst_s, end - time.monotonic())))
    return 0


class TTLDict:
    """The framework's prompt cache before pmrun: a dict with a TTL checked on read, no cap."""

    def __init__(self, ttl_s: float = 900.0) -> None:
        self.ttl_s = ttl_s
        self.data: dict[str, tuple[float, str]] = {}

    def get(self, key: str) -> str | None:
        hit = self.data.get(key)
        if hit is None or hit[0] < time.monotonic():
            return None
        return hit[1]

    def set(self, key: str, value: str) -> None:
        self.data[key] = (time.monotonic() + self.ttl_s, value)


def cache(a: argparse.Namespace) -> int:
    rng = random.Random(a.seed)
    alphabet = "abcdefghijklmnopqrstuvwxyz      \n.,:()=_"
    # Prompts are assembled from 4 KiB pieces (system prompt, files, history) as
    # frameworks do; building each character in Python would make this CPU-bound.
    pieces = ["".join(rng.choices(alphabet, k=4096)) for _ in range(64)]
    per_prompt = max(1, int(a.prompt_kib // 4))
    if a.cache == "shared":
        from pmrun.cache import SharedPromptCache

        store: object = SharedPromptCache()
    else:
        store = TTLDict(900.0)
    recent: list[str] = []
    hits = 0
    checksum = 0
    for i in range(a.prompts):
        if recent and rng.random() < a.repeat:
            key = rng.choice(recent[-64:])
        else:
            key = f"prompt-{a.seed}-{i}"
            recent.append(key)
        prompt = store.get(key)  # type: ignore[attr-defined]
        if prompt is None:
            prompt = f"[{key}]\n" + "".join(rng.choices(pieces, k=per_prompt))
            store.set(key, prompt)  # type: ignore[attr-defined]
        else:
            hits += 1
        checksum ^= hash(prompt[-64:])
        time.sleep(a.pace_ms / 1000)
    print(f"cache agent done: {a.prompts} prompts, {hits} hits", file=sys.stderr)
    return 0


def fork(a: argparse.Namespace) -> int:
    data = hold(a.hold)
    helpers = [
        subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--shape",
                "helper",
                "--hold",
                str(a.helper_mib),
                "--work",
                str(a.work),
            ]
        )
        for _ in range(a.helpers)
    ]
    for h in helpers:
        print(f"helper pid {h.pid}", file=sys.stderr, flush=True)
    touch(data)
    codes = [h.wait() for h in helpers]
    if any(codes):
        print(f"helpers failed: {codes}", file=sys.stderr)
        return 70
    return 0


def runaway(a: argparse.Namespace) -> int:
    leak = []
    while True:
        leak.append(hold(a.step))
        time.sleep(a.every_ms / 1000)


SHAPES = {
    "steady": steady,
    "helper": steady,
    "spiky": spiky,
    "cache": cache,
    "fork": fork,
    "runaway": runaway,
}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), required=True)
    p.add_argument("--name", default="agent")
    p.add_argument("--hold", type=float, default=100.0)
    p.add_argument("--work", type=float, default=10.0)
    p.add_argument("--burst", type=float, default=200.0)
    p.add_argument("--burst-s", type=float, default=1.0)
    p.add_argument("--period", type=float, default=3.0)
    p.add_argument("--prompts", type=int, default=1000)
    p.add_argument("--prompt-kib", type=float, default=256.0)
    p.add_argument("--repeat", type=float, default=0.2)
    p.add_argument("--pace-ms", type=float, default=5.0)
    p.add_argument("--cache", choices=("dict", "shared"), default="dict")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--helpers", type=int, default=3)
    p.add_argument("--helper-mib", type=float, default=100.0)
    p.add_argument("--step", type=float, default=30.0)
    p.add_argument("--every-ms", type=float, default=100.0)
    a = p.parse_args()
    return SHAPES[a.shape](a)


if __name__ == "__main__":
    sys.exit(main())
