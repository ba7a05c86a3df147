"""Benchmark SharedPromptCache against cachetools.TTLCache on a prompt-cache workload.

Three measurements, each the median of several repetitions:

1. Throughput: lookups per second on the same seeded workload for both caches: keys are
   SHA-256 hex digests, values 1-50 KB strings, popularity Zipf-distributed; each lookup is
   a ``get``, then a ``set`` on a miss. The baseline is
   ``cachetools.TTLCache(maxsize=50MB, ttl=300, getsizeof=len)``.
2. Eviction: time to evict 75% of a full 50 MB cache, with and without ``malloc_trim``,
   and the RSS the process got back (in a fresh child process).
3. Memory overhead: RSS growth per byte of cached payload, in fresh child processes.

Results are printed and written to benchmarks/results/cache.json.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from cachetools import TTLCache

from pmrun import _malloc
from pmrun.cache import SharedPromptCache

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "cache.json"
MB = 1 << 20

MAX_BYTES = 50 * MB
TTL_S = 300.0
SEED = 20240611
DISTINCT_KEYS = 5_000
VALUE_BYTES = (1024, 50 * 1024)
ZIPF_S = 1.0  # popularity of the k-th most used prompt ~ 1 / k**s
# cachetools' TTLCache has no entry cap; pmrun's (500 by default) is lifted to do the same
# work, and shown apart with its default.
NO_ENTRY_CAP = 1_000_000


def _key(i: int) -> str:
    return hashlib.sha256(f"prompt-{i}".encode()).hexdigest()


def _workload(lookups: int) -> tuple[list[str], dict[str, str]]:
    """A seeded trace of keys, and the value each key's prompt builder would return."""
    rng = random.Random(SEED)
    keys = [_key(i) for i in range(DISTINCT_KEYS)]
    values = {k: "p" * rng.randint(*VALUE_BYTES) for k in keys}
    by_rank = keys[:]
    rng.shuffle(by_rank)  # popularity independent of size
    weights = [1 / (rank + 1) ** ZIPF_S for rank in range(DISTINCT_KEYS)]
    trace = rng.choices(by_rank, weights=weights, k=lookups)
    return trace, values


def _replay(
    get: Callable[[str], Any], put: Callable[[str, str], None], trace: list[str], values: dict
) -> tuple[float, int]:
    hits = 0
    gc.collect()
    started = time.perf_counter()
    for key in trace:
        if get(key) is None:
            put(key, values[key])
        else:
            hits += 1
    return time.perf_counter() - started, hits


class _LockedTTLCache:
    """cachetools' TTLCache behind a lock, as threaded code must use it."""

    def __init__(self, cache: TTLCache) -> None:
        self._cache = cache
        self._lock = threading.Lock()

    def get(self, key: str) -> Any:
        with self._lock:
            return self._cache.get(key)

    def set(self, key: str, value: str) -> None:
        with self._lock:
            self._cache[key] = value


def _contenders() -> dict[str, Callable[[], tuple[Callable, Callable]]]:
    def pmrun() -> tuple[Callable, Callable]:
        c = SharedPromptCache(MAX_BYTES, TTL_S, max_entries=NO_ENTRY_CAP, auto_attach=False)
        return c.get, c.set

    def pmrun_default_cap() -> tuple[Callable, Callable]:
        c = SharedPromptCache(MAX_BYTES, TTL_S, max_entries=500, auto_attach=False)
        return c.get, c.set

    def cachetools_len() -> tuple[Callable, Callable]:
        c = TTLCache(maxsize=MAX_BYTES, ttl=TTL_S, getsizeof=len)
        return c.get, c.__setitem__

    def cachetools_locked() -> tuple[Callable, Callable]:
        c = _LockedTTLCache(TTLCache(maxsize=MAX_BYTES, ttl=TTL_S, getsizeof=len))
        return c.get, c.set

    key_bytes = sys.getsizeof(_key(0))  # every key has the same size

    def cachetools_same_accounting() -> tuple[Callable, Callable]:
        # What pmrun counts: the whole str object, and the key.
        c = TTLCache(maxsize=MAX_BYTES, ttl=TTL_S, getsizeof=lambda v: sys.getsizeof(v) + key_bytes)
        return c.get, c.__setitem__

    return {
        "pmrun SharedPromptCache": pmrun,
        "cachetools TTLCache (getsizeof=len)": cachetools_len,
        "cachetools TTLCache + Lock": cachetools_locked,
        "cachetools TTLCache, pmrun's accounting": cachetools_same_accounting,
        "pmrun, default max_entries=500": pmrun_default_cap,
    }


BASELINE = "cachetools TTLCache (getsizeof=len)"


