"""The framework's own code paths, run by a venv holding claude-multiagent-pm 1.4.7 and pmrun.

``python claude_pm_scenarios.py SCENARIO SOCKET [FRAMEWORK_DIR]`` calls
``pmrun.integrations.claude_pm.install()`` and then only the framework's code, as its users
would; it prints one JSON line per result (and ``HANDLER <name> <severity>`` each time a
framework cleanup handler is called), and for ``handlers`` keeps running until its stdin
closes. tests/test_claude_pm.py drives it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
from pathlib import Path
from typing import Any

logging.disable(logging.CRITICAL)  # the framework logs each call at INFO on stderr


def say(**fields: Any) -> None:
    print(json.dumps(fields, default=str), flush=True)


def wait_for_service(socket: str, name: str, timeout_s: float = 60) -> bool:
    """Whether the coordinator lists this process's service ``name`` within the deadline."""
    import os
    import time

    from pmrun.coordinator import query

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = query.status(socket)
        mine = [s for s in status["services"] if s["pid"] == os.getpid() and s["name"] == name]
        if mine:
            return True
        time.sleep(0.05)
    return False


def cache(socket: str) -> None:
    # Imported before install(): the names it copied from the framework's module at import
    # time must be replaced too (the contract run installs first, the import-hook path).
    from claude_pm.agents import base_agent_loader

    from pmrun.integrations import claude_pm

    claude_pm.install(socket=socket)
    from claude_pm.services import SharedPromptCache, get_shared_cache
    from claude_pm.services.cache_service_integration import initialize_cache_service_standalone

    config = {"max_size": 300, "max_memory_mb": 20, "default_ttl": 900}
    shared = asyncio.run(initialize_cache_service_standalone(config))
    text = base_agent_loader.load_base_agent_instructions()  # reads base_agent.md, caches it
    again = base_agent_loader.load_base_agent_instructions()  # from the cache
    metrics = shared.get_metrics()
    keys = [e["key"] for e in shared.get_cache_info()["entries"]]
    base_agent_loader.clear_base_agent_cache()  # its exact-key invalidations
    after_clear = shared.get_metrics()["entry_count"]
    seen = wait_for_service(socket, "prompt-cache")
    running, attached = shared.running, shared.attached  # before its service manager stops it

    async def managed() -> dict[str, Any]:  # the framework's service manager runs the cache
        from claude_pm.core.service_manager import ServiceManager
        from claude_pm.services.cache_service_integration import register_cache_service

        manager = ServiceManager()
        wrapper = register_cache_service(manager, config)
        await manager.start_all()
        health = await wrapper.health_check()
        instance = wrapper.get_cache_instance()
        await manager.stop_all()
        return {"same": instance is shared, "health": health.status, "checks": health.checks}

    say(
        seen_by_coordinator=seen,
        managed=asyncio.run(managed()),
        cls=f"{SharedPromptCache.__module__}.{SharedPromptCache.__qualname__}",
        loader_cls=base_agent_loader.SharedPromptCache.__module__,
        same=shared is get_shared_cache() is SharedPromptCache.get_instance(),
        running=running,
        attached=attached,
        max_size=shared.max_size,
        max_memory_mb=shared.max_memory_mb,
        loaded=bool(text) and text == again,
        hits=metrics["hits"],
        sets=metrics["sets"],
        keys=keys,
        after_clear=after_clear,
    )


def children_after(timeout_s: float) -> list[str]:
    """This process's descendants still alive after ``timeout_s`` (waiting for them to go)."""
    import time

    import psutil

    deadline = time.monotonic() + timeout_s
    while True:
        left = [
            " ".join(p.cmdline())
            for p in psutil.Process().children(recursive=True)
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE
        ]
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def spawn(socket: str, framework: str) -> None:
    from pmrun.integrations import claude_pm

    claude_pm.install(socket=socket, max_rss="64M", warn_rss="32M", grace=1)
    from claude_pm.services.subprocess_runner import SubprocessRunner, run_agent_subprocess_async

    runner = SubprocessRunner(Path(framework))
    task = {"task_description": "say hello"}
    leak = {"LEAK_MB": "400"}  # the agent's own sitecustomize (tests/test_claude_pm.py) leaks

    rc, out, err = runner.run_agent_subprocess("engineer", task)
    say(
        kind="sync",
        rc=rc,
        ok="Agent task executed successfully" in out,
        report=claude_pm.last_report(),
    )
    rc, out, err = runner.run_agent_subprocess("engineer", task, 120, leak)
    say(kind="sync-leak", rc=rc, stderr=err[-2000:], report=claude_pm.last_report("engineer"))

    async def both() -> list[tuple[int, str, str]]:
        return list(
            await asyncio.gather(
                run_agent_subprocess_async("qa", task, 120, Path(framework)),
                runner.run_agent_subprocess_async("engineer", task, 120, leak),
            )
        )

    (rc, out, _), (rc_leak, _, err_leak) = asyncio.run(both())
    say(
        kind="async",
        rc=rc,
        ok="Agent task executed successfully" in out,
        report=claude_pm.last_report("qa"),
    )
    say(
        kind="async-leak",
        rc=rc_leak,
        stderr=err_leak[-2000:],
        report=claude_pm.last_report("engineer"),
    )
    # The framework's own timeout kills the launcher (SIGKILL when sync, SIGTERM then
    # SIGKILL when async): the agent must not outlive it.
    hold = {"LEAK_MB": "8"}  # holds 8 MB and sleeps, under the limit
    timed_out = [
        runner.run_agent_subprocess("engineer", task, 3, hold),
        asyncio.run(runner.run_agent_subprocess_async("engineer", task, 3, hold)),
    ]
    say(kind="timeout", rcs=[r[0] for r in timed_out], left=children_after(30))


def handlers(socket: str) -> None:
    from pmrun.integrations import claude_pm

    claude_pm.install(socket=socket)
    from claude_pm.services.memory_diagnostics import MemoryDiagnosticsService
    from claude_pm.services.memory_pressure_coordinator import (
        get_memory_pressure_coordinator,
        register_service_cleanup,
    )
    from claude_pm.services.shared_prompt_cache import SharedPromptCache

    async def recorder(severity: str) -> dict[str, Any]:
        print(f"HANDLER recorder {severity}", flush=True)
        return {"memory_freed_mb": 1.5}

    async def main() -> None:
        cache = SharedPromptCache.get_instance({"max_memory_mb": 20})
        for i in range(200):
            cache.set(f"agent_profile:a{i}:system", f"profile {i} " * 500)
        diagnostics = MemoryDiagnosticsService({"enable_profiling": False})
        await diagnostics.start()  # registers its own handler with the framework's coordinator
        await register_service_cleanup("recorder", recorder)
        say(
            kind="ready",
            handlers=sorted(get_memory_pressure_coordinator()._cleanup_handlers),
            entries=cache.get_metrics()["entry_count"],
        )
        # Blocks the framework's event loop, as a synchronous agent spawn does for as long
        # as the agent runs: the handlers must answer pmrun all the same.
        while sys.stdin.readline():
            say(kind="entries", entries=cache.get_metrics()["entry_count"])
        await diagnostics.stop()

    asyncio.run(main())


if __name__ == "__main__":
    scenario, *args = sys.argv[1:]
    {"cache": cache, "spawn": spawn, "handlers": handlers}[scenario](*args)
