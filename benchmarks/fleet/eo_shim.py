"""PID 1 of the earlyoom arm's private PID namespace: runs earlyoom beside the orchestrator.

earlyoom picks its victim among every process it sees in /proc. Run in a PID namespace of
its own (``unshare --pid --fork --mount-proc``) it sees only the session's processes, so
it can never kill anything else on the host. It skips PID 1, which is why PID 1 is this
shim (a few MiB) and not the orchestrator, which must stay a candidate like any process.

Usage: ``eo_shim.py STATUS_FILE EARLYOOM_LOG EARLYOOM_ARGS... -- ORCHESTRATOR_ARGV...``
Exits with the orchestrator's status (128+N for signal N) and writes it to STATUS_FILE.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys


def main() -> int:
    status_file, eo_log = sys.argv[1], sys.argv[2]
    rest = sys.argv[3:]
    split = rest.index("--")
    eo_args, orch_argv = rest[:split], rest[split + 1 :]
    with open(eo_log, "wb") as log:
        eo = subprocess.Popen(["earlyoom", *eo_args], stdout=log, stderr=subprocess.STDOUT)
    orch = subprocess.Popen(orch_argv)
    code: int | None = None
    while code is None:
        try:
            pid, status = os.wait()  # PID 1 reaps every orphan of the namespace
        except ChildProcessError:
            break
        if pid == orch.pid:
            code = os.waitstatus_to_exitcode(status)
        elif pid == eo.pid:
            eo.returncode = os.waitstatus_to_exitcode(status)
    if eo.returncode is None:
        eo.send_signal(signal.SIGTERM)
        eo.wait()
    code = 1 if code is None else code
    with open(status_file, "w") as f:
        f.write(str(code))
    return 128 - code if code < 0 else code


if __name__ == "__main__":
    sys.exit(main())
