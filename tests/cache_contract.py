"""The prompt-cache API of claude-multiagent-pm 1.4.7, as its own code calls it.

:func:`run_contract` takes a module offering ``SharedPromptCache``, ``get_shared_cache`` and
``cache_result`` and checks the calls the framework makes (``agent_loader``,
``agent_profile_loader``, ``pm_orchestrator``, ``memory_diagnostics``,
``cache_service_integration``, the health collectors). It runs unchanged on the framework's
own module (tests/test_claude_pm.py does, in a venv with the framework installed), on
``pmrun.cache``, and on the framework's module after ``pmrun.integrations.claude_pm.install()``:
what passes on the original must pass on pmrun. Only the standard library is imported, so
the file can be run as a script by any interpreter: ``python cache_contract.py MODULE``.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
import time
from types import ModuleType
from typing import Any

# The keys the framework's code and dashboards read.
METRIC_KEYS = {
    "hits", "misses", "hit_rate", "miss_rate", "sets", "deletes", "invalidations",
    "size_bytes", "size_mb", "entry_count", "max_size", "max_memory_mb", "evictions",
    "expired_removals", "memory_usage_percent", "memory_pressure", "ttl_default",
    "cleanup_interval",
}  # fmt: skip
INFO_KEYS = {"total_entries", "total_size_bytes", "total_size_mb", "entries", "metrics"}
ENTRY_KEYS = {"key", "age_seconds", "access_count", "size_bytes", "is_expired", "ttl", "metadata"}
PRESSURE_KEYS = {
    "entries_before", "memory_before_mb", "entries_removed", "memory_freed_mb",
    "entries_after", "memory_after_mb",
}  # fmt: skip


def run_contract(mod: ModuleType) -> list[str]:
    """Check every call; returns the names of the checks that ran (AssertionError on a miss)."""
    done: list[str] = []
    cls = mod.SharedPromptCache
    cls.reset_instance()
    try:
        for check in CHECKS:
            cls.reset_instance()
            check(mod)
            done.append(check.__name__)
    finally:
        cls.reset_instance()
    return done


def singleton_and_config(mod: ModuleType) -> None:
    cls = mod.SharedPromptCache
    config = {"max_size": 300, "max_memory_mb": 20, "default_ttl": 900}  # pm_orchestrator's
    first = cls.get_instance(config)
    assert first, "an empty cache is still a cache: `if self._cache_instance:` in the framework"
    assert cls.get_instance() is first and mod.get_shared_cache() is first
    assert cls.get_instance({"max_size": 1}) is first  # config only counts the first time
    m = first.get_metrics()
    assert (m["max_size"], m["max_memory_mb"], m["ttl_default"]) == (300, 20, 900), m
    assert (first.max_size, first.max_memory_mb, first.default_ttl) == (300, 20, 900)
    cls.reset_instance()
    assert cls.get_instance() is not first


def set_get_delete(mod: ModuleType) -> None:
    cache = mod.SharedPromptCache.get_instance()
    assert cache.set("engineer:profile", {"role": "engineer"}) is True
    assert cache.set("a", "alpha", 300) is True  # ttl positional
    assert cache.set("b", "beta", 300, {"source": "system"}) is True  # and metadata
    assert cache.set("c", "gamma", ttl=3600) is True
    assert cache.get("engineer:profile") == {"role": "engineer"}
    assert cache.get("missing") is None
    assert cache.delete("c") is True and cache.delete("c") is False
    assert cache.get("c") is None
    m = cache.get_metrics()
    assert METRIC_KEYS <= set(m), METRIC_KEYS - set(m)
    assert (m["hits"], m["misses"], m["sets"], m["deletes"]) == (1, 2, 4, 1), m
    assert m["entry_count"] == 3 and m["hit_rate"] == 1 / 3
    assert abs(m["miss_rate"] - 2 / 3) < 1e-9
    info = cache.get_cache_info()
    assert INFO_KEYS <= set(info) and info["total_entries"] == 3
    assert info["total_size_bytes"] == sum(e["size_bytes"] for e in info["entries"])
    assert info["total_size_bytes"] == m["size_bytes"]
    by_key = {e["key"]: e for e in info["entries"]}
    assert set(by_key) == {"engineer:profile", "a", "b"}
    assert all(ENTRY_KEYS <= set(e) for e in info["entries"])
    assert by_key["b"]["metadata"] == {"source": "system"} and by_key["a"]["metadata"] == {}
    assert by_key["b"]["ttl"] == 300 and by_key["b"]["is_expired"] is False


def wildcard_and_exact_invalidation(mod: ModuleType) -> None:
    cache = mod.SharedPromptCache.get_instance()
    for key in (
        "agent_profile:engineer:system", "agent_profile:engineer:user", "agent_profile:qa:system",
        "base_agent:instructions", "base_agent:instructions:test", "delegation_prompt:qa:1",
        "agent_registry_discovery", "agent_registry_agent_qa",
    ):  # fmt: skip
        cache.set(key, key.upper())
    assert cache.invalidate("agent_profile:engineer:*") == 2  # agent_profile_loader
    assert cache.get("agent_profile:qa:system") == "AGENT_PROFILE:QA:SYSTEM"
    assert cache.invalidate("base_agent:instructions") == 1  # an exact key: only itself
    assert cache.get("base_agent:instructions:test") is not None
    assert cache.invalidate("agent_registry_*") == 2  # enhanced_agent_registry
    assert cache.invalidate("delegation_prompt:*") == 1  # pm_orchestrator
    assert cache.invalidate("nothing:*") == 0 and cache.invalidate("nothing") == 0
    assert cache.invalidate("agent_profile:*") == 1
    m = cache.get_metrics()
    assert m["invalidations"] == 7 and m["entry_count"] == 1, m


def invalidation_callbacks(mod: ModuleType) -> None:
    cache = mod.SharedPromptCache.get_instance()
    seen: list[str] = []
    cache.register_invalidation_callback("agent_profile:*", seen.append)
    cache.register_invalidation_callback("other:*", lambda p: seen.append("wrong " + p))

    def broken(pattern: str) -> None:
        raise RuntimeError("a listener that fails")

    cache.register_invalidation_callback("agent_profile:*", broken)
    cache.set("agent_profile:qa:system", "x")
    assert cache.invalidate("agent_profile:qa:*") == 1
    assert seen == ["agent_profile:qa:*"], seen


def memory_pressure(mod: ModuleType) -> None:
    cache = mod.SharedPromptCache.get_instance()
    for i in range(8):
        cache.set(f"k{i}", "v" * 10_000)
    stats = asyncio.run(cache.handle_memory_pressure("critical"))
    assert PRESSURE_KEYS <= set(stats), stats
    assert stats["entries_before"] == 8 and stats["entries_after"] == 2, stats
    assert stats["entries_removed"] == 6 and stats["memory_freed_mb"] > 0
    assert cache.get("k7") is not None and cache.get("k0") is None  # least recently used first
    for i in range(8):
        cache.set(f"k{i}", "v" * 10_000)
    stats = asyncio.run(cache.handle_memory_pressure("warning"))
    assert stats["entries_after"] == 4, stats
    assert cache.get_metrics()["evictions"] >= 10


def expiry(mod: ModuleType) -> None:
    cache = mod.SharedPromptCache.get_instance()
    cache.set("short", "s", ttl=0.05)
    cache.set("long", "l", ttl=300)
    deadline = time.monotonic() + 10
    while cache.get("short") is not None:
        assert time.monotonic() < deadline, "an entry with ttl=0.05 never expired"
        time.sleep(0.02)
    assert cache.get("long") == "l"
    assert cache.get_metrics()["expired_removals"] >= 1


def start_stop(mod: ModuleType) -> None:
    cache = mod.SharedPromptCache.get_instance()

    async def life() -> None:
        assert cache.running is False
        assert (await cache.health_check()).status == "unhealthy"
        await cache.start()  # cache_service_integration: `if not cache.running: await start()`
        assert cache.running is True
        cache.set("k", "v")
        # CacheServiceWrapper reads .checks. Only the shape is common: the framework's own
        # check fails on itself when running (its CacheMetrics has no requests_total).
        health = await cache.health_check()
        assert health.status in ("healthy", "degraded", "unhealthy") and health.message, health
        assert isinstance(health.checks, dict) and isinstance(health.metrics, dict)
        assert isinstance(health.timestamp, str)
        await cache.stop()
        assert cache.running is False

    asyncio.run(life())
    assert cache.get("k") is None


def decorator(mod: ModuleType) -> None:
    calls: list[str] = []

    @mod.cache_result("agent_profile:{agent_name}", ttl=300)
    def load_profile(agent_name: str) -> dict[str, Any]:
        calls.append(agent_name)
        return {"name": agent_name}

    assert load_profile(agent_name="qa") == {"name": "qa"}
    assert load_profile(agent_name="qa") == {"name": "qa"}
    assert load_profile(agent_name="ops") == {"name": "ops"}
    assert calls == ["qa", "ops"]
    cache = mod.SharedPromptCache.get_instance()
    assert cache.get("agent_profile:qa") == {"name": "qa"}
    assert cache.invalidate("agent_profile:*") == 2
    load_profile(agent_name="qa")
    assert calls == ["qa", "ops", "qa"]


CHECKS = (
    singleton_and_config,
    set_get_delete,
    wildcard_and_exact_invalidation,
    invalidation_callbacks,
    memory_pressure,
    expiry,
    start_stop,
    decorator,
)


if __name__ == "__main__":
    import json
    import logging

    logging.disable(logging.CRITICAL)  # the framework logs every call at INFO
    if len(sys.argv) > 2 and sys.argv[2] == "--install":
        from pmrun.integrations import claude_pm

        claude_pm.install()
    module = importlib.import_module(sys.argv[1])
    print(json.dumps({"module": module.SharedPromptCache.__module__, "ran": run_contract(module)}))
