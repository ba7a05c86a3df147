"""A memory-capped, thread-safe prompt cache for the components of one process.

:class:`SharedPromptCache` keeps built prompts (or anything else) under a byte budget, an
entry cap and a time to live, and gives memory back when the coordinator asks.

How entries are sized (all numbers are bytes, measured once, when the entry is stored):

- ``str`` and ``bytes``: exactly what the process holds for the object, ``sys.getsizeof``,
  which includes the object header (49 bytes for an ASCII ``str``, 33 for ``bytes``).
- anything else: an estimate, ``sys.getsizeof`` of the object plus, recursively and at most
  8 levels deep, that of the items of lists, tuples, sets, deques and dicts and of an
  object's ``__dict__`` and ``__slots__``; an object reached twice is counted once. Memory
  held outside Python objects is seen only where the type reports it in ``__sizeof__``.
- the key is sized the same way and counts towards the entry.

A value is counted in full even if the caller keeps its own reference to it. The total of
the entries never exceeds ``max_bytes`` and their number never exceeds ``max_entries``: a new
entry first evicts the least recently used ones until it fits. A single entry larger than
``max_bytes`` is refused with :class:`CacheValueTooLarge` (and any older value under its key
is dropped); the :meth:`~SharedPromptCache.memoize` decorator then returns the value uncached.

Expired entries are never returned. There is no timer thread: every call sweeps what has
expired since the last one (a heap ordered by expiry time makes that a single comparison
when nothing has), so an idle cache keeps its expired entries until it is next used,
:meth:`~SharedPromptCache.expire` is called, or the coordinator asks for memory.

Limits come from the constructor, else from the ``[cache]`` table of the config file and
``PMRUN_CACHE_*`` variables (see :mod:`pmrun.config`).

The class also speaks the API of claude-multiagent-pm's own ``SharedPromptCache`` (1.4.7),
so the framework's code runs on it unchanged: ``get_instance(config)``/``reset_instance()``,
its config dict (``max_size``, ``max_memory_mb``, ``default_ttl``), ``set(key, value, ttl,
metadata) -> bool``, ``invalidate(pattern)`` with ``fnmatch`` wildcards, ``get_metrics()``,
``get_cache_info()``, ``async handle_memory_pressure(severity)``,
``register_invalidation_callback``, ``async start()/stop()/health_check()``, ``running``,
and the module functions :func:`get_shared_cache`, :func:`configure_shared_cache` and
:func:`cache_result`.
Where the two APIs disagree, a call made the framework's way gets the framework's answer.
"""

from __future__ import annotations

import fnmatch
import hashlib
import heapq
import itertools
import logging
import math
import os
import sys
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Mapping
from dataclasses import asdict, dataclass, field
from datetime import datetime
from functools import wraps
from typing import Any, ClassVar, ParamSpec, TypeVar, overload

from . import _malloc
from .errors import PmrunError, SizeError, UsageError
from .sizes import format_size, parse_fraction, parse_size

__all__ = [
    "SharedPromptCache",
    "CacheValueTooLarge",
    "Freed",
    "Health",
    "sizeof",
    "get_shared_cache",
    "configure_shared_cache",
    "cache_result",
]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

CAUSES = ("capacity", "ttl", "pressure", "manual")
"""Why entries leave the cache: budget or entry cap, expiry, a pressure eviction, a caller."""

_MAX_DEPTH = 8  # levels of containers :func:`sizeof` descends into
_BIGGEST = 5  # entries listed in stats()["biggest"]
_KEY_SHOWN = 80  # characters of a key shown in stats()
_MISSING: Any = object()
_MIB = 1024 * 1024
_WILDCARDS = frozenset("*?[")
# The framework's severities and the share of the cache each drops (its own 1.4.7 figures).
SEVERITY_FRACTION = {"warning": 0.5, "critical": 0.75}


class CacheValueTooLarge(PmrunError, ValueError):
    """One entry is larger than the cache's whole byte budget, so it cannot be stored."""

    def __init__(self, key: Hashable, size_bytes: int, max_bytes: int) -> None:
        super().__init__(
            f"cache entry {_show_key(key)} takes {format_size(size_bytes)} ({size_bytes} bytes), "
            f"more than the whole cache budget max_bytes={format_size(max_bytes)}: "
            "raise cache.max-bytes (PMRUN_CACHE_MAX_BYTES) or do not cache this value"
        )
        self.key = key
        self.size_bytes = size_bytes
        self.max_bytes = max_bytes


