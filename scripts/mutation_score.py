"""Killed/total per mutated module, from mutmut's result files under ``mutants/``; every
module, and all of them together, must reach the target.

mutmut records each mutant's test exit status: 0 means the tests passed with the
mutant in place (it survived); 5 (pytest collected nothing) and 33 (no selected test
calls the mutated function) mean no test reached it, counted as survived; any other
status means a test failed or timed out (killed). Unchecked (no status) and skipped (34)
mutants are left out.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

TARGET = 0.90
SURVIVED = (0, 5, 33)
NOT_COUNTED = (None, 34)


def main(root: str) -> int:
    total_killed = total_checked = 0
    below = False
    rows = []
    for meta in sorted(Path(root, "src").rglob("*.py.meta")):
        codes = [
            c
            for c in json.loads(meta.read_text())["exit_code_by_key"].values()
            if c not in NOT_COUNTED
        ]
        if not codes:
            continue
        killed = sum(1 for c in codes if c not in SURVIVED)
        total_killed += killed
        total_checked += len(codes)
        module = str(meta.relative_to(Path(root, "src"))).removesuffix(".py.meta")
        score = killed / len(codes)
        below = below or score < TARGET
        name = module.replace("/", ".")
        mark = "  below the target" if score < TARGET else ""
        rows.append(f"{name:32} {killed:5}/{len(codes):<5} {score:6.1%}{mark}")
    if not total_checked:
        print("no mutant was checked", file=sys.stderr)
        return 1
    print("\n".join(rows))
    score = total_killed / total_checked
    print(f"{'all':32} {total_killed:5}/{total_checked:<5} {score:6.1%} (target {TARGET:.0%})")
    return 0 if score >= TARGET and not below else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "mutants"))
