"""SharedPromptCache: byte and entry caps, TTL, eviction order, pressure eviction, stats.

Time is a fake timer; the memory test runs the cache in a real child process and reads the
child's RSS from /proc.
"""

from __future__ import annotations

import fnmatch
import gc
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
import types
from collections import OrderedDict
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from helpers import FakeClock
from pmrun import _malloc, _procfs
from pmrun.cache import CacheValueTooLarge, Freed, SharedPromptCache, sizeof
from pmrun.errors import CoordinatorUnavailable, PmrunError, SizeError, UsageError


def make_cache(
    max_bytes: int | str = 10_000,
    ttl: float = 300.0,
    *,
    max_entries: int = 1000,
    timer: Callable[[], float] | None = None,
    pressure_fraction: float = 0.75,
) -> SharedPromptCache:
    return SharedPromptCache(
        max_bytes,
        ttl,
        pressure_fraction,
        max_entries=max_entries,
        timer=timer or FakeClock(),
        auto_attach=False,
    )


def entry_size(key: Any, value: Any) -> int:
    return sizeof(key) + sizeof(value)


def audit(cache: SharedPromptCache) -> None:
    """The cache's books balance: its byte total is the sum of its entries, within the caps."""
    with cache._lock:
        total = sum(e[1] for e in cache._data.values())
        assert cache._bytes == total
        assert total <= cache.max_bytes
        assert len(cache._data) <= cache.max_entries
        # Every live entry can still be found by the expiry sweep.
        live = {(e[3], k) for k, e in cache._data.items()}
        assert live <= {(seq, k) for _, seq, k in cache._expiry}


# --- sizing -----------------------------------------------------------------------------


def test_str_and_bytes_are_sized_exactly_as_held() -> None:
    for value in ("", "a" * 1000, "é" * 1000, "😀" * 10, b"", b"x" * 4096):
        assert sizeof(value) == sys.getsizeof(value)
    assert sizeof("a" * 1000) == 1000 + sys.getsizeof("")


def test_containers_and_objects_are_estimated_recursively() -> None:
    items = ["x" * 100, "y" * 200]
    assert sizeof(items) == sys.getsizeof(items) + sum(map(sys.getsizeof, items))
    d = {"k": "v" * 50}
    assert sizeof(d) == sys.getsizeof(d) + sys.getsizeof("k") + sys.getsizeof("v" * 50)

    class Message:
        def __init__(self, text: str) -> None:
            self.text = text

    class Slotted:
        __slots__ = ("text",)

        def __init__(self, text: str) -> None:
            self.text = text

    text = "z" * 10_000
    assert sizeof(Message(text)) > 10_000
    assert sizeof(Slotted(text)) == sys.getsizeof(Slotted(text)) + sys.getsizeof(text)


def test_shared_and_cyclic_objects_are_counted_once() -> None:
    text = "s" * 5000
    pair = [text, text]
    assert sizeof(pair) == sys.getsizeof(pair) + sys.getsizeof(text)
    loop: list[Any] = []
    loop.append(loop)
    assert sizeof(loop) == sys.getsizeof(loop)


def test_depth_is_bounded() -> None:
    nested: list[Any] = ["leaf" * 1000]
    for _ in range(20):
        nested = [nested]
    assert sizeof(nested) < sys.getsizeof("leaf" * 1000)


# --- basic behaviour ----------------------------------------------------------------------


def test_get_set_delete_contains_len() -> None:
    cache = make_cache()
    assert cache.get("a") is None
    assert cache.get("a", "default") == "default"
    cache.set("a", "alpha")
    cache.set("b", "beta")
    assert cache.get("a") == "alpha"
    assert "a" in cache and "missing" not in cache
    assert len(cache) == 2
    assert cache.cached_bytes == entry_size("a", "alpha") + entry_size("b", "beta")
    assert cache.delete("a") is True
    assert cache.delete("a") is False
    assert "a" not in cache
    cache.set("b", "beta, longer now")
    assert cache.cached_bytes == entry_size("b", "beta, longer now")
    cache.clear()
    assert len(cache) == 0 and cache.cached_bytes == 0
    audit(cache)


def test_none_and_falsy_values_are_cached() -> None:
    cache = make_cache()
    cache.set("empty", "")
    cache.set("none", None)
    assert cache.get("empty", "miss") == ""
    assert cache.get("none", "miss") is None
    assert cache.stats()["hits"] == 2


