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
