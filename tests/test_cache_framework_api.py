"""SharedPromptCache speaks claude-multiagent-pm 1.4.7's cache API as well as pmrun's own.

The contract (tests/cache_contract.py) is the framework's own calls; tests/test_claude_pm.py
runs the same contract on the real framework's class, so passing here means behaving as it.
The tables below pin down where the two APIs meet: the framework's call shape gets the
framework's answer, pmrun's keeps pmrun's.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest

import cache_contract
from helpers import FakeClock
from pmrun import cache as pmcache
from pmrun.cache import CacheValueTooLarge, SharedPromptCache
from pmrun.errors import UsageError
from test_cache import audit, make_cache


@pytest.fixture(autouse=True)
def no_common_cache() -> Iterator[None]:
    SharedPromptCache.reset_instance()
    yield
    SharedPromptCache.reset_instance()


def test_the_framework_contract_holds_on_pmrun() -> None:
    ran = cache_contract.run_contract(pmcache)
    assert ran == [c.__name__ for c in cache_contract.CHECKS]


def test_the_contract_fails_on_a_cache_that_breaks_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """The contract is not vacuous: pmrun's old prefix rule for a plain key fails it."""
    monkeypatch.setattr(pmcache, "_key_matches", lambda k, p: pmcache._key_has_prefix(k, p))
    with pytest.raises(AssertionError):
        cache_contract.run_contract(pmcache)


@pytest.mark.parametrize(
    ("config", "max_bytes", "max_entries", "ttl"),
    [
        ({"max_size": 100, "max_memory_mb": 10, "default_ttl": 60}, 10 << 20, 100, 60.0),
        ({"max_memory_mb": 0.5}, 512 << 10, 500, 300.0),  # the rest from pmrun's settings
        ({"default_ttl": None}, 50 << 20, 500, math.inf),  # None: entries never expire
        ({"cleanup_interval": 5, "enable_metrics": False, "unknown": 1}, 50 << 20, 500, 300.0),
    ],
)
def test_framework_config_dict(
    config: dict[str, Any], max_bytes: int, max_entries: int, ttl: float
) -> None:
    for cache in (
        SharedPromptCache(config, auto_attach=False),  # SharedPromptCache(config), positional
        SharedPromptCache(config=config, auto_attach=False),
    ):
        assert (cache.max_bytes, cache.max_entries, cache.ttl) == (max_bytes, max_entries, ttl)
        assert cache.get_metrics()["cleanup_interval"] == config.get("cleanup_interval", 60)
        assert cache.default_ttl == (None if math.isinf(ttl) else ttl)


@pytest.mark.parametrize("bad", [0, -1, "10", True, None])
def test_bad_max_memory_mb_is_one_clear_error(bad: object) -> None:
    if bad is None:  # None means "not given" in the framework's config
        assert SharedPromptCache({"max_memory_mb": None}, auto_attach=False).max_bytes > 0
        return
    with pytest.raises(UsageError, match="max_memory_mb"):
        SharedPromptCache({"max_memory_mb": bad}, auto_attach=False)


def test_too_large_raises_the_pmrun_way_and_answers_false_the_framework_way(
    caplog: pytest.LogCaptureFixture,
) -> None:
    pmrun_way = make_cache(max_bytes=1000)
    with pytest.raises(CacheValueTooLarge):
        pmrun_way.set("k", "x" * 2000)
    framework_way = SharedPromptCache({"max_memory_mb": 0.001}, auto_attach=False)
    framework_way.set("k", "small")
    with caplog.at_level(logging.WARNING, logger="pmrun.cache"):
        assert framework_way.set("k", "x" * 2000) is False
    assert "more than the whole cache budget" in caplog.text
    assert framework_way.get("k") is None  # the old value is gone too, as with pmrun's way
    assert SharedPromptCache.get_instance({"max_memory_mb": 0.001}).set("k", "x" * 2000) is False
    assert SharedPromptCache(1000, auto_attach=False, refuse_too_large=True).set(
        "k", "x" * 2000
    ) is False  # fmt: skip


@pytest.mark.parametrize(
    ("pattern", "gone"),
    [
        ("agent:qa", {"agent:qa"}),  # a plain key is exact: not agent:qa:v2
        ("agent:qa*", {"agent:qa", "agent:qa:v2"}),
        ("agent:*:v2", {"agent:qa:v2"}),
        ("agent:q?", {"agent:qa"}),
        ("agent:[qx]a", {"agent:qa"}),
        ("weird[1]", {"weird[1]"}),  # a key containing [ still matches itself
        ("memo.build", {("memo.build", (1,), ())}),  # memoized keys by their function name
        ("memo.*", {("memo.build", (1,), ())}),
        ("*", {"agent:qa", "agent:qa:v2", "weird[1]", ("memo.build", (1,), ())}),
    ],
)
def test_invalidate_pattern(pattern: str, gone: set[object]) -> None:
    cache = make_cache()
    keys: list[object] = ["agent:qa", "agent:qa:v2", "weird[1]", ("memo.build", (1,), ()), 42]
    for k in keys:
        cache.set(k, "v")  # type: ignore[arg-type]
    assert cache.invalidate(pattern) == len(gone)
    assert {k for k in keys if k not in cache} == gone  # type: ignore[operator]
    audit(cache)


