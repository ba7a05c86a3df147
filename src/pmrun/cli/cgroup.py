"""``pmrun gc``: find and remove cgroups left behind by a pmrun that was killed."""

from __future__ import annotations

import click

from ..errors import CgroupError, ExitCode

_GC_EXAMPLES = """\b
Examples:
  pmrun gc --dry-run                             # list what would be removed
  pmrun gc"""


@click.command("gc", epilog=_GC_EXAMPLES)
@click.option("--dry-run", is_flag=True, help="List stale groups; kill and remove nothing.")
def gc_command(dry_run: bool) -> None:
    """Remove the cgroups of agents whose pmrun died.

    Each agent's group is named after the pmrun that created it (its pid and start
    time). When that pmrun is gone (SIGKILL, OOM, a crash), the group is stale: every
    process still in it is killed and the group removed. Looks under the `pmrun` group
    of the cgroup this command runs in, where pmrun run from the same place puts its
    agents; groups pmrun did not create are never touched. Every pmrun start and the
    coordinator do the same on their own.
    """
    from .. import cgroups

    try:
        layout = cgroups.detect()
    except CgroupError as e:
        click.echo(f"nothing to clean: pmrun cannot use cgroups here ({e})")
        return
    orphans = cgroups.find_orphans(layout, thorough=True)
    if not orphans:
        click.echo(f"no stale pmrun groups under {layout.memory_parent}")
        if not dry_run:
            cgroups.remove_empty_parents(layout)
        return
    failed = 0
    for orphan in orphans:
        where = orphan.group.memory_dir
        if dry_run:
            n = len(orphan.group.all_pids())
            click.echo(f"stale: {where} (launcher pid {orphan.launcher_pid} gone, {n} processes)")
            continue
        try:
            killed = cgroups.clean(orphan)
        except (CgroupError, PermissionError) as e:
            click.echo(f"pmrun gc: cannot clean {where}: {e}", err=True)
            failed += 1
            continue
        click.echo(f"removed {where} (launcher pid {orphan.launcher_pid} gone, killed {killed})")
    if not dry_run:
        cgroups.remove_empty_parents(layout)
    if failed:
        raise SystemExit(ExitCode.FAILURE)
