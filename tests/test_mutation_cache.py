"""The cache's edges the broader tests leave free: what a refused entry says, how the
coordinator's request is carried out and logged, its repr, and the fork hook.

Pure and in-process: these run once per mutant of ``pmrun.cache``.
"""

from __future__ import annotations

import logging
import weakref

import pytest

from pmrun import cache as pmcache
from pmrun.cache import CacheValueTooLarge, SharedPromptCache
from pmrun.errors import UsageError
from test_cache import FakeClient, fake_client  # noqa: F401 - the fixture


def small(**kw: object) -> SharedPromptCache:
    args: dict = {"max_bytes": 1000, "ttl": 60, "pressure_fraction": 0.5, "max_entries": 5,
                  "auto_attach": False, "name": "n", **kw}  # fmt: skip
    return SharedPromptCache(**args)


def test_a_refused_entry_says_what_it_is_and_what_to_do() -> None:
    with pytest.raises(CacheValueTooLarge) as e:
        small().set("big", "x" * 2000)
    assert str(e.value) == (
        "cache entry big takes 2.1K (2101 bytes), more than the whole cache budget "
        "max_bytes=1000B: raise cache.max-bytes (PMRUN_CACHE_MAX_BYTES) or do not cache "
        "this value"
    )
    assert (e.value.key, e.value.size_bytes, e.value.max_bytes) == ("big", 2101, 1000)


def test_a_bad_memoize_ttl_is_named() -> None:
    with pytest.raises(UsageError) as e:
        small().memoize(ttl=0)
    assert str(e.value) == "ttl must be a number of seconds above 0 (or inf), not 0"


def test_repr_shows_the_entries_the_budget_and_the_link() -> None:
    cache = small()
    cache.set("k", "v" * 100)
    assert repr(cache) == "<SharedPromptCache 'n': 1 entries, 199B of 1000B, detached>"


def test_repr_of_an_attached_cache(fake_client: FakeClient) -> None:  # noqa: F811
    cache = small()
    cache.attach()
    assert repr(cache) == "<SharedPromptCache 'n': 0 entries, 0B of 1000B, attached>"


@pytest.mark.parametrize(("fraction", "left"), [(None, 2), (1.0, 0), ("50%", 2), ("bogus", 2)])
def test_a_request_without_a_usable_fraction_drops_the_pressure_fraction(
    fraction: object, left: int, caplog: pytest.LogCaptureFixture
) -> None:
    cache = small()
    for k in "abcd":
        cache.set(k, "v" * 100)  # 199 bytes each
    with caplog.at_level(logging.INFO, logger="pmrun.cache"):
        report = cache._on_request(fraction)  # type: ignore[arg-type]
    assert len(cache) == left
    assert report["entries"] == 4 - left and report["bytes"] == (4 - left) * 199
    assert cache.stats()["evictions"]["pressure"] == 4 - left
    (record,) = [r for r in caplog.records if r.name == "pmrun.cache"]
    assert record.levelno == logging.INFO
    said = record.getMessage()
    assert said.startswith("n: ") and f" {4 - left} entries " in said
    assert f"({pmcache.format_size((4 - left) * 199)})" in said
    assert said.endswith(f"RSS fell by {pmcache.format_size(report['rss_drop'])}")