def test_invalidate_by_prefix_is_pmrun_s_rule() -> None:
    cache = make_cache()
    for k in ("agent:qa", "agent:qa:v2", "agent:ops"):
        cache.set(k, "v")
    assert cache.invalidate(prefix="agent:qa") == 2 and "agent:ops" in cache
    with pytest.raises(UsageError, match="exactly one"):
        cache.invalidate()
    with pytest.raises(UsageError, match="exactly one"):
        cache.invalidate("a", prefix="a")


def test_invalidation_callbacks_see_the_pattern_and_a_failing_one_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = make_cache()
    seen: list[str] = []
    cache.register_invalidation_callback("agent:*", lambda p: 1 / 0)
    cache.register_invalidation_callback("agent:*", seen.append)
    cache.register_invalidation_callback("prompt:*", seen.append)
    with caplog.at_level(logging.ERROR, logger="pmrun.cache"):
        cache.invalidate("agent:qa:*")
        cache.invalidate(prefix="prompt:")
    assert seen == ["agent:qa:*", "prompt:*"]
    assert "invalidation callback" in caplog.text


def test_metrics_count_the_framework_s_way() -> None:
    timer = FakeClock()
    cache = make_cache(max_bytes="1MB", max_entries=3, timer=timer)
    for i in range(4):
        assert cache.set(f"k{i}", "v", 10 if i == 0 else None) is True  # ttl positional
    assert cache.get_metrics()["evictions"] == 1  # k0 made room for k3
    cache.set("short", "s", 5)
    timer.tick(6)
    cache.get("k2")
    cache.delete("k3")
    cache.invalidate("k*")
    m = cache.get_metrics()
    assert m["sets"] == 5 and m["deletes"] == 1 and m["invalidations"] == 1
    assert m["expired_removals"] == 1 and m["hits"] == 1 and m["misses"] == 0
    assert m["entry_count"] == 0 and m["size_bytes"] == cache.cached_bytes == 0
    assert cache.stats()["evictions"] == {"capacity": 2, "ttl": 1, "pressure": 0, "manual": 2}


def test_cache_info_ages_and_metadata() -> None:
    timer = FakeClock()
    cache = make_cache(timer=timer)
    cache.set("k", "v", 50, {"tier": "system"})
    timer.tick(7)
    [entry] = cache.get_cache_info()["entries"]
    assert entry["age_seconds"] == 7 and entry["ttl"] == 50
    assert entry["metadata"] == {"tier": "system"} and entry["access_count"] is None


@pytest.mark.parametrize(("severity", "left"), [("warning", 5), ("critical", 2), ("odd", 5)])
def test_handle_memory_pressure_severity(severity: str, left: int) -> None:
    cache = make_cache(max_bytes="1MB")
    for i in range(10):
        cache.set(f"k{i}", "v" * 1000)
    stats = asyncio.run(cache.handle_memory_pressure(severity))
    assert stats["entries_after"] == len(cache) == left
    assert stats["bytes"] == stats["bytes_accounted"] > 0  # what pmrun's coordinator reads
    assert cache.stats()["evictions"]["pressure"] == 10 - left


def test_health_check_reports_without_touching_entries() -> None:
    cache = make_cache(max_bytes="1MB")
    cache.set("k", "v")
    before = cache.stats()
    assert asyncio.run(cache.health_check()).status == "unhealthy"  # not started
    asyncio.run(cache.start())
    health = asyncio.run(cache.health_check())
    assert health.status == "healthy" and all(health.checks.values()), health
    assert set(health.checks) == {"running", "cache_operations", "memory_usage_ok", "cache_size_ok"}
    assert cache.stats() == before  # no test entry stored, read or evicted
    asyncio.run(cache.stop())


def test_get_instance_is_shared_and_reset_detaches(tmp_path: Any) -> None:
    first = SharedPromptCache.get_instance()
    assert SharedPromptCache.shared() is first and pmcache.get_shared_cache() is first
    assert pmcache.configure_shared_cache({"max_size": 3}) is first
    SharedPromptCache.reset_instance()
    second = pmcache.configure_shared_cache({"max_size": 3})
    assert second is not first and second.max_size == 3


def test_cache_result_keys_and_none_results() -> None:
    calls: list[object] = []

    @pmcache.cache_result("profile:{name}:{args_hash}", namespace="ns")
    def load(*args: object, name: str) -> object:
        calls.append((args, name))
        return None if name == "none" else name.upper()

    assert load(1, name="qa") == "QA" and load(1, name="qa") == "QA"
    load(2, name="qa")
    load(name="none")
    load(name="none")  # None is not served from the cache, as in the framework
    assert len(calls) == 4
    keys = [e["key"] for e in SharedPromptCache.get_instance().get_cache_info()["entries"]]
    assert all(k.startswith("ns:profile:") for k in keys) and len(keys) == 3