def test_insert_evicts_least_recently_used_first() -> None:
    value = "v" * 1000
    size = entry_size("k0", value)
    cache = make_cache(max_bytes=3 * size)
    for k in ("k0", "k1", "k2"):
        cache.set(k, value)
    assert cache.get("k0") == value  # k0 is now the most recently used; k1 the least
    cache.set("k3", value)
    assert "k1" not in cache
    assert all(k in cache for k in ("k0", "k2", "k3"))
    assert cache.stats()["evictions"]["capacity"] == 1
    audit(cache)


def test_entry_cap() -> None:
    cache = make_cache(max_bytes="1MB", max_entries=3)
    for i in range(10):
        cache.set(f"k{i}", "v")
    assert len(cache) == 3
    assert [k for k in ("k7", "k8", "k9") if k in cache] == ["k7", "k8", "k9"]
    cache.set("k9", "replaced")  # replacing does not count as a new entry
    assert len(cache) == 3 and "k7" in cache
    assert cache.stats()["evictions"]["capacity"] == 7


def test_value_larger_than_the_budget_is_refused() -> None:
    cache = make_cache(max_bytes=1000)
    cache.set("prompt", "small")
    with pytest.raises(CacheValueTooLarge) as info:
        cache.set("prompt", "x" * 2000)
    err = info.value
    assert isinstance(err, PmrunError) and isinstance(err, ValueError)
    assert err.size_bytes == entry_size("prompt", "x" * 2000) and err.max_bytes == 1000
    assert "cache.max-bytes" in str(err) and "'prompt'" not in str(err)
    # The value it was meant to replace is gone rather than silently stale.
    assert "prompt" not in cache
    assert cache.cached_bytes == 0
    audit(cache)


def test_entry_exactly_at_the_budget_fits() -> None:
    value = "x" * 500
    cache = make_cache(max_bytes=entry_size("k", value))
    cache.set("other", "o")
    cache.set("k", value)
    assert cache.get("k") == value and "other" not in cache


@pytest.mark.parametrize(
    "kwargs, error",
    [
        ({"max_bytes": 0}, UsageError),
        ({"max_bytes": "lots"}, SizeError),
        ({"max_entries": 0}, UsageError),
        ({"ttl": 0}, UsageError),
        ({"ttl": -1}, UsageError),
        ({"ttl": math.nan}, UsageError),
        ({"pressure_fraction": 1.5}, SizeError),
    ],
)
def test_bad_limits_are_refused(kwargs: dict[str, Any], error: type[Exception]) -> None:
    with pytest.raises(error):
        make_cache(**kwargs)


def test_limits_come_from_environment_and_config_file(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "pmrun.toml").write_text('[cache]\nmax-bytes = "2MB"\nttl = 60\n')
    monkeypatch.setenv("PMRUN_CACHE_MAX_ENTRIES", "42")
    monkeypatch.setenv("PMRUN_CACHE_PRESSURE_FRACTION", "50%")
    monkeypatch.delenv("PMRUN_SOCKET", raising=False)
    cache = SharedPromptCache()
    assert (cache.max_bytes, cache.ttl, cache.max_entries) == (2 << 20, 60.0, 42)
    assert cache.pressure_fraction == 0.5
    # Arguments win over both.
    cache = SharedPromptCache("1MB", 5, max_entries=7)
    assert (cache.max_bytes, cache.ttl, cache.max_entries) == (1 << 20, 5.0, 7)


def test_a_bad_setting_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PMRUN_CACHE_TTL", "0")
    with pytest.raises(UsageError, match=r"cache\.ttl"):
        SharedPromptCache(auto_attach=False)
    monkeypatch.setenv("PMRUN_CACHE_TTL", "60")
    monkeypatch.setenv("PMRUN_CACHE_MAX_ENTRIES", "0")
    with pytest.raises(UsageError, match=r"cache\.max-entries"):
        SharedPromptCache(auto_attach=False)


def test_malloc_helpers() -> None:
    rss = _malloc.rss_bytes()
    assert rss is not None and rss > 1 << 20
    assert _malloc.trim() is _malloc.trim_available()


