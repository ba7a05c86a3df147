"""The scripted session: which agents start when, with what memory shape. Pure and seeded.

Sizes are chosen for a machine of ``machine_bytes`` and scale with it, so that on the bare
arm the well-behaved agents alone (their caches unbounded) come to more than the machine,
while with capped caches they fit with room for a runaway up to its per-agent limit.
The same seed gives the same session byte for byte.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from typing import Any

GIB = 1 << 30
MIB = 1 << 20


@dataclass(frozen=True)
class AgentSpec:
    """One agent of the session."""

    name: str  # unique in the session, e.g. "07-py-cache"
    lang: str  # "py" or "node"
    shape: str  # steady, cache, spiky, fork, runaway
    start_s: float  # seconds after the orchestrator starts
    good: bool  # well-behaved: does a fixed amount of work and exits 0
    args: dict[str, float] = field(default_factory=dict)  # shape parameters (MiB, s)


@dataclass(frozen=True)
class Plan:
    seed: int
    machine_bytes: int
    orchestrator_state_mib: float  # what the orchestrator holds and touches
    agent_limit_bytes: int  # per-agent hard limit (arms 2 and 3)
    agent_warn_bytes: int  # pmrun --warn-rss
    pool_bytes: int  # coordinator --pool (arm 3)
    deadline_s: float  # the orchestrator gives up on agents still running after this
    agents: tuple[AgentSpec, ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict[str, Any]) -> Plan:
        agents = tuple(AgentSpec(**a) for a in d["agents"])
        return Plan(**{**d, "agents": agents})


# The good agents' templates for a 3 GiB machine: (lang, shape, args). Sizes and work are
# jittered by the seed. The cache agents are the long-lived ones (a coding agent working
# through a task, building a prompt per step): their unbounded dicts reach ~750-900 MiB
# each; under the 50 MB SharedPromptCache they stay under ~100 MiB.
_CACHE_3G: tuple[tuple[str, str, dict[str, float]], ...] = tuple(
    ("py", "cache", {"prompts": n, "prompt_kib": 256, "pace_ms": 6})
    for n in (4200, 4000, 3800, 3600)
)
_OTHERS_3G: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("py", "steady", {"hold": 300, "work": 14}),
    ("node", "steady", {"hold": 250, "work": 14}),
    ("py", "spiky", {"hold": 80, "burst": 300, "burst_s": 1.0, "period": 3.0, "work": 14}),
    ("py", "fork", {"hold": 40, "helpers": 3, "helper_mib": 120, "work": 12}),
    ("node", "spiky", {"hold": 80, "burst": 250, "burst_s": 1.0, "period": 3.0, "work": 14}),
    ("py", "steady", {"hold": 350, "work": 12}),
    ("py", "fork", {"hold": 40, "helpers": 2, "helper_mib": 150, "work": 12}),
    ("node", "steady", {"hold": 200, "work": 12}),
    ("py", "spiky", {"hold": 80, "burst": 300, "burst_s": 1.0, "period": 3.0, "work": 12}),
    ("py", "steady", {"hold": 250, "work": 10}),
)
_RUNAWAYS: tuple[tuple[str, dict[str, float]], ...] = (
    ("py", {"step": 30, "every_ms": 100}),
    ("node", {"step": 30, "every_ms": 100}),
)

# A quick session (tests, --quick): fewer agents, shorter work, same kinds of shapes.
_CACHE_QUICK: tuple[tuple[str, str, dict[str, float]], ...] = tuple(
    ("py", "cache", {"prompts": n, "prompt_kib": 256, "pace_ms": 3}) for n in (1500, 1400)
)
_OTHERS_QUICK: tuple[tuple[str, str, dict[str, float]], ...] = (
    ("py", "steady", {"hold": 300, "work": 6}),
    ("node", "spiky", {"hold": 80, "burst": 250, "burst_s": 0.6, "period": 1.5, "work": 6}),
    ("py", "fork", {"hold": 40, "helpers": 2, "helper_mib": 120, "work": 5}),
)

_SIZE_KEYS = ("hold", "burst", "helper_mib", "step")


def _jitter(args: dict[str, float], rng: random.Random, scale: float) -> dict[str, float]:
    out: dict[str, float] = {}
    for k, v in args.items():
        if k in _SIZE_KEYS:
            out[k] = round(v * scale * rng.uniform(0.85, 1.15), 1)
        elif k == "work":
            out[k] = round(v * rng.uniform(0.85, 1.15), 1)
        elif k == "prompts":
            # The cache's growth scales with the machine through the number of prompts.
            out[k] = int(v * scale * rng.uniform(0.9, 1.1))
        else:
            out[k] = v
    return out


def make_plan(seed: int, machine_bytes: int, quick: bool = False) -> Plan:
    """The session for ``seed`` on a machine of ``machine_bytes``."""
    rng = random.Random(seed)
    scale = machine_bytes / (3 * GIB)
    caches = list(_CACHE_QUICK if quick else _CACHE_3G)
    others = list(_OTHERS_QUICK if quick else _OTHERS_3G)
    rng.shuffle(others)
    spacing_s = 1.5 if quick else 4.5
    timed: list[tuple[float, str, str, dict[str, float]]] = []
    # Cache agents start early and run long; the others come and go all session.
    for i, (lang, shape, args) in enumerate(caches):
        at = (0.5 + i * 1.0) if quick else (1.5 + i * 4.0 + rng.uniform(-1.0, 1.0))
        timed.append((max(0.2, at), lang, shape, args))
    t = 0.3
    for lang, shape, args in others:
        timed.append((t, lang, shape, args))
        t += spacing_s * rng.uniform(0.7, 1.3)
    span = t
    timed.sort(key=lambda x: x[0])
    agents: list[AgentSpec] = []
    for i, (at, lang, shape, args) in enumerate(timed):
        jit = _jitter(args, rng, scale)
        if shape == "cache":
            jit["seed"] = seed * 100 + i
        agents.append(AgentSpec(f"{i:02d}-{lang}-{shape}", lang, shape, round(at, 2), True, jit))
    # Runaways start while the session is busy: ~45% and ~80% of the way in.
    runaways = _RUNAWAYS[:1] if quick else _RUNAWAYS
    for j, (lang, args) in enumerate(runaways):
        frac = (0.6,) if quick else (0.45, 0.8)
        at = span * frac[j] * rng.uniform(0.95, 1.05)
        ra: dict[str, float] = {
            k: (round(v * scale, 1) if k in _SIZE_KEYS else v) for k, v in args.items()
        }
        agents.append(AgentSpec(f"R{j}-{lang}-runaway", lang, "runaway", round(at, 2), False, ra))
    agents.sort(key=lambda a: a.start_s)
    limit = int(machine_bytes / 3)  # 1 GiB on a 3 GiB machine
    return Plan(
        seed=seed,
        machine_bytes=machine_bytes,
        orchestrator_state_mib=round(400 * scale, 1),
        agent_limit_bytes=limit,
        agent_warn_bytes=int(limit * 0.6),
        pool_bytes=int(machine_bytes * 0.75),
        deadline_s=(40.0 if quick else 150.0),
        agents=tuple(agents),
    )


def agent_argv(spec: AgentSpec, python: str, agents_dir: str, cache_mode: str) -> list[str]:
    """The command line of one agent (``cache_mode``: "dict" or "shared")."""
    a = spec.args
    if spec.lang == "node":
        if spec.shape == "steady":
            rest = [a["hold"], a["work"]]
        elif spec.shape == "spiky":
            rest = [a["hold"], a["work"], a["burst"], a["burst_s"], a["period"]]
        else:
            rest = [a["step"], a["every_ms"]]
        return ["node", f"{agents_dir}/node_agent.js", spec.shape, *map(str, rest)]
    argv = [python, f"{agents_dir}/py_agent.py", "--shape", spec.shape, "--name", spec.name]
    for k, v in a.items():
        argv += [f"--{k.replace('_', '-')}", str(v)]
    if spec.shape == "cache":
        argv += ["--cache", cache_mode]
    return argv
