"""``--report PATH`` writes through the path: FIFOs, /dev/fd/N, process substitution, symlinks.

The old code wrote ``PATH.tmp.PID`` and renamed it over PATH, turning a FIFO or a
symlink into a regular file; every test here failed on it.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import threading
from pathlib import Path

import pytest

from conftest import PMRUN
from pmrun.report import ExitReport, Limits, write_report


def sample_report(**changes: object) -> ExitReport:
    fields: dict[str, object] = dict(
        command=["true"],
        name="true",
        agent_id="true.1",
        pid=2,
        launcher_pid=1,
        start_time=1.0,
        end_time=2.0,
        exit_status=0,
        reason="exit",
        message="exited with 0",
        signal=None,
        peak_rss_bytes=4096,
        limits=Limits(1 << 30, 1 << 29, None, 5.0),
        samples=1,
        biggest_at_peak=None,
        ru_maxrss_bytes=None,
        backend={"name": "sampling"},
    )
    fields.update(changes)
    return ExitReport(**fields)


class Reader(threading.Thread):
    """Reads a FIFO (or fd) to its end in the background, as `jq` would."""

    def __init__(self, path: str | None = None, fd: int | None = None) -> None:
        super().__init__(daemon=True)
        self.path, self.fd, self.data = path, fd, b""
        self.start()

    def run(self) -> None:
        fd = os.open(self.path, os.O_RDONLY) if self.path else self.fd
        assert fd is not None
        try:
            while chunk := os.read(fd, 65536):
                self.data += chunk
        finally:
            os.close(fd)

    def result(self) -> dict[str, object]:
        self.join(20)
        assert not self.is_alive(), "the reader never saw the end of the report"
        return json.loads(self.data)


def test_a_fifo_is_written_and_stays_a_fifo(tmp_path: Path) -> None:
    fifo = tmp_path / "report.fifo"
    os.mkfifo(fifo)
    reader = Reader(str(fifo))
    write_report(sample_report(), str(fifo))
    assert reader.result()["reason"] == "exit"
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(os.listdir(tmp_path)) == ["report.fifo"]


def test_a_fifo_without_reader_is_one_error_not_a_hang(tmp_path: Path) -> None:
    fifo = tmp_path / "nobody.fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError) as e:
        write_report(sample_report(), str(fifo), reader_wait_s=0.2)
    assert "no reader" in str(e.value.strerror)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)


def test_dev_fd_of_a_pipe(tmp_path: Path) -> None:
    r, w = os.pipe()
    reader = Reader(fd=r)
    try:
        write_report(sample_report(message="x" * 200_000), f"/dev/fd/{w}")
    finally:
        os.close(w)
    got = reader.result()
    assert got["message"] == "x" * 200_000  # more than a pipe holds: written in a loop
    assert sorted(os.listdir(tmp_path)) == []


def test_a_large_report_reaches_a_slow_fifo_reader_whole(tmp_path: Path) -> None:
    fifo = tmp_path / "r"
    os.mkfifo(fifo)
    reader = Reader(str(fifo))
    write_report(sample_report(extra={"big": "y" * 1_000_000}), str(fifo))
    assert reader.result()["extra"] == {"big": "y" * 1_000_000}


def test_a_new_file_is_private_and_an_existing_one_is_truncated_in_place(tmp_path: Path) -> None:
    new = tmp_path / "new.json"
    write_report(sample_report(), str(new))
    assert stat.S_IMODE(os.stat(new).st_mode) == 0o600
    old = tmp_path / "old.json"
    old.write_text("z" * 100_000)
    os.chmod(old, 0o640)
    inode = os.stat(old).st_ino
    write_report(sample_report(), str(old))
    assert os.stat(old).st_ino == inode and stat.S_IMODE(os.stat(old).st_mode) == 0o640
    assert json.loads(old.read_text())["reason"] == "exit"


def test_my_own_symlink_is_followed(tmp_path: Path) -> None:
    target = tmp_path / "real.json"
    link = tmp_path / "link.json"
    link.symlink_to("real.json")  # relative, dangling: the report creates the target
    write_report(sample_report(), str(link))
    assert link.is_symlink() and json.loads(target.read_text())["reason"] == "exit"
    chain = tmp_path / "chain.json"
    chain.symlink_to(link)
    write_report(sample_report(exit_status=3), str(chain))
    assert chain.is_symlink() and json.loads(target.read_text())["exit_status"] == 3


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to own files as others")


@needs_root
def test_a_symlink_planted_by_another_user_is_refused(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = tmp_path / "report.json"
    link.symlink_to(victim)
    os.lchown(link, 12345, 12345)
    with pytest.raises(OSError) as e:
        write_report(sample_report(), str(link))
    assert "symlink" in str(e.value.strerror) and "12345" in str(e.value.strerror)
    assert victim.read_text() == "precious"


@needs_root
def test_sticky_world_writable_dir_like_protected_symlinks(tmp_path: Path) -> None:
    """In a /tmp-like dir, a link is followed only if its owner is the dir's owner or mine."""
    sticky = tmp_path / "tmp"
    sticky.mkdir()
    os.chmod(sticky, 0o1777)
    os.chown(sticky, 12345, 12345)  # the dir belongs to someone else
    victim = tmp_path / "victim"
    victim.write_text("precious")
    link = sticky / "report.json"
    link.symlink_to(victim)
    # Owned by root (me): followed, as the kernel does for the follower's own link.
    write_report(sample_report(), str(link))
    assert json.loads(victim.read_text())["reason"] == "exit"
    victim.write_text("precious")
    os.lchown(link, 12345, 12345)  # the dir owner's link: the kernel follows, but not ours
    with pytest.raises(OSError):
        write_report(sample_report(), str(link))
    assert victim.read_text() == "precious"