def test_shared_is_one_instance(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(SharedPromptCache, "_instance", None)
    monkeypatch.delenv("PMRUN_SOCKET", raising=False)
    first = SharedPromptCache.shared()
    assert SharedPromptCache.shared() is first
    assert first.max_entries == 500  # the default setting


# --- TTL ----------------------------------------------------------------------------------


def test_entries_expire_after_ttl_and_their_bytes_are_reclaimed() -> None:
    timer = FakeClock()
    cache = make_cache(ttl=10, timer=timer)
    cache.set("old", "o" * 100)
    timer.tick(5)
    cache.set("new", "n" * 100)
    timer.tick(4.999)
    assert cache.get("old") == "o" * 100
    timer.tick(0.001)  # "old" is now exactly 10 s old
    assert cache.get("old") is None
    assert "old" not in cache
    assert cache.cached_bytes == entry_size("new", "n" * 100)
    timer.tick(5)
    cache.set("other", "x")  # any call sweeps "new" too
    assert cache.cached_bytes == entry_size("other", "x")
    assert cache.stats()["evictions"]["ttl"] == 2
    audit(cache)


def test_expired_entries_are_reclaimed_without_being_looked_up() -> None:
    timer = FakeClock()
    cache = make_cache(max_bytes="1MB", ttl=10, timer=timer)
    for i in range(50):
        cache.set(f"k{i}", "v" * 100)
    timer.tick(10)
    assert cache.expire() == 50
    assert cache.cached_bytes == 0 and len(cache) == 0


def test_per_call_ttl() -> None:
    timer = FakeClock()
    cache = make_cache(ttl=100, timer=timer)
    cache.set("short", "s", ttl=1)
    cache.set("long", "l", ttl=1000)
    cache.set("default", "d")
    timer.tick(1)
    assert "short" not in cache and "default" in cache
    timer.tick(99)
    assert "default" not in cache and cache.get("long") == "l"
    timer.tick(900)
    assert len(cache) == 0
    with pytest.raises(UsageError):
        cache.set("k", "v", ttl=0)


def test_resetting_a_key_restarts_its_ttl() -> None:
    timer = FakeClock()
    cache = make_cache(ttl=10, timer=timer)
    cache.set("k", "first")
    timer.tick(8)
    cache.set("k", "second")
    timer.tick(8)
    assert cache.get("k") == "second"
    audit(cache)


def test_infinite_ttl_never_expires() -> None:
    timer = FakeClock()
    cache = make_cache(ttl=math.inf, timer=timer)
    cache.set("k", "v")
    timer.tick(1e12)
    assert cache.get("k") == "v"
    assert cache.stats()["ttl_s"] is None


def test_expiry_heap_stays_bounded_under_overwrites() -> None:
    cache = make_cache(max_bytes="1MB")
    for i in range(10_000):
        cache.set(f"k{i % 10}", "v")
    assert len(cache._expiry) <= 2 * len(cache) + 65


# --- invalidate, evict_fraction, stats ------------------------------------------------------


def test_invalidate_by_prefix() -> None:
    cache = make_cache()
    cache.set("system:v1:a", "1")
    cache.set("system:v1:b", "2")
    cache.set("system:v2:a", "3")
    cache.set(("system:v1", "tuple"), "4")
    cache.set(42, "5")
    assert cache.invalidate(prefix="system:v1") == 3
    assert "system:v2:a" in cache and 42 in cache and len(cache) == 2
    assert cache.invalidate(prefix="nothing") == 0
    assert cache.stats()["evictions"]["manual"] == 3
    audit(cache)


def test_evict_fraction_drops_expired_then_least_recently_used() -> None:
    timer = FakeClock()
    cache = make_cache(max_bytes="1MB", ttl=100, timer=timer)
    cache.set("expiring", "e" * 1000, ttl=5)
    for i in range(10):
        cache.set(f"k{i}", "v" * 1000)
    cache.get("k0")  # k0 becomes the most recently used
    timer.tick(5)
    total = cache.cached_bytes
    freed = cache.evict_fraction(0.35, trim=False)
    assert isinstance(freed, Freed)
    # "expiring" (expired) first, then k1, k2, k3 in LRU order, stopping once 35% is freed.
    assert "expiring" not in cache
    gone = [k for k in (f"k{i}" for i in range(10)) if k not in cache]
    assert gone == ["k1", "k2", "k3"]
    assert freed.entries == 4
    assert freed.bytes_accounted == total - cache.cached_bytes
    assert 0.35 * total <= freed.bytes_accounted < 0.35 * total + entry_size("k1", "v" * 1000)
    evictions = cache.stats()["evictions"]
    assert evictions["ttl"] == 1 and evictions["pressure"] == 3
    audit(cache)


def test_evict_fraction_edges() -> None:
    cache = make_cache(max_bytes="1MB")
    for i in range(10):
        cache.set(f"k{i}", "v" * 100)
    nothing = cache.evict_fraction(0)
    assert (nothing.entries, nothing.bytes_accounted, nothing.trimmed) == (0, 0, False)
    half = cache.evict_fraction("50%", cause="manual", trim=False)
    assert half.entries == 5
    assert cache.stats()["evictions"]["manual"] == 5
    everything = cache.evict_fraction(1.0)
    assert everything.entries == 5 and len(cache) == 0
    assert cache.evict_fraction(0.75).entries == 0  # an empty cache
    with pytest.raises(SizeError):
        cache.evict_fraction(2)
    with pytest.raises(UsageError):
        cache.evict_fraction(0.5, cause="capacity")


def test_freed_report() -> None:
    freed = Freed(3, 3000, 10_000_000, 9_000_000, True, 0.001, 0.002)
    assert freed.rss_drop == 1_000_000
    assert Freed(3, 3000, 9_000_000, 10_000_000, True, 0, 0).rss_drop == 0
    assert Freed(3, 3000, None, 10, False, 0, 0).rss_drop == 0
    report = freed.as_dict()
    assert report["bytes"] == 3000 and report["rss_drop"] == 1_000_000
    assert json.loads(json.dumps(report)) == report


def test_stats_counts_every_cause() -> None:
    timer = FakeClock()
    value = "v" * 1000
    cache = make_cache(max_bytes=3 * entry_size("k0", value), ttl=10, timer=timer)
    for i in range(4):  # one capacity eviction
        cache.set(f"k{i}", value)
    cache.get("k3")
    cache.get("k3")
    cache.get("k0")  # a miss: k0 was evicted
    cache.delete("k1")  # manual
    cache.set("short", "s", ttl=1)
    timer.tick(1)  # ttl
    cache.evict_fraction(0.5)  # pressure
    stats = cache.stats()
    assert json.loads(json.dumps(stats)) == stats
    assert stats["evictions"] == {"capacity": 1, "ttl": 1, "pressure": 1, "manual": 1}
    assert stats["evicted_bytes"]["capacity"] == entry_size("k0", value)
    assert (stats["hits"], stats["misses"]) == (2, 1)
    assert stats["hit_ratio"] == pytest.approx(2 / 3)
    assert stats["entries"] == len(cache) == 1
    assert stats["bytes"] == cache.cached_bytes
    assert stats["last_pressure_eviction"]["entries"] == 2  # the expired one, then k2
    [biggest] = stats["biggest"]
    assert biggest == {"key": "k3", "bytes": entry_size("k3", value), "expires_in_s": 9.0}


def test_stats_biggest_entries_and_long_keys() -> None:
    cache = make_cache(max_bytes="1MB")
    for i in range(1, 10):
        cache.set(f"k{i}", "v" * (i * 100))
    cache.set("p" * 500, "x")
    stats = cache.stats()
    assert [b["key"] for b in stats["biggest"]] == ["k9", "k8", "k7", "k6", "k5"]
    assert make_cache().stats()["hit_ratio"] == 0.0
    cache.invalidate(prefix="k")
    [only] = cache.stats()["biggest"]
    assert len(only["key"]) == 80 and only["key"].endswith("...")
    assert "1 entries" in repr(cache) and "detached" in repr(cache)


# --- memoize ------------------------------------------------------------------------------


def test_memoize() -> None:
    cache = make_cache(max_bytes="1MB")
    calls: list[tuple[Any, ...]] = []

    @cache.memoize
    def build_prompt(task: str, *, style: str = "short", lang: str = "en") -> str:
        calls.append((task, style, lang))
        return f"{task}/{style}/{lang}"

    assert build_prompt("fix", style="long", lang="fr") == "fix/long/fr"
    assert build_prompt("fix", lang="fr", style="long") == "fix/long/fr"
    assert build_prompt("fix") == "fix/short/en"
    assert len(calls) == 2
    assert build_prompt.__name__ == "build_prompt"
    assert cache.invalidate(f"{__name__}.test_memoize.<locals>.build_prompt") == 2
    build_prompt("fix")
    assert len(calls) == 3


def test_memoize_with_key_prefix_and_ttl() -> None:
    timer = FakeClock()
    cache = make_cache(max_bytes="1MB", ttl=100, timer=timer)
    calls = 0

    @cache.memoize(key=lambda messages: tuple(messages), prefix="chat", ttl=5)
    def render(messages: list[str]) -> str:
        nonlocal calls
        calls += 1
        return "\n".join(messages)

    assert render(["a", "b"]) == "a\nb"
    assert render(["a", "b"]) == "a\nb"
    assert calls == 1
    timer.tick(5)
    render(["a", "b"])
    assert calls == 2
    assert cache.invalidate("chat") == 1


def test_memoize_returns_too_large_values_uncached() -> None:
    cache = make_cache(max_bytes=1000)
    calls = 0

    @cache.memoize
    def huge() -> str:
        nonlocal calls
        calls += 1
        return "x" * 5000

    assert huge() == "x" * 5000
    assert huge() == "x" * 5000
    assert calls == 2 and len(cache) == 0


def test_memoize_unhashable_arguments_say_what_to_do() -> None:
    cache = make_cache()

    @cache.memoize
    def render(messages: list[str]) -> str:
        return "".join(messages)

    with pytest.raises(TypeError, match="pass key="):
        render(["a"])


# --- coordinator attachment ---------------------------------------------------------------


class FakeClient:
    """Stands in for pmrun.client: records registrations and can refuse them."""

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.registered: list[dict[str, Any]] = []
        self.closed = 0

    def register_cleanup(
        self,
        name: str,
        fn: Callable[[float], object],
        *,
        stats: Callable[[], dict[str, Any]] | None = None,
        socket: str | None = None,
    ) -> Any:
        if self.error is not None:
            raise self.error
        self.registered.append({"name": name, "fn": fn, "stats": stats, "socket": socket})
        client = self

        class Handle:
            def close(self) -> None:
                client.closed += 1

        return Handle()


@pytest.fixture
def fake_client(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeClient]:
    client = FakeClient()
    module = types.ModuleType("pmrun.client")
    module.register_cleanup = client.register_cleanup  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "pmrun.client", module)
    yield client