def test_the_fork_hook_gives_each_cache_fresh_locks_and_no_registration(
    fake_client: FakeClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What a child made by fork runs first: called here directly, on one cache of our own.
    cache = small()
    cache.attach()
    monkeypatch.setattr(pmcache, "_instances", weakref.WeakSet([cache]))
    monkeypatch.setattr(SharedPromptCache, "_shared_lock", SharedPromptCache._shared_lock)
    old = (cache._lock, cache._attach_lock, SharedPromptCache._shared_lock)
    for lock in old:
        lock.acquire()  # as another thread of the parent may hold them at fork
    pmcache._after_fork_in_child()
    new = (cache._lock, cache._attach_lock, SharedPromptCache._shared_lock)
    for was, now in zip(old, new, strict=True):
        assert now is not was and type(now) is type(was)
        assert now.acquire(blocking=False)
        now.release()
    assert cache._lock.acquire(blocking=False) and cache._lock.acquire(blocking=False)  # RLock
    cache._lock.release()
    cache._lock.release()
    assert not cache.attached
    cache.detach()  # nothing to undo: the parent's registration is the parent's
    assert fake_client.closed == 0
    cache.attach()
    assert cache.attached and len(fake_client.registered) == 2
    for lock in old:
        lock.release()


# -- the framework's reporting and life cycle (claude-multiagent-pm 1.4.7, field for field) ----

MIB = 1 << 20


def filled(*sizes: int, **kw: object) -> SharedPromptCache:
    """A cache of 1000 bytes holding one entry of each size (99 bytes is an empty value)."""
    cache = small(**kw)
    for i, size in enumerate(sizes):
        cache.set(chr(ord("a") + i), "v" * (size - 99))
    assert cache.cached_bytes == sum(sizes)
    return cache


def test_metrics_before_any_lookup() -> None:
    m = small().get_metrics()
    assert (m["hit_rate"], m["miss_rate"], m["size_bytes"], m["size_mb"]) == (0.0, 1.0, 0, 0.0)


@pytest.mark.parametrize(("sizes", "pressure"), [((400, 400), False), ((400, 401), True)])
def test_memory_pressure_is_strictly_over_80_percent(
    sizes: tuple[int, ...], pressure: bool
) -> None:
    m = filled(*sizes).get_metrics()
    assert m["size_mb"] == sum(sizes) / MIB
    assert m["memory_usage_percent"] == pytest.approx(sum(sizes) / 10)
    assert m["memory_pressure"] is pressure


def test_cache_info_ttls_and_sizes() -> None:
    cache = small()
    cache.set("a", "v", ttl=1.23456789)
    cache.set("b", "v", ttl=float("inf"))
    info = cache.get_cache_info()
    assert [e["ttl"] for e in info["entries"]] == [1.234568, None]
    assert info["total_size_mb"] == cache.cached_bytes / MIB


def test_memory_pressure_reports_what_it_freed() -> None:
    import asyncio

    cache = filled(400, 400, 200)
    out = asyncio.run(cache.handle_memory_pressure("critical"))  # three quarters by bytes
    assert (out["entries_before"], out["entries_removed"], out["entries_after"]) == (3, 2, 1)
    assert out["memory_before_mb"] == 1000 / MIB
    assert out["memory_after_mb"] == 200 / MIB
    assert out["memory_freed_mb"] == 800 / MIB
    assert cache.stats()["evictions"]["pressure"] == 2


@pytest.mark.parametrize(
    ("sizes", "running", "status", "message", "failed"),
    [
        ((), False, "unhealthy", "Service is not running", []),
        ((400, 400), True, "healthy", "All health checks passed", []),
        ((500, 500), True, "degraded", "Some health checks failed", ["memory_usage_ok"]),
    ],
)
def test_health(sizes: tuple[int, ...], running: bool, status: str, message: str,
                failed: list[str]) -> None:  # fmt: skip
    import asyncio

    cache = filled(*sizes)
    cache._running = running
    h = asyncio.run(cache.health_check())
    assert (h.status, h.message) == (status, message)
    assert [k for k, ok in h.checks.items() if not ok] == failed + ([] if running else ["running"])


def test_a_cache_of_exactly_max_entries_is_healthy() -> None:
    import asyncio

    cache = filled(100, 100, 100, 100, 100)
    cache._running = True
    assert asyncio.run(cache.health_check()).checks["cache_size_ok"] is True


def test_reset_instance_stops_the_old_one(monkeypatch: pytest.MonkeyPatch) -> None:
    import asyncio

    monkeypatch.delenv("PMRUN_SOCKET", raising=False)
    monkeypatch.setattr(SharedPromptCache, "_instance", None)
    old = SharedPromptCache.get_instance({"max_size": 5})
    asyncio.run(old.start())
    assert old.running
    SharedPromptCache.reset_instance()
    assert old.running is False and SharedPromptCache._instance is None


def test_start_attaches_under_pmrun_once(
    fake_client: FakeClient,  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import asyncio

    cache = small()
    asyncio.run(cache.start())
    assert not cache.attached  # not under pmrun
    monkeypatch.setenv("PMRUN_SOCKET", "/tmp/c.sock")
    asyncio.run(cache.start())
    asyncio.run(cache.start())
    assert cache.attached and len(fake_client.registered) == 1


def test_a_failing_start_or_close_is_logged_and_never_raised(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import asyncio
    import sys
    import types

    class Handle:
        def close(self) -> None:
            raise OSError("socket gone")

    calls: list[str] = []

    def register_cleanup(name: str, *_: object, **__: object) -> Handle:
        calls.append(name)
        if len(calls) == 1:
            raise ConnectionError("no coordinator here")
        return Handle()

    module = types.ModuleType("pmrun.client")
    module.register_cleanup = register_cleanup  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pmrun.client", module)
    monkeypatch.setenv("PMRUN_SOCKET", "/tmp/c.sock")
    cache = small(auto_attach=False)
    with caplog.at_level(logging.DEBUG, logger="pmrun.cache"):
        asyncio.run(cache.start())
        assert cache.running and not cache.attached
        asyncio.run(cache.start())
        assert cache.attached
        cache.detach()
    said = [r.getMessage() for r in caplog.records if r.name == "pmrun.cache"]
    assert len(said) == 2
    assert said[0].startswith("n: ") and said[0].endswith("no coordinator here")
    assert said[1].endswith("socket gone")


def test_a_dropped_cache_answers_the_coordinator_with_nothing(
    fake_client: FakeClient,  # noqa: F811
) -> None:
    import gc

    cache = small()
    cache.attach()
    registration = fake_client.registered[0]
    del cache
    gc.collect()
    assert registration["stats"]() == {}
    assert registration["fn"](None) == {"bytes": 0, "rss_drop": 0}


# -- the books: stats, deletes, clears, expiry -------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_stats_as_the_coordinator_reads_them() -> None:
    clock = Clock()
    cache = small(timer=clock)
    cache.set("k", "v" * 10)
    cache.set(("t", 1), "v", ttl=float("inf"))
    clock.now = 0.12345
    assert cache.stats() == {
        "name": "n", "entries": 2, "bytes": 293, "max_bytes": 1000, "max_entries": 5,
        "ttl_s": 60.0, "hits": 0, "misses": 0, "hit_ratio": 0.0,
        "evictions": dict.fromkeys(pmcache.CAUSES, 0),
        "evicted_bytes": dict.fromkeys(pmcache.CAUSES, 0),
        "biggest": [
            {"key": "('t', 1)", "bytes": 184, "expires_in_s": None},
            {"key": "k", "bytes": 109, "expires_in_s": 59.877},
        ],
        "attached": False, "last_pressure_eviction": None,
    }  # fmt: skip
    assert small(ttl=float("inf")).stats()["ttl_s"] is None


@pytest.mark.parametrize(("length", "shown"), [(80, "k" * 80), (81, "k" * 77 + "...")])
def test_a_long_key_is_shown_cut_to_80_characters(length: int, shown: str) -> None:
    cache = small(max_bytes=10_000)
    cache.set("k" * length, "v")
    assert cache.stats()["biggest"][0]["key"] == shown


def test_a_delete_at_the_moment_of_expiry_finds_nothing_live() -> None:
    clock = Clock()
    cache = small(timer=clock, ttl=10)
    cache.set("a", "v")
    cache.set("b", "v")
    cache.set("c", "v")
    assert cache.delete("a") and cache.delete("b")
    clock.now = 10.0
    assert cache.delete("c") is False
    assert cache.stats()["evictions"] == {"capacity": 0, "ttl": 1, "pressure": 0, "manual": 2}
    assert cache.get_metrics()["deletes"] == 2


def test_clears_add_up_as_invalidations() -> None:
    cache = small()
    cache.set("a", "v")
    cache.set("b", "v")
    cache.clear()
    cache.set("c", "v")
    cache.clear()
    assert cache.get_metrics()["invalidations"] == 3


def test_a_hit_sweeps_what_expired_at_that_very_moment() -> None:
    clock = Clock()
    cache = small(timer=clock)
    cache.set("long", "v", ttl=10)
    cache.set("short", "v" * 50, ttl=5)
    clock.now = 5.0
    assert cache.get("long") == "v"
    # "short" is gone with the hit, not at the next sweep
    assert cache.cached_bytes == pmcache.sizeof("long") + pmcache.sizeof("v")


def test_making_room_counts_every_entry_it_evicts() -> None:
    cache = filled(300, 300, 300)
    cache.set("big", "v" * (700 - 99))
    assert cache.stats()["evictions"]["capacity"] == 3


def test_entries_still_expire_on_time_after_the_heap_is_rebuilt() -> None:
    clock = Clock()
    cache = small(timer=clock, ttl=10)
    for _ in range(200):  # overwrites leave stale heap items until it is rebuilt
        cache.set("a", "v")
    cache.set("b", "v", ttl=20)
    assert len(cache._expiry) < 100
    clock.now = 9.9
    assert len(cache) == 2
    clock.now = 10.0
    assert len(cache) == 1 and cache.get("b") == "v"


# -- pressure eviction -------------------------------------------------------------------------


@pytest.mark.parametrize("sizes", [(300,), (300, 300)])
def test_an_eviction_that_drops_anything_trims_and_measures(sizes: tuple[int, ...]) -> None:
    if not pmcache._malloc.trim():
        pytest.skip("no malloc_trim here")
    freed = filled(*sizes).evict_fraction(1.0)
    assert freed.entries == len(sizes) and freed.trimmed
    assert freed.rss_before is not None and freed.rss_after is not None
    assert not filled().evict_fraction(1.0).trimmed  # nothing dropped: nothing to trim


def test_a_bad_cause_is_named() -> None:
    with pytest.raises(UsageError) as e:
        small().evict_fraction(0.5, cause="boredom")
    assert str(e.value) == "cause must be 'pressure' or 'manual', not 'boredom'"


def test_invalidate_takes_exactly_one_rule_and_logs_a_failing_callback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = small()
    with pytest.raises(UsageError) as e:
        cache.invalidate()
    assert str(e.value) == "invalidate() takes a pattern or prefix=, exactly one of them"

    def broken(pattern: str) -> None:
        raise RuntimeError("listener broke")

    cache.register_invalidation_callback("*", broken)
    with caplog.at_level(logging.ERROR, logger="pmrun.cache"):
        assert cache.invalidate("a*") == 0
    (record,) = [r for r in caplog.records if r.name == "pmrun.cache"]
    said = record.getMessage()
    assert said.startswith("n: ") and repr(broken) in said and said.endswith("listener broke")


# -- how entries are sized ---------------------------------------------------------------------


def test_nesting_is_followed_exactly_eight_levels_down() -> None:
    import sys

    chain: list = []
    for _ in range(12):
        chain = [chain]
    assert pmcache.sizeof(chain) == 9 * sys.getsizeof([None])


def test_an_object_is_its_own_size_plus_its_attributes() -> None:
    import sys

    class Plain:
        pass

    o = Plain()
    o.text = "t" * 500  # type: ignore[attr-defined]
    assert pmcache.sizeof(o) == sys.getsizeof(o) + pmcache.sizeof(o.__dict__)


def test_slots_are_followed_whatever_their_form() -> None:
    import sys

    class One:
        __slots__ = "data"

    class Some:
        __slots__ = ("a", "b", "__weakref__")

    one = One()
    one.data = "d" * 1000
    assert pmcache.sizeof(one) == sys.getsizeof(one) + sys.getsizeof(one.data)
    some = Some()
    some.a = "a" * 100  # b is left unset; the weakref slot is not the object's content
    assert pmcache.sizeof(some) == sys.getsizeof(some) + sys.getsizeof(some.a)


def test_an_object_that_cannot_say_its_size_counts_64_bytes() -> None:
    class Opaque:
        __slots__ = ()

        def __sizeof__(self) -> int:
            raise TypeError("unknown")

    assert pmcache.sizeof(Opaque()) == 64


# -- storing -----------------------------------------------------------------------------------


def test_a_ttl_that_is_not_a_number_is_named() -> None:
    with pytest.raises(UsageError) as e:
        small().set("k", "v", ttl="soon")  # type: ignore[arg-type]
    assert str(e.value) == "ttl must be a number of seconds above 0 (or inf), not 'soon'"


def test_a_framework_config_without_limits_keeps_the_ones_given() -> None:
    cache = SharedPromptCache(max_bytes=1000, max_entries=5, pressure_fraction=0.5,
                              auto_attach=False, config={"default_ttl": 5})  # fmt: skip
    assert (cache.max_bytes, cache.max_entries, cache.ttl) == (1000, 5, 5)


def test_an_oversized_replacement_drops_the_old_value_as_one_capacity_eviction(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = small(refuse_too_large=True)
    cache.set("k", "v")
    with caplog.at_level(logging.WARNING, logger="pmrun.cache"):
        assert cache.set("k", "x" * 2000) is False
    assert "k" not in cache and cache.cached_bytes == 0
    assert cache.stats()["evictions"]["capacity"] == 1
    (record,) = [r for r in caplog.records if r.name == "pmrun.cache"]
    assert record.getMessage() == str(CacheValueTooLarge("k", 2099, 1000))


def test_an_entry_that_exactly_fills_the_budget_evicts_nobody() -> None:
    cache = filled(500)
    cache.set("z", "v" * (500 - 99))
    assert cache.cached_bytes == 1000 and len(cache) == 2


def test_evicted_bytes_add_up() -> None:
    cache = filled(300, 200)
    cache.delete("a")
    cache.delete("b")
    assert cache.stats()["evicted_bytes"]["manual"] == 500


@pytest.mark.parametrize("live", [1, 2, 5])
def test_the_expiry_heap_never_holds_more_than_twice_the_entries_and_64(live: int) -> None:
    cache = small(max_entries=10)
    keys = [f"k{i}" for i in range(live)]
    for _ in range(100):
        for k in keys:
            cache.set(k, "v")
            assert len(cache._expiry) <= 2 * live + 64
    cache.delete(keys[0])
    cache.expire()
    assert len(cache._expiry) <= 2 * (live - 1) + 64


def test_an_eviction_reports_its_own_durations() -> None:
    import time

    started = time.perf_counter()
    freed = filled(300).evict_fraction(1.0, trim=False)
    took = time.perf_counter() - started
    assert not freed.trimmed and freed.trim_s == 0.0
    assert 0.0 <= freed.evict_s <= took
    assert freed.rss_before is not None and freed.rss_after is not None
    freed = filled(300).evict_fraction(1.0)
    assert (
        freed.trim_s == 0.0
        if not freed.trimmed
        else 0.0 < freed.trim_s <= time.perf_counter() - started
    )  # malloc_trim ran, and took time


def test_an_entry_keeps_its_own_expiry_through_a_heap_rebuild() -> None:
    clock = Clock()
    cache = small(timer=clock, ttl=10)
    cache.set("first", "v")
    cache.set("b", "v", ttl=20)
    for _ in range(200):  # churn on another key until the heap is rebuilt from the entries
        cache.set("a", "v")
    clock.now = 19.9
    assert len(cache) == 1 and "b" in cache  # swept: "first" and "a" expired at 10
    clock.now = 20.0
    assert len(cache) == 0


def test_the_framework_flags_are_kept() -> None:
    assert SharedPromptCache(config={}, auto_attach=False).enable_metrics is True
    off = SharedPromptCache(config={"enable_metrics": False}, auto_attach=False)
    assert off.enable_metrics is False
    kept = SharedPromptCache(ttl=7, max_bytes=1000, max_entries=5, pressure_fraction=0.5,
                             auto_attach=False, config={"max_size": 3})  # fmt: skip
    assert (kept.ttl, kept.max_entries, kept.max_bytes) == (7, 3, 1000)


# -- limits ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kw", "error", "message"),
    [
        ({"max_bytes": 0}, UsageError, "max_bytes (cache.max-bytes) must be at least 1 byte"),
        ({"max_bytes": "lots"}, pmcache.SizeError, "SharedPromptCache: invalid size 'lots': expected a number with a unit, e.g. 500M or 1.5G"),
        ({"pressure_fraction": 2}, pmcache.SizeError, "SharedPromptCache: invalid fraction 2: must be between 0% and 100%"),
        ({"max_entries": 0}, UsageError, "max_entries (cache.max-entries) must be a whole number, at least 1, not 0"),
        ({"max_entries": True}, UsageError, "max_entries (cache.max-entries) must be a whole number, at least 1, not True"),
        ({"max_entries": 2.0}, UsageError, "max_entries (cache.max-entries) must be a whole number, at least 1, not 2.0"),
        ({"ttl": 0}, UsageError, "ttl (cache.ttl) must be a number of seconds above 0 (or inf), not 0"),
    ],
)  # fmt: skip
def test_each_bad_limit_is_named_with_its_setting(
    kw: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error) as e:
        small(**kw)
    assert str(e.value) == message


def test_the_smallest_limits_are_accepted() -> None:
    cache = small(max_bytes=1, max_entries=1)
    assert (cache.max_bytes, cache.max_entries) == (1, 1)


def test_a_failed_auto_attach_is_logged_for_debugging(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import sys

    monkeypatch.setenv("PMRUN_SOCKET", "/tmp/nobody.sock")
    monkeypatch.setitem(sys.modules, "pmrun.client", None)  # the import fails
    with caplog.at_level(logging.DEBUG, logger="pmrun.cache"):
        cache = small(auto_attach=True)
    assert not cache.attached
    (said,) = [r.getMessage() for r in caplog.records if r.name == "pmrun.cache"]
    assert said.startswith("n: ") and "pmrun.client" in said
