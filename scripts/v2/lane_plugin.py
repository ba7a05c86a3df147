"""pytest plugin for the v2 lane (scripts/test-v2 loads it with ``-p lane_plugin``).

Tests parametrized over the ``backend`` fixture run once per backend; in the guest only
their cgroup runs are kept. The sampling backend's runs do the same there as on the
host, where the main suite runs them, and the guest is ~10x slower (TCG).
"""

from __future__ import annotations

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        (drop if params.get("backend") == "sampling" else keep).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
