"""Where a block device is mounted, read from the kernel's mount table.

Barman asks `findmnt -o TARGET,OPTIONS -n <device>` for each disk; the answer is recorded in
`snapshots_info` and `barman-cloud-restore` later compares it with what `findmnt` says on the
recovery host. So the mount point and the options here are exactly findmnt's: the options are
libmount's merge of the per-mount (VFS) options and the filesystem's superblock options.

The table is `/proc/self/mountinfo` (it carries each mount's device number, so a device is
matched whatever name or symlink it is known by), or `/proc/mounts` where that is missing.
"""

from __future__ import annotations

import os
import re
import stat
from dataclasses import dataclass

MOUNTINFO = "/proc/self/mountinfo"
PROC_MOUNTS = "/proc/mounts"

_ESCAPE = re.compile(r"\\([0-7]{3})")


def _unescape(text: str) -> str:
    """The kernel writes space, tab, newline and backslash in paths as octal escapes."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), text)


def _remove_option(options: list[str], name: str) -> bool:
    if name in options:
        options.remove(name)
        return True
    return False


def merge_options(vfs: str | None, fs: str | None) -> str:
    """findmnt's OPTIONS column: the VFS options then the superblock options, one rw/ro first.

    The same rule as libmount's merge of the two option strings: identical strings are kept
    once; otherwise both lose their `rw` flags (and `ro` flags unless both were `rw`) and the
    result starts with `ro` if any `ro` was removed, else `rw`.
    """
    if not vfs or not fs:
        return vfs or fs or ""
    if vfs == fs:
        return vfs
    options = [o for o in f"{vfs},{fs}".split(",") if o]
    rw = _remove_option(options, "rw") + _remove_option(options, "rw")
    ro = 0
    if rw != 2:
        ro += _remove_option(options, "ro")
        if ro + rw < 2:
            ro += _remove_option(options, "ro")
    return ",".join(["ro" if ro else "rw", *options])


@dataclass(frozen=True)
class Mount:
    """One line of the mount table."""

    mount_point: str
    source: str
    fstype: str
    vfs_options: str
    fs_options: str | None = None  # superblock options (mountinfo only)
    root: str = "/"  # the directory of the filesystem mounted here ("/" unless a bind mount)
    device: tuple[int, int] | None = None  # major, minor (mountinfo only)

    @property
    def options(self) -> str:
        """The mount options as findmnt prints them."""
        return merge_options(self.vfs_options, self.fs_options)


def parse_mountinfo(text: str) -> list[Mount]:
    """`/proc/<pid>/mountinfo` lines (see proc(5))."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if "-" not in fields[6:]:
            continue
        separator = fields.index("-", 6)
        major, _, minor = fields[2].partition(":")
        fs_fields = fields[separator + 1:]
        mounts.append(Mount(
            mount_point=_unescape(fields[4]),
            source=_unescape(fs_fields[1]) if len(fs_fields) > 1 else "none",
            fstype=fs_fields[0],
            vfs_options=fields[5],
            fs_options=fs_fields[2] if len(fs_fields) > 2 else None,
            root=_unescape(fields[3]),
            device=(int(major), int(minor)),
        ))
    return mounts


def parse_proc_mounts(text: str) -> list[Mount]:
    """`/proc/mounts` (fstab format): no device numbers, the options already merged."""
    mounts = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 4:
            continue
        mounts.append(Mount(
            mount_point=_unescape(fields[1]), source=_unescape(fields[0]), fstype=fields[2],
            vfs_options=fields[3],
        ))
    return mounts


def _block_device(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    if not stat.S_ISBLK(st.st_mode):
        return None
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def _within(path: str, directory: str) -> bool:
    return directory == "/" or path == directory or path.startswith(directory.rstrip("/") + "/")


class MountTable:
    """A snapshot of the host's mounts, with the look-ups a snapshot backup needs."""

    def __init__(self, mounts: list[Mount]) -> None:
        self.mounts = mounts

    @classmethod
    def read(cls, mountinfo: str = MOUNTINFO, proc_mounts: str = PROC_MOUNTS) -> MountTable:
        """The mount table of this process's mount namespace."""
        try:
            with open(mountinfo, encoding="utf-8", errors="surrogateescape") as handle:
                return cls(parse_mountinfo(handle.read()))
        except FileNotFoundError:
            with open(proc_mounts, encoding="utf-8", errors="surrogateescape") as handle:
                return cls(parse_proc_mounts(handle.read()))

    def mounts_of(self, device: str) -> list[Mount]:
        """Every mount of `device` (a path under /dev, a symlink to one such as
        /dev/disk/by-id/google-NAME, or a bare name such as `nvme1n1`), in mount order."""
        path = device if device.startswith("/") else f"/dev/{device}"
        real = os.path.realpath(path)
        number = _block_device(real)
        def matches(mount: Mount) -> bool:
            if number is not None and mount.device == number:
                return True
            return mount.source.startswith("/") and (
                mount.source in (path, real) or os.path.realpath(mount.source) == real
            )

        return [mount for mount in self.mounts if matches(mount)]

    def find_device(self, device: str) -> Mount | None:
        """Where `device` is mounted: the mount of its whole filesystem (root `/`) if there
        is one, else its first mount; None if it is not mounted."""
        found = self.mounts_of(device)
        whole = [m for m in found if m.root == "/"]
        return (whole or found)[0] if found else None

    def containing(self, path: str) -> Mount | None:
        """The mount `path` lives on: the deepest mount point above it, the last one mounted
        there if several were (it hides the others)."""
        real = os.path.realpath(path)
        best: Mount | None = None
        for mount in self.mounts:
            if _within(real, mount.mount_point) and (
                best is None or len(mount.mount_point) >= len(best.mount_point)
            ):
                best = mount
        return best

    def same_filesystem(self, a: Mount, b: Mount) -> bool:
        """True if both mounts show the same filesystem (a device mounted twice, a bind)."""
        if a.device is not None and b.device is not None:
            return a.device == b.device
        return a.source == b.source and a.source.startswith("/")