@pytest.mark.parametrize("how", ["symlink", "dev-fd"])
def test_stdout_is_written_not_replaced(tmp_path: Path, how: str) -> None:
    """What `--report /dev/stdout` does, without risking the host's /dev/stdout on a regression."""
    path = "/dev/fd/1"
    if how == "symlink":
        link = tmp_path / "stdout"
        link.symlink_to("/proc/self/fd/1")  # what /dev/stdout is
        path = str(link)
    out = tmp_path / "out"
    with open(out, "wb") as f:
        p = subprocess.run(
            [PMRUN, "--no-coordinator", "--report", path, "--", "echo", "from the command"],
            stdout=f,
            timeout=60,
        )
    assert p.returncode == 0
    text = out.read_text()
    assert text.startswith("from the command\n")
    assert json.loads(text.split("\n", 1)[1])["reason"] == "exit"
    if how == "symlink":
        assert (tmp_path / "stdout").is_symlink()


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_process_substitution(tmp_path: Path) -> None:
    """`pmrun --report >(cat > file)`: bash hands pmrun /dev/fd/63, a pipe."""
    got = tmp_path / "got.json"
    script = f'{PMRUN} --no-coordinator --report >(cat > "{got}") -- true; echo "rc=$?"; wait'
    p = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert "rc=0" in p.stdout, p.stderr
    assert "cannot write report" not in p.stderr
    assert json.loads(got.read_text())["reason"] == "exit"


def test_a_report_fd_is_not_inherited_by_the_command(tmp_path: Path) -> None:
    """The report's /dev/fd/N is pmrun's: the command does not get N (nor hold a reader open)."""
    r, w = os.pipe()
    try:
        p = subprocess.run(
            [
                PMRUN,
                "--no-coordinator",
                "--report",
                f"/dev/fd/{w}",
                "--",
                "sh",
                "-c",
                f"test -e /proc/self/fd/{w} && echo inherited || echo private",
            ],
            pass_fds=(w,),
            capture_output=True,
            text=True,
            timeout=60,
        )
    finally:
        os.close(w)
    with os.fdopen(r) as f:
        report = json.loads(f.read())
    assert p.stdout == "private\n" and report["reason"] == "exit"


def test_an_unwritable_report_is_one_line_and_the_command_status_stands(tmp_path: Path) -> None:
    p = subprocess.run(
        [
            PMRUN,
            "--no-coordinator",
            "--report",
            str(tmp_path / "no" / "such"),
            "--",
            "sh",
            "-c",
            "exit 7",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 7
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pmrun: cannot write report"), p.stderr