def test_attach_registers_once_and_evicts_on_request(fake_client: FakeClient) -> None:
    cache = make_cache(max_bytes="1MB", pressure_fraction=0.5)
    for i in range(10):
        cache.set(f"k{i}", "v" * 1000)
    cache.attach(socket="/tmp/x.sock")
    cache.attach()
    assert cache.attached and len(fake_client.registered) == 1
    registration = fake_client.registered[0]
    assert (registration["name"], registration["socket"]) == ("prompt-cache", "/tmp/x.sock")
    assert registration["stats"]()["entries"] == 10

    report = registration["fn"](0.75)
    assert isinstance(report, dict) and report["entries"] == 8
    assert report["bytes"] >= 0.75 * 10 * entry_size("k0", "v" * 1000)
    assert "rss_drop" in report
    assert registration["fn"](None)["entries"] == 1  # pressure_fraction of what is left
    assert cache.stats()["evictions"]["pressure"] == 9

    cache.detach()
    cache.detach()
    assert not cache.attached and fake_client.closed == 1
    cache.attach()
    assert len(fake_client.registered) == 2


def test_auto_attach_when_the_launcher_set_a_socket(
    fake_client: FakeClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMRUN_SOCKET", "/tmp/coordinator.sock")
    cache = SharedPromptCache("1MB", 60, 0.75, max_entries=10)
    assert cache.attached
    assert not SharedPromptCache("1MB", 60, 0.75, max_entries=10, auto_attach=False).attached
    monkeypatch.delenv("PMRUN_SOCKET")
    assert not SharedPromptCache("1MB", 60, 0.75, max_entries=10).attached


@pytest.mark.parametrize("failure", ["no coordinator", "no client module"])
def test_auto_attach_failure_leaves_a_working_cache(
    failure: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PMRUN_SOCKET", "/tmp/nobody-listens.sock")
    if failure == "no client module":
        monkeypatch.setitem(sys.modules, "pmrun.client", None)  # makes the import fail
    else:
        module = types.ModuleType("pmrun.client")
        refuse = FakeClient(CoordinatorUnavailable("no coordinator")).register_cleanup
        module.register_cleanup = refuse  # type: ignore[attr-defined]
        monkeypatch.setitem(sys.modules, "pmrun.client", module)
    cache = SharedPromptCache("1MB", 60, 0.75, max_entries=10)
    assert not cache.attached
    cache.set("k", "v")
    assert cache.get("k") == "v"
    with pytest.raises((CoordinatorUnavailable, ImportError)):
        cache.attach()  # asked for explicitly, the failure is reported


def test_a_dropped_cache_is_detached(fake_client: FakeClient) -> None:
    cache = make_cache()
    cache.attach()
    evict = fake_client.registered[0]["fn"]
    del cache
    gc.collect()
    assert fake_client.closed == 1
    assert evict(0.75) == {"bytes": 0, "rss_drop": 0}


# --- property tests: the caps hold under any sequence of operations -------------------------

KEYS = [f"k{i}" for i in range(8)] + [("memo", i) for i in range(2)]
BUDGET = 2000
MAX_ENTRIES = 5
SIZES = st.one_of(st.integers(0, 60), st.integers(0, 900))


class ReferenceCache:
    """The cache's documented behaviour, written the slow and obvious way."""

    def __init__(self, timer: FakeClock, ttl: float) -> None:
        self.timer = timer
        self.ttl = ttl
        self.entries: OrderedDict[Any, tuple[Any, int, float]] = OrderedDict()

    @property
    def bytes(self) -> int:
        return sum(size for _, size, _ in self.entries.values())

    def sweep(self) -> None:
        for k, (_, _, expires) in list(self.entries.items()):
            if expires <= self.timer():
                del self.entries[k]

    def set(self, key: Any, value: Any, ttl: float | None) -> bool:
        size = entry_size(key, value)
        self.entries.pop(key, None)
        if size > BUDGET:
            return False
        self.sweep()
        while self.entries and (self.bytes + size > BUDGET or len(self.entries) >= MAX_ENTRIES):
            self.entries.popitem(last=False)
        self.entries[key] = (value, size, self.timer() + (self.ttl if ttl is None else ttl))
        return True

    def get(self, key: Any) -> Any:
        if key not in self.entries:
            return None
        value, _, expires = self.entries[key]
        if self.timer() < expires:
            self.entries.move_to_end(key)
        else:
            value = None
        self.sweep()
        return value

    def evict(self, fraction: float) -> None:
        target = fraction * self.bytes
        before = self.bytes
        self.sweep()
        while self.entries and before - self.bytes < target:
            self.entries.popitem(last=False)

    def invalidate(self, prefix: str) -> None:
        self.sweep()
        for k in [
            k for k in self.entries if (k[0] if isinstance(k, tuple) else k).startswith(prefix)
        ]:
            del self.entries[k]

    def invalidate_pattern(self, pattern: str) -> None:
        self.sweep()
        for k in list(self.entries):
            name = k[0] if isinstance(k, tuple) else k
            if name == pattern or fnmatch.fnmatchcase(name, pattern):
                del self.entries[k]


class CacheMachine(RuleBasedStateMachine):
    """Random operations on a small cache, checked against :class:`ReferenceCache`."""

    def __init__(self) -> None:
        super().__init__()
        self.timer = FakeClock()
        self.cache = make_cache(max_bytes=BUDGET, ttl=10, max_entries=MAX_ENTRIES, timer=self.timer)
        self.model = ReferenceCache(self.timer, ttl=10)

    @rule(key=st.sampled_from(KEYS), size=SIZES, ttl=st.none() | st.floats(0.5, 20))
    def set(self, key: Any, size: int, ttl: float | None) -> None:
        value = f"{key}:" + "x" * size
        if self.model.set(key, value, ttl):
            self.cache.set(key, value, ttl=ttl)
            assert self.cache.get(key) == value  # just stored, so it is there
            self.model.get(key)
        else:
            with pytest.raises(CacheValueTooLarge):
                self.cache.set(key, value, ttl=ttl)

    @rule(key=st.sampled_from(KEYS))
    def get(self, key: Any) -> None:
        assert self.cache.get(key) == self.model.get(key)

    @rule(key=st.sampled_from(KEYS))
    def delete(self, key: Any) -> None:
        self.cache.delete(key)
        self.model.entries.pop(key, None)

    @rule(seconds=st.floats(0, 15))
    def tick(self, seconds: float) -> None:
        self.timer.tick(seconds)

    @rule(fraction=st.floats(0, 1))
    def evict(self, fraction: float) -> None:
        before = self.cache.cached_bytes
        freed = self.cache.evict_fraction(fraction, trim=False)
        self.model.evict(fraction)
        assert freed.bytes_accounted >= fraction * before
        assert self.cache.cached_bytes == before - freed.bytes_accounted

    @rule(prefix=st.sampled_from(["k", "k1", "memo", "zz"]))
    def invalidate(self, prefix: str) -> None:
        self.cache.invalidate(prefix=prefix)
        self.model.invalidate(prefix)

    @rule(pattern=st.sampled_from(["k1", "k*", "k?", "k[12]", "memo*", "*"]))
    def invalidate_pattern(self, pattern: str) -> None:
        self.cache.invalidate(pattern)
        self.model.invalidate_pattern(pattern)

    @rule()
    def clear(self) -> None:
        self.cache.clear()
        self.model.entries.clear()

    @invariant()
    def same_entries_in_the_same_order(self) -> None:
        audit(self.cache)
        actual = [(k, e[0], e[1], e[2]) for k, e in self.cache._data.items()]
        expected = [(k, *e) for k, e in self.model.entries.items()]
        assert actual == expected
        assert self.cache.cached_bytes == self.model.bytes <= BUDGET
        assert len(self.cache._data) == len(self.model.entries) <= MAX_ENTRIES

    @rule()
    def stats(self) -> None:
        stats = self.cache.stats()  # which sweeps expired entries, as len() would
        self.model.sweep()
        assert stats["bytes"] == self.model.bytes
        assert stats["entries"] == len(self.cache) == len(self.model.entries)


TestCacheMachine = CacheMachine.TestCase
TestCacheMachine.settings = settings(
    max_examples=100, stateful_step_count=40, deadline=None, suppress_health_check=list(HealthCheck)
)


OPS = st.lists(
    st.tuples(
        st.sampled_from(["set", "set", "get", "delete", "evict", "invalidate", "tick"]),
        st.integers(0, 15),  # key
        st.one_of(st.integers(0, 100), st.integers(0, 3000)),  # value size
    ),
    min_size=30,
    max_size=200,
)


@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(OPS, min_size=4, max_size=4))
def test_caps_hold_from_several_threads_at_once(programs: list[list[tuple[str, int, int]]]) -> None:
    timer_lock = threading.Lock()
    clock = [0.0]

    def timer() -> float:
        with timer_lock:
            return clock[0]

    cache = make_cache(max_bytes=10_000, ttl=5, max_entries=8, timer=timer)
    start = threading.Barrier(len(programs) + 1)
    done = threading.Event()
    failures: list[BaseException] = []

    def run(program: list[tuple[str, int, int]]) -> None:
        start.wait()
        for op, k, size in program:
            key = f"k{k}"
            if op == "set":
                try:
                    cache.set(key, key + "v" * size)
                except CacheValueTooLarge:
                    pass
            elif op == "get":
                value = cache.get(key)
                assert value is None or value.rstrip("v") == key
            elif op == "delete":
                cache.delete(key)
            elif op == "evict":
                cache.evict_fraction(size / 3000, trim=False)
            elif op == "invalidate":
                cache.invalidate(f"k{k % 3}")
            else:
                with timer_lock:
                    clock[0] += size / 1000

    def watch() -> None:
        start.wait()
        while not done.is_set():
            # Read without the lock, as a diagnostics thread might: the caps hold at every
            # instant, not only between calls.
            assert cache._bytes <= 10_000
            assert len(cache._data) <= 8

    threads = [threading.Thread(target=_collect, args=(run, p, failures)) for p in programs]
    watcher = threading.Thread(target=_collect, args=(lambda _: watch(), None, failures))
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-5)  # switch threads often, so that races show
    try:
        for t in [*threads, watcher]:
            t.start()
        for t in threads:
            t.join(timeout=30)
        done.set()
        watcher.join(timeout=30)
    finally:
        sys.setswitchinterval(interval)
    if failures:
        raise failures[0]
    audit(cache)
    stats = cache.stats()
    assert stats["bytes"] <= 10_000 and stats["entries"] <= 8