def bench_throughput(lookups: int, repeat: int) -> dict[str, Any]:
    trace, values = _workload(lookups)
    contenders = _contenders()
    runs: dict[str, list[float]] = {name: [] for name in contenders}
    hit_ratio: dict[str, float] = {}
    for _ in range(repeat):
        for name, make in contenders.items():  # interleaved, so drift hits all alike
            get, put = make()
            seconds, hits = _replay(get, put, trace, values)
            runs[name].append(lookups / seconds)
            hit_ratio[name] = hits / lookups  # the same every repetition: seeded
            del get, put
    base = statistics.median(runs[BASELINE])
    return {
        "lookups": lookups,
        "distinct_keys": DISTINCT_KEYS,
        "value_bytes": list(VALUE_BYTES),
        "zipf_s": ZIPF_S,
        "repeat": repeat,
        "contenders": {
            name: {
                "lookups_per_s": statistics.median(ops),
                "runs": ops,
                "ratio_to_baseline": statistics.median(ops) / base,
                "hit_ratio": hit_ratio[name],
            }
            for name, ops in runs.items()
        },
    }


def _fresh_values(total_bytes: int, rng: random.Random) -> list[tuple[str, str]]:
    out, n, i = [], 0, 0
    while n < total_bytes:
        size = rng.randint(*VALUE_BYTES)
        out.append((_key(i), "q" * size))  # a new object each time, as built prompts are
        n += size
        i += 1
    return out


def child_evict(repeat: int) -> dict[str, Any]:
    """In a fresh process: fill 50 MB, evict 75%, with and without malloc_trim."""
    rng = random.Random(SEED)
    results: dict[str, list[dict[str, Any]]] = {"no_trim": [], "trim": []}
    for _ in range(repeat):
        for mode in ("no_trim", "trim"):
            cache = SharedPromptCache(MAX_BYTES, TTL_S, max_entries=NO_ENTRY_CAP, auto_attach=False)
            i = 0
            while cache.cached_bytes < MAX_BYTES - VALUE_BYTES[1] - 200:
                size = rng.randint(*VALUE_BYTES)
                cache.set(_key(i), "e" * size)
                i += 1
            full = cache.cached_bytes
            gc.collect()
            started = time.perf_counter()
            freed = cache.evict_fraction(0.75, trim=(mode == "trim"))
            elapsed = time.perf_counter() - started
            results[mode].append(
                {
                    "total_s": elapsed,
                    "evict_s": freed.evict_s,
                    "trim_s": freed.trim_s,
                    "cached_bytes": full,
                    "bytes_accounted": freed.bytes_accounted,
                    "rss_before": freed.rss_before,
                    "rss_after": freed.rss_after,
                    "rss_drop": freed.rss_drop,
                    "trimmed": freed.trimmed,
                }
            )
            cache.evict_fraction(1.0)  # and trim, so the next round starts alike
            del cache
    return results


def child_rss(kind: str) -> dict[str, Any]:
    """In a fresh process: RSS growth while caching ~45 MB of prompts, per payload byte."""
    rng = random.Random(SEED)
    sizes = []
    total = 0
    while total < 45 * MB:
        sizes.append(rng.randint(*VALUE_BYTES))
        total += sizes[-1]
    keys = [_key(i) for i in range(len(sizes))]
    cache: Any
    if kind == "pmrun":
        cache = SharedPromptCache(MAX_BYTES, TTL_S, max_entries=NO_ENTRY_CAP, auto_attach=False)
        put = cache.set
    elif kind == "cachetools":
        cache = TTLCache(maxsize=MAX_BYTES, ttl=TTL_S, getsizeof=len)
        put = cache.__setitem__
    else:  # the floor: the same values in a list, with no cache at all
        cache = []
        put = lambda _key, value: cache.append(value)  # noqa: E731
    gc.collect()
    before = _malloc.rss_bytes() or 0
    for key, size in zip(keys, sizes, strict=True):
        put(key, "r" * size)
    after = _malloc.rss_bytes() or 0
    assert len(cache) == len(sizes), "nothing may be evicted while measuring"
    growth = after - before
    return {
        "entries": len(sizes),
        "payload_bytes": total,
        "rss_growth": growth,
        "rss_per_payload_byte": growth / total,
        "overhead": growth / total - 1,
    }


