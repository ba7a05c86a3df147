#!/usr/bin/env bash
# Runs as root inside the v2 guest (see scripts/test-v2): make the guest look like a
# cgroup v2 host pmrun is meant for, then run a command (pytest) in REPO and leave its
# exit status in OUT/rc.
#
#   guest.sh REPO OUT -- COMMAND [ARGS...]
#
# OUT/snap, if there, is a snapshot of the working tree laid over REPO.
# - A second, cache=loose 9p view of the host's / (tag "hostc"): the root virtme-ng
#   mounts has no page cache, so every exec would re-read its pages from the host
#   (python -c pass: 1.5 s instead of 0.45 s). It is overlaid on the repo (writes are
#   thrown away) and bound over the interpreter the repo's venv points at.
# - The disk image (virtio-blk) as ext4 at /run/pmrun-disk, and TMPDIR
#   on it: page cache there is file-backed, as on a real machine (in /tmp, a tmpfs in
#   the guest, a "big file" is shmem and charged as such).
# - The memory and pids controllers enabled below the root (subtree_control is empty
#   at boot: there is no systemd in the guest).
set -u
repo=$1 out=$2
shift 2
[ "${1:-}" = "--" ] && shift

mkdir -p /run/hostc /run/ov/u /run/ov/w /run/pmrun-disk
if mount -t 9p -o ro,trans=virtio,version=9p2000.L,cache=loose,msize=524288 hostc /run/hostc; then
  lower=/run/hostc$repo
  [ -d "/run/hostc$out/snap" ] && lower="/run/hostc$out/snap:$lower"
  mount -t overlay overlay -o "lowerdir=$lower,upperdir=/run/ov/u,workdir=/run/ov/w" "$repo" || true
  py=$(readlink -f "$repo/.venv/bin/python" 2>/dev/null || true)
  prefix=${py%/bin/*}
  case "$prefix" in
    /usr | /usr/local | "") ;;
    *) [ -d "/run/hostc$prefix" ] && mount --bind "/run/hostc$prefix" "$prefix" ;;
  esac
fi

disk=/dev/vda  # vng --disk attaches the image over virtio-blk, the guest's only disk
if [ -b "$disk" ] && mount -t ext4 "$disk" /run/pmrun-disk; then
  mkdir -p /run/pmrun-disk/tmp && chmod 1777 /run/pmrun-disk/tmp
  export TMPDIR=/run/pmrun-disk/tmp
  export PMRUN_TEST_DISK_DIR=/run/pmrun-disk/tmp
else
  echo "guest: no ext4 disk at $disk: page-cache tests will skip" >&2
fi

cg=/sys/fs/cgroup
echo "guest: kernel $(uname -r); cgroup controllers: $(cat $cg/cgroup.controllers)"
for c in memory pids; do
  echo "+$c" > $cg/cgroup.subtree_control 2>/dev/null || echo "guest: cannot enable $c" >&2
done
echo "guest: subtree_control: $(cat $cg/cgroup.subtree_control); $(nproc) CPUs; $(awk '/MemTotal/ {print $2 " kB"}' /proc/meminfo)"

cd "$repo" || { echo 125 > "$out/rc"; exit 125; }
# The guest has no user session: a runtime directory for the coordinator's socket.
export XDG_RUNTIME_DIR=/run/user/0 && mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
# TCG runs ~10x slower than the host: the tests' condition deadlines stretch by this much.
export PMRUN_TEST_TIME_SCALE=${PMRUN_TEST_TIME_SCALE:-10}
"$@"
rc=$?
echo "$rc" > "$out/rc"
exit "$rc"