@dataclass(frozen=True)
class Freed:
    """What one :meth:`SharedPromptCache.evict_fraction` call removed and gave back."""

    entries: int  # entries removed, expired ones included
    bytes_accounted: int  # the sum of their sizes as the cache counts them
    rss_before: int | None  # process RSS before the eviction, bytes (None: /proc unreadable)
    rss_after: int | None  # process RSS after it (and after malloc_trim when that ran)
    trimmed: bool  # malloc_trim(0) ran
    evict_s: float  # seconds spent removing entries (under the cache's lock)
    trim_s: float  # seconds spent in malloc_trim

    @property
    def rss_drop(self) -> int:
        """How far the process's RSS fell, in bytes (0 if it did not, or is unknown).

        It is process-wide: other threads allocating meanwhile make it smaller.
        """
        if self.rss_before is None or self.rss_after is None:
            return 0
        return max(0, self.rss_before - self.rss_after)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready report; ``bytes`` and ``rss_drop`` are what the coordinator reads."""
        return {"bytes": self.bytes_accounted, "rss_drop": self.rss_drop, **asdict(self)}


@dataclass(frozen=True)
class Health:
    """What :meth:`SharedPromptCache.health_check` found: the framework's ``ServiceHealth``,
    field for field."""

    status: str  # "healthy", "degraded" or "unhealthy"
    message: str
    timestamp: str  # ISO 8601, local time, as the framework writes it
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: dict[str, bool] = field(default_factory=dict)


def sizeof(obj: object) -> int:
    """Bytes that ``obj`` counts for in the cache: exact for ``str``/``bytes``, else an estimate.

    See the module docstring for the rules.
    """
    cls = type(obj)
    if cls is str or cls is bytes:
        return sys.getsizeof(obj)
    return _estimate(obj, _MAX_DEPTH, set())


_ATOMS = (str, bytes, bytearray, memoryview, int, float, complex, bool, type(None), range)
_SEQUENCES = (list, tuple, set, frozenset, deque)


def _estimate(obj: object, depth: int, seen: set[int]) -> int:
    if id(obj) in seen:
        return 0
    seen.add(id(obj))  # the ids stay valid: every object visited is reachable from the root
    size = sys.getsizeof(obj, 64)  # 64: a guess for objects whose type has no __sizeof__
    if depth <= 0 or isinstance(obj, _ATOMS):
        return size
    depth -= 1
    if isinstance(obj, dict):
        for k, v in obj.items():
            size += _estimate(k, depth, seen) + _estimate(v, depth, seen)
    elif isinstance(obj, _SEQUENCES):
        for item in obj:
            size += _estimate(item, depth, seen)
    else:
        attrs = getattr(obj, "__dict__", None)
        if isinstance(attrs, dict):
            size += _estimate(attrs, depth, seen)
        for cls in type(obj).__mro__:
            slots = cls.__dict__.get("__slots__", ())
            for slot in (slots,) if isinstance(slots, str) else slots:
                if slot not in ("__dict__", "__weakref__") and hasattr(obj, slot):
                    size += _estimate(getattr(obj, slot), depth, seen)
    return size


def _show_key(key: Hashable) -> str:
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= _KEY_SHOWN else text[: _KEY_SHOWN - 3] + "..."


def _positive_seconds(value: float, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise UsageError(f"{what} must be a number of seconds above 0 (or inf), not {value!r}")
    return float(value)


def _key_name(key: Hashable) -> str | None:
    if isinstance(key, tuple) and key:
        key = key[0]  # memoized keys are (function name, arguments)
    return key if isinstance(key, str) else None


def _key_has_prefix(key: Hashable, prefix: str) -> bool:
    name = _key_name(key)
    return name is not None and name.startswith(prefix)


def _key_matches(key: Hashable, pattern: str) -> bool:
    """The framework's rule: the exact key, or an ``fnmatch`` match when ``pattern`` has
    wildcards (a key that itself contains ``[`` still matches itself exactly)."""
    name = _key_name(key)
    if name is None:
        return False
    return name == pattern or (
        not _WILDCARDS.isdisjoint(pattern) and fnmatch.fnmatchcase(name, pattern)
    )


def _framework_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """pmrun's constructor arguments from the framework's config dict (other keys ignored)."""
    out: dict[str, Any] = {}
    if config.get("max_size") is not None:
        out["max_entries"] = config["max_size"]
    if config.get("max_memory_mb") is not None:
        mb = config["max_memory_mb"]
        if isinstance(mb, bool) or not isinstance(mb, int | float) or not mb > 0:
            raise UsageError(f"max_memory_mb must be a number of MiB above 0, not {mb!r}")
        out["max_bytes"] = int(mb * _MIB)
    if "default_ttl" in config:
        ttl = config["default_ttl"]
        out["ttl"] = math.inf if ttl is None else ttl
    return out


class SharedPromptCache:
    """A thread-safe LRU cache bounded in bytes, in entries and in time.

    ``max_bytes`` (bytes, or a size such as ``"50MB"``), ``ttl`` (seconds; ``math.inf``
    for none), ``pressure_fraction`` (what a coordinator request that names no fraction
    drops) and ``max_entries`` default to the settings ``cache.max-bytes``, ``cache.ttl``,
    ``cache.pressure-fraction`` and ``cache.max-entries``. ``timer`` gives the time in
    seconds for TTLs (tests inject a fake one). With ``auto_attach`` and ``PMRUN_SOCKET`` set
    (as the launcher does), the cache registers with the coordinator when built; if that
    fails it stays a plain cache.

    Components share one cache through :meth:`shared`; each constructed cache has its own
    budget. A child made by ``fork`` gets a working, detached copy.
    """

    _instance: ClassVar[SharedPromptCache | None] = None
    _shared_lock: ClassVar[threading.Lock] = threading.Lock()

    def __init__(
        self,
        max_bytes: int | str | Mapping[str, Any] | None = None,
        ttl: float | None = None,
        pressure_fraction: float | str | None = None,
        *,
        max_entries: int | None = None,
        timer: Callable[[], float] = time.monotonic,
        name: str = "prompt-cache",
        auto_attach: bool = True,
        config: Mapping[str, Any] | None = None,
        refuse_too_large: bool | None = None,
    ) -> None:
        if isinstance(max_bytes, Mapping):  # SharedPromptCache(config), the framework's way
            config, max_bytes = max_bytes, None
        if config is not None:
            fw = _framework_settings(config)
            max_bytes = fw.get("max_bytes", max_bytes)
            max_entries = fw.get("max_entries", max_entries)
            ttl = fw.get("ttl", ttl)
        # The framework's set() answers False instead of raising; a cache built its way does.
        self._refuse_too_large = (
            config is not None if refuse_too_large is None else refuse_too_large
        )
        self._cleanup_interval = (config or {}).get("cleanup_interval", 60)
        self._enable_metrics = bool((config or {}).get("enable_metrics", True))
        cfg: Mapping[str, Any] = {}
        if None in (max_bytes, ttl, pressure_fraction, max_entries):
            from .config import load

            cfg = load()
        try:
            self._max_bytes = parse_size(cfg["cache.max-bytes"] if max_bytes is None else max_bytes)
            self._pressure_fraction = parse_fraction(
                cfg["cache.pressure-fraction"] if pressure_fraction is None else pressure_fraction
            )
        except SizeError as e:
            raise SizeError(f"SharedPromptCache: {e}") from None
        if self._max_bytes < 1:
            raise UsageError("max_bytes (cache.max-bytes) must be at least 1 byte")
        entries = cfg["cache.max-entries"] if max_entries is None else max_entries
        if isinstance(entries, bool) or not isinstance(entries, int) or entries < 1:
            raise UsageError(
                f"max_entries (cache.max-entries) must be a whole number, at least 1, not {entries!r}"
            )
        self._max_entries = entries
        self._ttl = _positive_seconds(cfg["cache.ttl"] if ttl is None else ttl, "ttl (cache.ttl)")
        self._timer = timer
        self.name = name

        # key -> (value, size in bytes, expiry time, sequence number, time stored, metadata),
        # least recently used first.
        self._data: OrderedDict[Hashable, tuple[Any, int, float, int, float, Any]] = OrderedDict()
        # A min-heap of (expiry time, sequence number, key). An item whose entry was replaced
        # or removed stays until it surfaces or the heap is rebuilt; it holds only the key, so
        # a removed value's memory is freed at once.
        self._expiry: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()
        self._bytes = 0
        self._hits = 0
        self._misses = 0
        self._evictions = dict.fromkeys(CAUSES, 0)
        self._evicted_bytes = dict.fromkeys(CAUSES, 0)
        self._last_pressure: Freed | None = None
        # The framework's counters (get_metrics); pmrun's own are the evictions by cause.
        self._sets = 0
        self._deletes = 0
        self._invalidations = 0
        self._callbacks: list[tuple[str, Callable[[str], Any]]] = []
        self._running = False
        # Re-entrant: a value freed under the lock may run a __del__ that uses the cache.
        self._lock = threading.RLock()
        self._attach_lock = threading.Lock()
        self._registration: weakref.finalize[Any, Any] | None = None
        _instances.add(self)

        if auto_attach and os.environ.get("PMRUN_SOCKET"):
            try:
                self.attach()
            except Exception as e:  # never let a missing coordinator break the agent
                log.debug("%s: not attached to the coordinator: %s", name, e)

    @classmethod
    def shared(cls) -> SharedPromptCache:
        """The process's common cache, built from the settings on first use."""
        return cls.get_instance()

    @classmethod
    def get_instance(cls, config: Mapping[str, Any] | None = None) -> SharedPromptCache:
        """The process's common cache (the same as :meth:`shared`); ``config``, the
        framework's dict, is used only by the call that builds it, as in the framework.

        It is built the framework's way: its ``set`` answers False for an entry too large
        for it rather than raising, since the framework's code does not expect an error.
        """
        with SharedPromptCache._shared_lock:
            if SharedPromptCache._instance is None:
                SharedPromptCache._instance = SharedPromptCache(config=config or {})
            return SharedPromptCache._instance

    @classmethod
    def reset_instance(cls) -> None:
        """Forget the common cache (detached from the coordinator); the next
        :meth:`get_instance` builds a new one."""
        with SharedPromptCache._shared_lock:
            old, SharedPromptCache._instance = SharedPromptCache._instance, None
        if old is not None:
            old._running = False
            old.detach()

    # Limits, read-only: a cache is rebuilt, not resized.
    @property
    def max_bytes(self) -> int:
        return self._max_bytes

    @property
    def max_entries(self) -> int:
        return self._max_entries

    @property
    def ttl(self) -> float:
        return self._ttl

    @property
    def pressure_fraction(self) -> float:
        return self._pressure_fraction

    @property
    def cached_bytes(self) -> int:
        """Bytes held by the entries, as counted when they were stored."""
        return self._bytes

    @property
    def attached(self) -> bool:
        """Whether the cache is registered with the coordinator."""
        return self._registration is not None

    # The framework's names for the limits.
    @property
    def max_size(self) -> int:
        return self._max_entries

    @property
    def max_memory_mb(self) -> float:
        return self._max_bytes / _MIB

    @property
    def default_ttl(self) -> float | None:
        return self._ttl if math.isfinite(self._ttl) else None

    @property
    def cleanup_interval(self) -> Any:
        """Reported only: expired entries are swept by every call, not by a timer."""
        return self._cleanup_interval

    @property
    def enable_metrics(self) -> bool:
        return self._enable_metrics

    @property
    def running(self) -> bool:
        """Between :meth:`start` and :meth:`stop`, as the framework's services are."""
        return self._running

    # The hot path: one lock, one timer call, C-level dict and heap operations.
    def get(self, key: Hashable, default: Any = None) -> Any:
        """The live value stored under ``key`` (now the most recently used), else ``default``."""
        with self._lock:
            entry = self._data.get(key)
            if entry is not None:
                now = self._timer()
                if now < entry[2]:
                    self._data.move_to_end(key)
                    self._hits += 1
                    if self._expiry[0][0] <= now:
                        self._expire(now)
                    return entry[0]
                self._expire(now)
            self._misses += 1
            return default

    def set(
        self,
        key: Hashable,
        value: Any,
        ttl: float | None = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> bool:
        """Store ``value`` under ``key`` for ``ttl`` seconds (default: the cache's ``ttl``),
        with optional ``metadata`` (shown by :meth:`get_cache_info`); True once stored.

        Evicts least recently used entries until it fits. An entry larger than ``max_bytes``
        alone raises :class:`CacheValueTooLarge`, or returns False on a cache built the
        framework's way (its ``set`` never raises); either way it is not stored.
        """
        size = sizeof(key) + sizeof(value)
        ttl = self._ttl if ttl is None else _positive_seconds(ttl, "ttl")
        with self._lock:
            data = self._data
            old = data.pop(key, None)
            if size > self._max_bytes:
                if old is not None:  # gone rather than silently stale; its heap item goes stale
                    self._removed("capacity", 1, old[1])
                error = CacheValueTooLarge(key, size, self._max_bytes)
                if self._refuse_too_large:
                    log.warning("%s", error)
                    return False
                raise error
            if old is not None:
                self._bytes -= old[1]  # replaced, not evicted; its heap item goes stale
            now = self._timer()
            heap = self._expiry
            if heap and heap[0][0] <= now:
                self._expire(now)
            if self._bytes + size > self._max_bytes or len(data) >= self._max_entries:
                self._make_room(size)
            seq = next(self._seq)
            expires = now + ttl
            data[key] = (value, size, expires, seq, now, dict(metadata) if metadata else None)
            self._bytes += size
            self._sets += 1
            heapq.heappush(heap, (expires, seq, key))
            if len(heap) > 2 * len(data) + 64:
                self._rebuild_expiry()
            return True

    def delete(self, key: Hashable) -> bool:
        """Remove ``key``; True if it held a live value."""
        with self._lock:
            entry = self._data.pop(key, None)
            if entry is None:
                return False
            live = self._timer() < entry[2]
            self._removed("manual" if live else "ttl", 1, entry[1])
            self._deletes += live
            return live

    def clear(self) -> None:
        """Remove every entry (counted as manual evictions). Use ``evict_fraction(1)`` to also
        give the memory back to the OS."""
        with self._lock:
            self._invalidations += len(self._data)
            self._removed("manual", len(self._data), self._bytes)
            self._data.clear()
            self._expiry = []

    def invalidate(self, pattern: str | None = None, *, prefix: str | None = None) -> int:
        """Remove the entries named by ``pattern`` (the framework's rule) or ``prefix``;
        returns how many.

        ``pattern``: the exact key, or with ``*``, ``?`` or ``[...]`` an :mod:`fnmatch`
        pattern (``"agent_profile:*"``). ``prefix=``: every key starting with it. Either
        applies to a ``str`` key, or to the first item of a tuple key (the function name
        in the keys :meth:`memoize` builds). Callbacks registered with
        :meth:`register_invalidation_callback` for a matching pattern are then called.
        """
        if (pattern is None) == (prefix is None):
            raise UsageError("invalidate() takes a pattern or prefix=, exactly one of them")
        if pattern is not None:
            text: str = pattern

            def doomed_key(k: Hashable) -> bool:
                return _key_matches(k, text)
        else:
            assert prefix is not None
            start: str = prefix

            def doomed_key(k: Hashable) -> bool:
                return _key_has_prefix(k, start)

        with self._lock:
            self._expire(self._timer())
            doomed = [k for k in self._data if doomed_key(k)]
            freed = 0
            for k in doomed:
                freed += self._data.pop(k)[1]
            self._removed("manual", len(doomed), freed)
            self._invalidations += len(doomed)
            self._maybe_rebuild_expiry()
            callbacks = list(self._callbacks)
        for callback_pattern, callback in callbacks:
            named = pattern if pattern is not None else f"{prefix}*"
            if fnmatch.fnmatchcase(named, callback_pattern):
                try:
                    callback(named)
                except Exception as e:  # one failing listener never stops the others
                    log.error("%s: invalidation callback %r failed: %s", self.name, callback, e)
        return len(doomed)

    def register_invalidation_callback(self, pattern: str, callback: Callable[[str], Any]) -> None:
        """Call ``callback(invalidated_pattern)`` after each :meth:`invalidate` whose
        pattern matches ``pattern`` (fnmatch), as the framework does."""
        with self._lock:
            self._callbacks.append((pattern, callback))

    def expire(self) -> int:
        """Remove the entries that have expired; returns how many. Every other call does this
        too: call it only to reclaim memory from a cache that is otherwise idle."""
        with self._lock:
            removed, _ = self._expire(self._timer())
            self._maybe_rebuild_expiry()
            return removed

    def __contains__(self, key: Hashable) -> bool:
        """Whether ``key`` holds a live value; counts neither a hit nor a use."""
        with self._lock:
            entry = self._data.get(key)
            return entry is not None and self._timer() < entry[2]

    def __bool__(self) -> bool:
        """Always true, empty or not, as the framework's cache object is: its code tests
        ``if self._cache_instance:`` for "there is a cache". Use ``len()`` for emptiness."""
        return True

    def __len__(self) -> int:
        """The number of live entries."""
        with self._lock:
            self._expire(self._timer())
            return len(self._data)

    def evict_fraction(
        self, fraction: float | str, *, cause: str = "pressure", trim: bool = True
    ) -> Freed:
        """Drop ``fraction`` (0 to 1, or ``"75%"``) of the cached bytes, least valuable first:
        expired entries, then the least recently used. With ``trim`` (the default), then ask
        the C library to return free memory to the OS and report the RSS it measured before
        and after. ``cause`` is ``"pressure"`` or ``"manual"``, as counted in :meth:`stats`.
        """
        f = parse_fraction(fraction)
        if cause not in ("pressure", "manual"):
            raise UsageError(f"cause must be 'pressure' or 'manual', not {cause!r}")
        rss_before = _malloc.rss_bytes()
        started = time.perf_counter()
        with self._lock:
            target = f * self._bytes
            entries, freed = self._expire(self._timer())
            data = self._data
            n = 0
            dropped = 0
            while freed + dropped < target and data:
                # No name keeps the popped entry: its value is freed here, under the lock.
                dropped += data.popitem(last=False)[1][1]
                n += 1
            self._removed(cause, n, dropped)
            self._maybe_rebuild_expiry()
        evicted = time.perf_counter()
        trimmed = trim and (entries + n) > 0 and _malloc.trim()
        trimmed_at = time.perf_counter()
        report = Freed(
            entries=entries + n,
            bytes_accounted=freed + dropped,
            rss_before=rss_before,
            rss_after=_malloc.rss_bytes(),
            trimmed=trimmed,
            evict_s=evicted - started,
            trim_s=trimmed_at - evicted if trimmed else 0.0,
        )
        if cause == "pressure":
            self._last_pressure = report
        return report

    def stats(self) -> dict[str, Any]:
        """Counters and the biggest entries as a JSON-ready dict, for diagnostics and the
        coordinator. ``hit_ratio`` is hits / (hits + misses), 0.0 before any lookup."""
        with self._lock:
            now = self._timer()
            self._expire(now)
            lookups = self._hits + self._misses
            biggest = heapq.nlargest(_BIGGEST, self._data.items(), key=lambda kv: kv[1][1])
            last = self._last_pressure
            return {
                "name": self.name,
                "entries": len(self._data),
                "bytes": self._bytes,
                "max_bytes": self._max_bytes,
                "max_entries": self._max_entries,
                "ttl_s": self._ttl if math.isfinite(self._ttl) else None,
                "hits": self._hits,
                "misses": self._misses,
                "hit_ratio": self._hits / lookups if lookups else 0.0,
                "evictions": dict(self._evictions),
                "evicted_bytes": dict(self._evicted_bytes),
                "biggest": [
                    {
                        "key": _show_key(k),
                        "bytes": e[1],
                        "expires_in_s": round(e[2] - now, 3) if math.isfinite(e[2]) else None,
                    }
                    for k, e in biggest
                ],
                "attached": self.attached,
                "last_pressure_eviction": None if last is None else last.as_dict(),
            }

    # The framework's reporting and life cycle.
    def get_metrics(self) -> dict[str, Any]:
        """The framework's metrics dict, same keys and units (``size_mb`` is MiB).

        ``evictions`` counts entries dropped for room or on pressure, ``expired_removals``
        those whose time ran out, ``invalidations`` those removed by :meth:`invalidate`
        and :meth:`clear`.
        """
        with self._lock:
            self._expire(self._timer())
            lookups = self._hits + self._misses
            hit_rate = self._hits / lookups if lookups else 0.0
            size_mb = self._bytes / _MIB
            usage = size_mb / self.max_memory_mb * 100
            return {
                "hits": self._hits,
                "misses": self._misses,
                "hit_rate": hit_rate,
                "miss_rate": 1.0 - hit_rate,
                "sets": self._sets,
                "deletes": self._deletes,
                "invalidations": self._invalidations,
                "size_bytes": self._bytes,
                "size_mb": size_mb,
                "entry_count": len(self._data),
                "max_size": self._max_entries,
                "max_memory_mb": self.max_memory_mb,
                "evictions": self._evictions["capacity"] + self._evictions["pressure"],
                "expired_removals": self._evictions["ttl"],
                "memory_usage_percent": usage,
                "memory_pressure": usage > 80,
                "ttl_default": self.default_ttl,
                "cleanup_interval": self._cleanup_interval,
            }

    def get_cache_info(self) -> dict[str, Any]:
        """The framework's per-entry listing. ``access_count`` is None: pmrun does not count
        uses per entry (it would cost every lookup a write), only hits in total."""
        with self._lock:
            now = self._timer()
            self._expire(now)
            entries = [
                {
                    "key": k,
                    "age_seconds": now - e[4],
                    "access_count": None,
                    "size_bytes": e[1],
                    "is_expired": False,  # expired entries were just swept
                    "ttl": round(e[2] - e[4], 6) if math.isfinite(e[2]) else None,
                    "metadata": dict(e[5]) if e[5] else {},
                }
                for k, e in self._data.items()
            ]
            return {
                "total_entries": len(entries),
                "total_size_bytes": self._bytes,
                "total_size_mb": self._bytes / _MIB,
                "entries": entries,
                "metrics": self.get_metrics(),
            }

    async def handle_memory_pressure(self, severity: str = "warning") -> dict[str, Any]:
        """The framework's pressure handler: drop half the cache at ``"warning"``, three
        quarters at ``"critical"`` (by bytes, least valuable first, then ``malloc_trim``).

        Returns the framework's statistics and pmrun's ``bytes`` and ``rss_drop``.
        """
        fraction = SEVERITY_FRACTION.get(severity, SEVERITY_FRACTION["warning"])
        entries_before, mb_before = len(self._data), self._bytes / _MIB
        freed = self.evict_fraction(fraction, cause="pressure")
        mb_after = self._bytes / _MIB
        return {
            "entries_before": entries_before,
            "memory_before_mb": mb_before,
            "entries_removed": freed.entries,
            "entries_after": len(self._data),
            "memory_after_mb": mb_after,
            "memory_freed_mb": mb_before - mb_after,
            **freed.as_dict(),
        }

    async def health_check(self) -> Health:
        """The framework's service health check, without touching the entries (its own
        stores, reads and deletes a test entry, which could evict a real one)."""
        checks = {"running": self._running}
        locked = self._lock.acquire(timeout=1.0)
        checks["cache_operations"] = locked
        if locked:
            try:
                checks["memory_usage_ok"] = self._bytes < self._max_bytes
                checks["cache_size_ok"] = len(self._data) <= self._max_entries
            finally:
                self._lock.release()
        if not self._running:
            status, message = "unhealthy", "Service is not running"
        elif all(checks.values()):
            status, message = "healthy", "All health checks passed"
        else:
            status, message = "degraded", "Some health checks failed"
        return Health(status, message, datetime.now().isoformat(), {}, checks)

    async def start(self) -> None:
        """Mark the cache running and attach it to the coordinator under pmrun
        (``PMRUN_SOCKET`` set); the framework starts its services this way."""
        self._running = True
        if os.environ.get("PMRUN_SOCKET") and not self.attached:
            try:
                self.attach()
            except Exception as e:
                log.debug("%s: not attached to the coordinator: %s", self.name, e)

    async def stop(self) -> None:
        """As the framework's stop: detach and drop every entry."""
        self._running = False
        self.detach()
        self.clear()

    @overload
    def memoize(self, func: Callable[P, R], /) -> Callable[P, R]: ...

    @overload
    def memoize(
        self,
        func: None = None,
        /,
        *,
        key: Callable[..., Hashable] | None = None,
        prefix: str | None = None,
        ttl: float | None = None,
    ) -> Callable[[Callable[P, R]], Callable[P, R]]: ...

    def memoize(
        self,
        func: Callable[P, R] | None = None,
        /,
        *,
        key: Callable[..., Hashable] | None = None,
        prefix: str | None = None,
        ttl: float | None = None,
    ) -> Callable[P, R] | Callable[[Callable[P, R]], Callable[P, R]]:
        """Cache a function's results: ``@cache.memoize`` or ``@cache.memoize(ttl=60)``.

        Results are stored under ``(prefix, args, sorted kwargs)``, or ``(prefix, key(*args,
        **kwargs))`` when ``key`` is given; ``prefix`` defaults to the function's
        ``module.qualname``, so ``cache.invalidate(prefix)`` (that exact name) drops its results. Arguments must
        be hashable (or reduced to a hashable by ``key``). A result larger than the budget is
        returned without being cached. Two threads missing at once both call the function.
        """
        if ttl is not None:
            _positive_seconds(ttl, "ttl")

        def decorate(fn: Callable[P, R]) -> Callable[P, R]:
            name = prefix if prefix is not None else f"{fn.__module__}.{fn.__qualname__}"

            @wraps(fn)
            def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
                if key is not None:
                    k: Hashable = (name, key(*args, **kwargs))
                else:
                    k = (name, args, tuple(sorted(kwargs.items())) if kwargs else ())
                try:
                    value = self.get(k, _MISSING)
                except TypeError as e:
                    raise TypeError(
                        f"{name}: cannot memoize a call with unhashable arguments ({e}); "
                        "pass key= to build a hashable key from them"
                    ) from None
                if value is _MISSING:
                    value = fn(*args, **kwargs)
                    try:
                        self.set(k, value, ttl=ttl)
                    except CacheValueTooLarge as e:
                        log.debug("%s", e)
                return value

            return wrapper

        return decorate if func is None else decorate(func)

    def attach(self, socket: str | None = None) -> None:
        """Register with the coordinator (at ``socket``, default the configured one) so that an
        eviction request calls :meth:`evict_fraction` with its fraction (else
        ``pressure_fraction``) from the client's thread. Calling it again does nothing.

        Registration does not wait for a coordinator: the client connects (and
        reconnects) in the background, so ``attached`` means registered with the client,
        not yet answered by a coordinator.
        """
        with self._attach_lock:
            if self._registration is not None:
                return
            from .client import register_cleanup

            # The registration holds the cache weakly: a dropped cache is detached, not kept.
            ref = weakref.ref(self)

            def evict(fraction: float | None) -> object:
                cache = ref()
                return {"bytes": 0, "rss_drop": 0} if cache is None else cache._on_request(fraction)

            def stats() -> dict[str, Any]:
                cache = ref()
                return {} if cache is None else cache.stats()

            handle = register_cleanup(self.name, evict, stats=stats, socket=socket)
            self._registration = weakref.finalize(self, _close_quietly, handle)

    def detach(self) -> None:
        """Unregister from the coordinator; does nothing if not attached."""
        with self._attach_lock:
            registration, self._registration = self._registration, None
        if registration is not None:
            registration()

    def _on_request(self, fraction: float | None) -> dict[str, Any]:
        try:
            f = self._pressure_fraction if fraction is None else parse_fraction(fraction)
        except SizeError:
            f = self._pressure_fraction
        report = self.evict_fraction(f, cause="pressure")
        log.info(
            "%s: dropped %d entries (%s) on the coordinator's request, RSS fell by %s",
            self.name,
            report.entries,
            format_size(report.bytes_accounted),
            format_size(report.rss_drop),
        )
        return report.as_dict()

    # Helpers; the caller holds the lock.
    def _expire(self, now: float) -> tuple[int, int]:
        """Remove entries expired at ``now``: (how many, their bytes)."""
        heap, data = self._expiry, self._data
        n = freed = 0
        while heap and heap[0][0] <= now:
            _, seq, key = heapq.heappop(heap)
            entry = data.get(key)
            if entry is not None and entry[3] == seq:
                del data[key]
                freed += entry[1]
                n += 1
        if n:
            self._removed("ttl", n, freed)
        return n, freed

    def _make_room(self, size: int) -> None:
        data = self._data
        n = freed = 0
        while data and (
            self._bytes - freed + size > self._max_bytes or len(data) >= self._max_entries
        ):
            freed += data.popitem(last=False)[1][1]
            n += 1
        self._removed("capacity", n, freed)

    def _rebuild_expiry(self) -> None:
        self._expiry = [(e[2], e[3], k) for k, e in self._data.items()]
        heapq.heapify(self._expiry)

    def _maybe_rebuild_expiry(self) -> None:
        if len(self._expiry) > 2 * len(self._data) + 64:
            self._rebuild_expiry()

    def _removed(self, cause: str, n: int, size: int) -> None:
        """``n`` entries of ``size`` bytes in all left the cache, for ``cause``: the one place
        that takes them off the byte count and counts them in the stats."""
        self._bytes -= size
        self._evictions[cause] += n
        self._evicted_bytes[cause] += size

    def __repr__(self) -> str:
        state = "attached" if self.attached else "detached"
        return (
            f"<SharedPromptCache {self.name!r}: {len(self._data)} entries, "
            f"{format_size(self._bytes)} of {format_size(self._max_bytes)}, {state}>"
        )


def get_shared_cache() -> SharedPromptCache:
    """The process's common cache (the framework's helper)."""
    return SharedPromptCache.get_instance()


def configure_shared_cache(config: Mapping[str, Any]) -> SharedPromptCache:
    """The common cache, built from the framework's config dict if it does not exist yet."""
    return SharedPromptCache.get_instance(config)


def cache_result(
    key_pattern: str, ttl: float | None = None, namespace: str | None = None
) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """The framework's decorator: cache a function's result in the common cache under
    ``key_pattern.format(**kwargs, args_hash=...)`` (``namespace:`` in front if given).

    As in the framework, a ``None`` result is never served from the cache; a result too
    large for the cache is returned uncached.
    """

    def decorate(fn: Callable[P, R]) -> Callable[P, R]:
        @wraps(fn)
        def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
            digest = hashlib.md5(str(args).encode(), usedforsecurity=False).hexdigest()[:8]
            key = key_pattern.format(**kwargs, args_hash=digest)
            if namespace:
                key = f"{namespace}:{key}"
            cache = SharedPromptCache.get_instance()
            result = cache.get(key)
            if result is not None:
                return result
            result = fn(*args, **kwargs)
            try:
                cache.set(key, result, ttl=ttl)
            except CacheValueTooLarge as e:
                log.debug("%s", e)
            return result

        return wrapper

    return decorate


def _close_quietly(handle: Any) -> None:
    try:
        handle.close()
    except Exception as e:  # at exit or in a finalizer: nothing useful to raise to
        log.debug("closing the coordinator registration failed: %s", e)


_instances: weakref.WeakSet[SharedPromptCache] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # A lock held by another thread at fork time would stay held forever in the child, and
    # the coordinator knows the parent, not the child: start over with fresh locks, detached.
    SharedPromptCache._shared_lock = threading.Lock()
    for cache in list(_instances):
        cache._lock = threading.RLock()
        cache._attach_lock = threading.Lock()
        if cache._registration is not None:
            cache._registration.detach()
            cache._registration = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
