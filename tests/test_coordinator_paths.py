"""The socket's path, its directory's safety, and one coordinator per socket (the lock)."""

from __future__ import annotations

import os

import pytest

from pmrun.coordinator import paths
from pmrun.coordinator.endpoint import AlreadyRunning, acquire_lock, bind_socket
from pmrun.errors import SocketSecurityError, UsageError


def test_default_socket_path_prefers_xdg_runtime_dir(tmp_path):
    assert paths.default_socket_path({"XDG_RUNTIME_DIR": str(tmp_path)}) == str(
        tmp_path / "pmrun" / "coordinator.sock"
    )


def test_default_socket_path_falls_back_to_a_per_user_temp_dir(tmp_path):
    uid = os.geteuid()
    assert paths.default_socket_path({}) == f"/tmp/pmrun-{uid}/coordinator.sock"
    assert paths.default_socket_path({"XDG_RUNTIME_DIR": "relative"}).startswith("/tmp/")
    assert paths.default_socket_path({"TMPDIR": str(tmp_path)}) == str(
        tmp_path / f"pmrun-{uid}" / "coordinator.sock"
    )


def test_resolve_socket_path_order(tmp_path):
    env = {"PMRUN_SOCKET": "/tmp/from-env.sock", "XDG_RUNTIME_DIR": str(tmp_path)}
    assert paths.resolve_socket_path("/tmp/flag.sock", env) == "/tmp/flag.sock"
    assert paths.resolve_socket_path("", env) == "/tmp/from-env.sock"
    assert paths.resolve_socket_path(None, {"XDG_RUNTIME_DIR": str(tmp_path)}).endswith(
        "pmrun/coordinator.sock"
    )


def test_resolve_socket_path_refuses_a_path_too_long_for_af_unix():
    with pytest.raises(UsageError, match="shorter --socket"):
        paths.resolve_socket_path("/tmp/" + "x" * 120)


def test_prepare_dir_creates_0700(tmp_path):
    d = paths.prepare_dir(str(tmp_path / "a" / "b" / "c.sock"))
    assert os.stat(d).st_mode & 0o777 == 0o700
    assert os.stat(tmp_path / "a").st_mode & 0o777 == 0o700


def test_prepare_dir_refuses_a_symlink(tmp_path):
    (tmp_path / "real").mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(SocketSecurityError, match="symlink"):
        paths.prepare_dir(str(tmp_path / "link" / "c.sock"))


def test_prepare_dir_refuses_someone_elses_directory(tmp_path):
    d = tmp_path / "theirs"
    d.mkdir(mode=0o700)
    os.chown(d, 65534, 65534)
    with pytest.raises(SocketSecurityError, match="belongs to uid 65534"):
        paths.prepare_dir(str(d / "c.sock"))


def test_prepare_dir_refuses_a_world_writable_directory_but_accepts_sticky(tmp_path):
    d = tmp_path / "open"
    d.mkdir()
    os.chmod(d, 0o777)
    with pytest.raises(SocketSecurityError, match="writable by others"):
        paths.prepare_dir(str(d / "c.sock"))
    os.chmod(d, 0o1777)  # like /tmp
    paths.prepare_dir(str(d / "c.sock"))
    assert os.stat(d).st_mode & 0o7777 == 0o1777  # an existing directory is never changed


def test_prepare_dir_refuses_a_file(tmp_path):
    (tmp_path / "f").write_text("")
    with pytest.raises(SocketSecurityError, match="not a directory"):
        paths.check_dir(str(tmp_path / "f"))


def test_one_lock_per_socket(tmp_path):
    sock = str(tmp_path / "c.sock")
    fd = acquire_lock(sock)
    try:
        with pytest.raises(AlreadyRunning):
            acquire_lock(sock)
    finally:
        os.close(fd)
    os.close(acquire_lock(sock))  # released with its descriptor


def test_bind_replaces_a_stale_socket_and_refuses_other_files(tmp_path):
    path = str(tmp_path / "c.sock")
    s1 = bind_socket(path)
    s1.close()  # stale socket file left behind
    s2 = bind_socket(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    s2.close()
    os.unlink(path)
    with open(path, "w") as f:
        f.write("not a socket")
    with pytest.raises(SocketSecurityError, match="not a socket"):
        bind_socket(path)


def test_an_endpoint_restores_its_socket_and_lock_or_yields_to_another_coordinator(tmp_path):
    from pmrun.coordinator.endpoint import Endpoint, lock_held

    sock = str(tmp_path / "c.sock")
    ep = Endpoint(sock)
    try:
        assert ep.check() == Endpoint.OK and lock_held(sock)
        os.unlink(sock)
        assert ep.check() == Endpoint.REBOUND and ep.serves_path()
        os.unlink(sock + ".lock")
        assert not lock_held(sock)
        assert ep.check() == Endpoint.OK and lock_held(sock)  # taken again, a new file
        os.unlink(sock + ".lock")
        other = acquire_lock(sock)  # another coordinator started meanwhile
        try:
            assert ep.check() == Endpoint.LOST
        finally:
            os.close(other)
    finally:
        ep.close()
    assert not os.path.exists(sock)


def test_a_daemon_finding_a_live_holder_gives_way_and_never_takes_over(tmp_path):
    """Launchers starting at the same instant spawn several daemons: the one that loses the
    lock to a live coordinator must give way at once, not wait and take over when that one
    stops (a coordinator stopped by `pmrun coordinator stop` would come back)."""
    import subprocess
    import sys
    import threading

    from pmrun.coordinator import endpoint

    d = tmp_path / "run"
    d.mkdir(mode=0o700)
    sock = str(d / "c.sock")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pmrun.coordinator import endpoint;"
         f" endpoint.acquire_lock({sock!r}); print('HELD', flush=True); sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "HELD"
        outcome: list[object] = []

        def contend() -> None:
            try:
                outcome.append(endpoint.acquire_lock(sock, wait_s=30))
            except endpoint.AlreadyRunning as e:
                outcome.append(e)

        t = threading.Thread(target=contend)
        t.start()
        holder.stdin.close()  # the holder stops (while a contender may still be waiting)
        holder.wait(10)
        t.join(40)
        assert len(outcome) == 1 and isinstance(outcome[0], endpoint.AlreadyRunning), outcome
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()
