"""One writer per staging file, whatever name it is reached by: the collector's OS lock on the
file itself, held for its whole life.

The lock is a ``flock`` on the staging file's own inode (a descriptor of its own, apart from
SQLite's), so every name of the file shares it: a symlink, another path through a bind mount, a
hard link. The kernel releases it when the process dies, ``kill -9`` included. The holder leaves
no note of itself anywhere: a second collector names it from the kernel's table of locks
(``/proc/locks``: the holder's pid and command line), without opening the file with SQLite.

What is not safe, and refused or detected:

- **Two names for one file** (hard links). SQLite keeps the write-ahead log beside the name it
  was opened by (``NAME-wal``, ``NAME-shm``): two processes on two names would each keep their own
  log of one database, and commits get lost (seen: two collectors stored 80 ticks, the file kept
  42). A staging file with more than one name is refused (:func:`refuse_extra_names`).
- **Renaming the file while a collector runs.** Its log stays under the old name; the collector
  notices (:meth:`WriterLock.still_at_its_path`), folds the log into the file and stops, so
  nothing is left in a log no name points to. A copy made by ``cp`` while it runs is not a
  consistent copy: ``etl backup`` is.
- **A network filesystem** (NFS, SMB/CIFS, ...). WAL mode needs shared memory between the
  processes of one host, and ``flock`` on NFS is emulated with the same POSIX locks SQLite uses:
  the staging file on one is refused (:func:`refuse_network_fs`). The warehouse may be anywhere.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import IO

from etl.errors import ConfigError, StagingBusy

NETWORK_FILESYSTEMS = frozenset(
    {"nfs", "nfs4", "cifs", "smb3", "smbfs", "9p", "afs", "ceph", "glusterfs", "lustre", "davfs"}
)


class WriterLock:
    """The writer lock of the staging file at ``path``; a second holder gets
    :class:`StagingBusy`, naming the first."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._handle: IO[bytes] | None = None
        self._identity: tuple[int, int] | None = None

    def hold(self) -> None:
        """Take the lock for this process's lifetime (the file must exist)."""
        if self._identity is not None:
            return
        if self._handle is None:
            self._handle = self.path.open("rb")
        stat = os.fstat(self._handle.fileno())
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise StagingBusy(
                f"another collector ({holder_of(stat.st_dev, stat.st_ino)}) is writing to "
                f"{self.path}: stop it first, or give this one its own ETL_DATA_DIR / "
                "ETL_SQLITE_PATH"
            ) from None
        self._identity = (stat.st_dev, stat.st_ino)

    def still_at_its_path(self) -> bool:
        """Whether the locked file is still the one its path names (not renamed or replaced)."""
        if self._identity is None:
            return True
        try:
            stat = self.path.stat()
        except OSError:
            return False
        return (stat.st_dev, stat.st_ino) == self._identity

    def release(self) -> None:
        """Let another collector in (the descriptor stays open: see :meth:`close`)."""
        if self._handle is not None and self._identity is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
        self._identity = None

    def close(self) -> None:
        """Close the lock's descriptor, once SQLite has closed the file: closing any descriptor of
        a file drops every POSIX lock the process holds on it, SQLite's included."""
        self.release()
        if self._handle is not None:
            self._handle.close()
            self._handle = None


def holder_of(device: int, inode: int) -> str:
    """``pid N: COMMAND`` of the process holding a ``flock`` on the file, from the kernel's
    table of locks (Linux); ``pid unknown`` where it cannot be read."""
    wanted = f"{os.major(device):02x}:{os.minor(device):02x}:{inode}"
    try:
        table = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return "pid unknown"
    for line in table:
        fields = line.split()
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == wanted:
            pid = fields[4]
            with contextlib.suppress(OSError):
                command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
                return f"pid {pid}: {command.decode(errors='replace').strip()}"
            return f"pid {pid}"
    return "pid unknown"


def refuse_extra_names(path: Path) -> None:
    """A staging file reached by more than one hard link is refused (see the module's text)."""
    with contextlib.suppress(FileNotFoundError):
        links = path.stat().st_nlink
        if links > 1:
            raise ConfigError(
                f"the staging file {path} has {links} names (hard links): SQLite keeps its "
                "write-ahead log beside each name, so two names can lose commits; remove the "
                f"other names (`find / -xdev -samefile {path}`) and use this one only"
            )


def filesystem_type(path: Path) -> str | None:
    """The type of the filesystem holding ``path`` (``ext4``, ``nfs4``, ...), from the
    kernel's mount table; ``None`` where there is none to read."""
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return None
    target = str(path.resolve())
    best, kind = "", None
    for line in lines:
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount = fields[4].replace("\\040", " ")
        after = line.split(" - ", 1)[1].split()
        inside = target == mount or target.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, after[0] if after else None
    return kind


def refuse_network_fs(path: Path) -> None:
    """The staging file on a network filesystem is refused (see the module's text)."""
    folder = path if path.is_dir() else path.parent
    kind = filesystem_type(folder) if folder.exists() else None
    if kind is not None and (kind in NETWORK_FILESYSTEMS or kind.startswith("fuse.sshfs")):
        raise ConfigError(
            f"{path} is on a network filesystem ({kind}): SQLite's write-ahead log needs every "
            "process on one host with shared memory, and locks there are not reliable; put the "
            "staging file on a local disk (ETL_SQLITE_PATH), the warehouse may stay remote"
        )
