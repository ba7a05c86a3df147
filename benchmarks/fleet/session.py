"""The orchestrator: the parent process of a scripted agent session. It must survive.

It holds state (``orchestrator_state_mib``, touched every second, as a framework's
conversation history and tool results are), spawns the plan's agents at their times, and
records for each how it ended. It is started by ``run.py`` inside the simulated machine;
everything it starts inherits the machine's cgroup. Results are written to ``--out``
after every event (atomically), so they survive the orchestrator being killed.

How agents are started depends on the arm:

- ``bare`` / ``earlyoom``: ``subprocess.Popen(cmd)``; Python agents cache in a dict;
- ``percg``: each agent in its own memory cgroup under the machine with a hard limit
  (what ``systemd-run -p MemoryMax=`` gives), nothing else;
- ``pmrun``: ``pmrun --socket S --max-rss L --warn-rss W --report F -- cmd``; Python
  agents cache in ``SharedPromptCache``, which attaches to the coordinator.

Usage (run.py does this): ``python session.py --plan plan.json --arm bare --out r.json --dir D``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from typing import Any

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import simcg  # noqa: E402
from plan import AgentSpec, Plan, agent_argv  # noqa: E402

MIB = 1 << 20
PAGE = 4096
POLL_S = 0.05


class Running:
    """One agent the orchestrator started."""

    def __init__(
        self, spec: AgentSpec, popen: subprocess.Popen[bytes], group: str | None, report: str | None
    ) -> None:
        self.spec = spec
        self.popen = popen
        self.group = group  # its own cgroup (percg arm)
        self.report = report  # pmrun's exit report file (pmrun arm)
        self.started = time.monotonic()


class Orchestrator:
    def __init__(
        self, plan: Plan, arm: str, out: str, run_dir: str, opts: argparse.Namespace
    ) -> None:
        self.plan, self.arm, self.out, self.dir, self.opts = plan, arm, out, run_dir, opts
        self.records: list[dict[str, Any]] = []
        self.t0 = time.monotonic()
        self.state = bytearray(b"\x01") * int(plan.orchestrator_state_mib * MIB)
        self.touched = 0

    def touch(self) -> None:
        self.state[::PAGE] = b"\x02" * len(range(0, len(self.state), PAGE))
        self.touched += 1

    def save(self, done: bool = False) -> None:
        doc = {
            "arm": self.arm,
            "pid": os.getpid(),
            "t0_monotonic": self.t0,
            "done": done,
            "state_touches": self.touched,
            "agents": self.records,
        }
        tmp = self.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f, indent=1)
        os.replace(tmp, self.out)

    def command(self, spec: AgentSpec) -> tuple[list[str], str | None, str | None]:
        """(argv, own cgroup or None, report path or None) for ``spec`` in this arm."""
        cache_mode = "shared" if self.arm == "pmrun" else "dict"
        argv = agent_argv(spec, sys.executable, os.path.join(HERE, "agents"), cache_mode)
        if self.arm == "percg":
            group = os.path.join(self.opts.machine_cgroup, f"agent-{spec.name}")
            simcg.make_group(group, self.opts.cgroup_version, self.plan.agent_limit_bytes)
            return argv, group, None
        if self.arm == "pmrun":
            report = os.path.join(self.dir, f"{spec.name}.report.json")
            pm = [
                self.opts.pmrun,
                "--socket",
                self.opts.socket,
                "--max-rss",
                str(self.plan.agent_limit_bytes),
                "--warn-rss",
                str(self.plan.agent_warn_bytes),
                "--grace",
                str(self.opts.grace),
                "--backend",
                self.opts.backend,
                "--name",
                spec.name,
                "--report",
                report,
                "--quiet",
            ]
            if not spec.good:
                pm += ["--priority", "0"]
            return [*pm, "--", *argv], None, report
        return argv, None, None

    def spawn(self, spec: AgentSpec) -> Running:
        argv, group, report = self.command(spec)
        log = open(os.path.join(self.dir, f"{spec.name}.log"), "wb")
        preexec = (lambda: simcg.join(group)) if group else None  # noqa: E731
        try:
            popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, preexec_fn=preexec
            )
        finally:
            log.close()
        r = Running(spec, popen, group, report)
        self.records.append(
            {
                "name": spec.name,
                "good": spec.good,
                "shape": spec.shape,
                "lang": spec.lang,
                "pid": popen.pid,
                "start": r.started - self.t0,
                "end": None,
                "returncode": None,
            }
        )
        self.save()
        return r

    def finish(self, r: Running, timed_out: bool = False) -> None:
        rec = next(x for x in self.records if x["pid"] == r.popen.pid and x["name"] == r.spec.name)
        rec["end"] = time.monotonic() - self.t0
        rec["returncode"] = r.popen.returncode
        rec["timed_out"] = timed_out
        if r.group:
            rec["group_oom_kills"] = simcg.oom_kills(r.group, self.opts.cgroup_version)
            try:
                simcg.kill_tree(r.group)  # helpers it left behind
                simcg.remove_tree(r.group)
            except (OSError, simcg.SimMachineError) as e:
                rec["group_cleanup_error"] = str(e)
        if r.report:
            try:
                with open(r.report) as f:
                    rep = json.load(f)
                rec["report"] = {
                    k: rep.get(k)
                    for k in (
                        "reason",
                        "message",
                        "exit_status",
                        "signal",
                        "pid",
                        "peak_rss_bytes",
                        "kernel_oom_kills",
                        "backend",
                        "stop",
                    )
                }
            except (OSError, ValueError) as e:
                rec["report"] = {"error": f"no report: {e}"}
        self.save()

    def run(self) -> int:
        pending = sorted(self.plan.agents, key=lambda a: a.start_s)
        running: list[Running] = []
        next_touch = 0.0
        deadline = self.t0 + self.plan.deadline_s
        while pending or running:
            now = time.monotonic()
            while pending and now - self.t0 >= pending[0].start_s:
                running.append(self.spawn(pending.pop(0)))
            for r in list(running):
                if r.popen.poll() is not None:
                    running.remove(r)
                    self.finish(r)
            if now >= next_touch:
                self.touch()
                next_touch = now + 1.0
            if now > deadline:
                for r in running:
                    _kill(r)
                for r in running:
                    r.popen.wait()
                    self.finish(r, timed_out=True)
                running = []
                pending = []
            time.sleep(POLL_S)
        self.save(done=True)
        return 0


def _kill(r: Running) -> None:
    if r.group:
        try:
            simcg.kill_tree(r.group)
        except (OSError, simcg.SimMachineError):
            pass
    try:
        r.popen.send_signal(signal.SIGKILL)
    except ProcessLookupError:
        pass


def main() -> int:
    p = argparse.ArgumentParser(description="the fleet benchmark's orchestrator")
    p.add_argument("--plan", required=True)
    p.add_argument("--arm", choices=("bare", "percg", "pmrun", "earlyoom"), required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--dir", required=True)
    p.add_argument("--machine-cgroup", default="")
    p.add_argument("--cgroup-version", default="v1")
    p.add_argument("--pmrun", default="pmrun")
    p.add_argument("--socket", default="")
    p.add_argument("--backend", default="auto")
    p.add_argument("--grace", type=float, default=2.0)
    a = p.parse_args()
    with open(a.plan) as f:
        plan = Plan.from_dict(json.load(f))
    return Orchestrator(plan, a.arm, a.out, a.dir, a).run()


if __name__ == "__main__":
    sys.exit(main())