def _collect(fn: Callable[[Any], None], arg: Any, failures: list[BaseException]) -> None:
    try:
        fn(arg)
    except BaseException as e:  # re-raised from the main thread
        failures.append(e)


# --- fork ---------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_a_forked_child_is_not_stuck_on_a_lock_held_by_another_thread(
    fake_client: FakeClient,
) -> None:
    cache = make_cache()
    cache.attach()
    holding, release = threading.Event(), threading.Event()

    def hold_lock() -> None:
        with cache._lock:
            holding.set()
            release.wait(10)

    holder = threading.Thread(target=hold_lock)
    holder.start()
    holding.wait(10)
    pid = os.fork()
    if pid == 0:  # the child: its copy of the lock must be usable, and detached
        try:
            cache.set("k", "v")
            ok = cache.get("k") == "v" and not cache.attached
            os._exit(0 if ok else 1)
        finally:
            os._exit(2)
    try:
        release.set()
        holder.join()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                assert os.waitstatus_to_exitcode(status) == 0
                break
            time.sleep(0.01)
        else:
            pytest.fail("the forked child hung on the cache's lock")
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert cache.attached  # the parent's registration is untouched
    assert fake_client.closed == 0


# --- memory goes back to the OS (a real child process) --------------------------------------

CHILD = r"""
import json, os, random, sys
from pmrun.cache import SharedPromptCache

cache = SharedPromptCache("50MB", 300, 0.75, max_entries=100_000, auto_attach=False)
rng = random.Random(7)
i = 0
while cache.cached_bytes < 45 << 20:
    size = rng.randint(1024, 50 * 1024)
    cache.set(f"prompt:{i:08d}", os.urandom(size // 2).hex())
    i += 1
print(json.dumps({"bytes": cache.cached_bytes, "entries": len(cache)}), flush=True)
sys.stdin.readline()
freed = cache.evict_fraction(0.75)
print(json.dumps(freed.as_dict()), flush=True)
sys.stdin.readline()
"""