def _in_child(mode: str, *args: str) -> Any:
    out = subprocess.run(
        [sys.executable, __file__, "--child", mode, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return json.loads(out.stdout)


def bench_eviction(repeat: int) -> dict[str, Any]:
    runs = _in_child("evict", str(repeat))

    def med(mode: str, field: str) -> float:
        return statistics.median(r[field] for r in runs[mode])

    return {
        "repeat": repeat,
        "malloc_trim": _malloc.trim_available(),
        "evict_ms": med("no_trim", "total_s") * 1000,
        "evict_then_trim_ms": med("trim", "total_s") * 1000,
        "trim_ms": med("trim", "trim_s") * 1000,
        "cached_mb": med("trim", "cached_bytes") / MB,
        "freed_accounted_mb": med("trim", "bytes_accounted") / MB,
        "rss_drop_no_trim_mb": med("no_trim", "rss_drop") / MB,
        "rss_drop_trim_mb": med("trim", "rss_drop") / MB,
        "runs": runs,
    }


RSS_KINDS = ("list", "pmrun", "cachetools")


def bench_rss(repeat: int) -> dict[str, Any]:
    """RSS growth per payload byte; bookkeeping is what a cache adds over a plain list."""
    out: dict[str, Any] = {"repeat": repeat}
    for kind in RSS_KINDS:
        runs = [_in_child("rss", kind) for _ in range(repeat)]
        out[kind] = {
            "overhead": statistics.median(r["overhead"] for r in runs),
            "rss_per_payload_byte": statistics.median(r["rss_per_payload_byte"] for r in runs),
            "payload_mb": runs[0]["payload_bytes"] / MB,
            "entries": runs[0]["entries"],
            "runs": runs,
        }
    for kind in RSS_KINDS[1:]:
        out[kind]["bookkeeping"] = out[kind]["overhead"] - out["list"]["overhead"]
    return out


def _print_report(result: dict[str, Any]) -> None:
    tp = result["throughput"]
    print(
        f"\nThroughput: {tp['lookups']:,} lookups (get, then set on a miss), "
        f"{tp['distinct_keys']:,} keys, values 1-50 KB, Zipf s={tp['zipf_s']}, "
        f"median of {tp['repeat']}"
    )
    print(f"  {'cache':42} {'lookups/s':>12} {'vs baseline':>12} {'hit ratio':>10}")
    for name, r in tp["contenders"].items():
        print(
            f"  {name:42} {r['lookups_per_s']:>12,.0f} {r['ratio_to_baseline']:>11.2f}x "
            f"{r['hit_ratio']:>10.4f}"
        )
    ev = result["eviction"]
    print(
        f"\nEvict 75% of a full {ev['cached_mb']:.1f} MB cache (median of {ev['repeat']}; "
        f"malloc_trim available: {ev['malloc_trim']})"
    )
    print(
        f"  evict only:             {ev['evict_ms']:7.2f} ms   RSS drop {ev['rss_drop_no_trim_mb']:6.1f} MB"
    )
    print(
        f"  evict + malloc_trim(0): {ev['evict_then_trim_ms']:7.2f} ms   RSS drop {ev['rss_drop_trim_mb']:6.1f} MB"
    )
    print(
        f"  of which malloc_trim:   {ev['trim_ms']:7.2f} ms   ({ev['freed_accounted_mb']:.1f} MB accounted as freed)"
    )
    rss = result["rss"]
    print(
        f"\nMemory: RSS growth while holding {rss['list']['payload_mb']:.1f} MB of prompts "
        f"({rss['list']['entries']} values), fresh process each, median of {rss['repeat']}"
    )
    labels = {"list": "values in a list (floor)", "pmrun": "pmrun", "cachetools": "cachetools"}
    for kind in RSS_KINDS:
        r = rss[kind]
        extra = f", bookkeeping {r['bookkeeping'] * 100:+.2f}%" if "bookkeeping" in r else ""
        print(
            f"  {labels[kind]:25} {r['rss_per_payload_byte']:.4f} bytes of RSS per payload byte "
            f"(overhead {r['overhead'] * 100:+.2f}%{extra})"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer lookups and repetitions")
    parser.add_argument(
        "--json",
        type=Path,
        help=f"where to write the results (default: {RESULTS.name}, not with --quick)",
    )
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        mode, *rest = args.child
        out = child_evict(int(rest[0])) if mode == "evict" else child_rss(rest[0])
        print(json.dumps(out))
        return

    command = ".venv/bin/python benchmarks/bench_cache.py" + (" --quick" if args.quick else "")
    print(f"$ {command}")
    lookups, repeat = (50_000, 3) if args.quick else (200_000, 7)
    result = {
        "command": command,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, {platform.platform()}",
        "throughput": bench_throughput(lookups, repeat),
        "eviction": bench_eviction(repeat),
        "rss": bench_rss(3 if not args.quick else 1),
    }
    _print_report(result)
    path = args.json or (None if args.quick else RESULTS)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(result, indent=2) + "\n")
        print(f"\nwritten to {path}")


if __name__ == "__main__":
    main()