@pytest.fixture
def child_process() -> Iterator[Callable[[str], subprocess.Popen[str]]]:
    """Start Python children; at teardown each is killed if needed and verified gone."""
    started: list[subprocess.Popen[str]] = []

    def start(code: str) -> subprocess.Popen[str]:
        env = {k: v for k, v in os.environ.items() if k != "PMRUN_SOCKET"}
        proc = subprocess.Popen(
            [sys.executable, "-c", code],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=10)
        assert not os.path.exists(f"/proc/{proc.pid}"), f"child {proc.pid} still exists"


def _read_json(proc: subprocess.Popen[str]) -> dict[str, Any]:
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line:
        proc.wait(timeout=10)
        assert proc.stderr is not None
        pytest.fail(f"child exited with {proc.returncode}: {proc.stderr.read()[-2000:]}")
    result: dict[str, Any] = json.loads(line)
    return result


def test_pressure_eviction_gives_memory_back_to_the_os(
    child_process: Callable[[str], subprocess.Popen[str]],
) -> None:
    proc = child_process(CHILD)
    assert proc.stdin is not None
    filled = _read_json(proc)
    rss_full = _procfs.statm(proc.pid)[1]
    proc.stdin.write("evict\n")
    proc.stdin.flush()
    freed = _read_json(proc)
    rss_after = _procfs.statm(proc.pid)[1]
    proc.stdin.write("exit\n")
    proc.stdin.flush()
    assert proc.wait(timeout=10) == 0

    assert freed["bytes"] >= 0.75 * filled["bytes"]
    if not freed["trimmed"]:
        pytest.skip("this C library has no malloc_trim")
    # The RSS seen from outside fell by at least half the cache, and the child's own
    # measurement agrees with ours within a few pages.
    assert rss_full - rss_after >= filled["bytes"] / 2
    assert freed["rss_drop"] >= filled["bytes"] / 2
