"""A FUSE pass-through filesystem that can lose what was never synced, as a power cut would (LazyFS-like).

    python -m tests.support.powercut BACKING MOUNTPOINT STATE_DIR

serves BACKING/root at MOUNTPOINT (libfuse3 through mfusepy, in the foreground, multithreaded). Every
write, create, rename and unlink goes straight through to BACKING, so the running processes see a normal
filesystem, but an undo log is kept of everything not yet made durable:

- per file (by inode): its size at its last fsync/fdatasync and the old bytes of every range of that
  synced part it overwrote or truncated since. fsync and fdatasync (FUSE_FSYNC, either flag) of the file
  make its data durable: the log is dropped. Nothing else does (not close, not a sync of its directory).
- per directory (by inode): the list of its entries (name -> inode) as of its last fsync (FUSE_FSYNCDIR),
  taken the moment it is first changed after that. Files and directories that leave a name (unlink,
  rmdir, rename over them) are moved into BACKING/trash instead of being freed, so a cut can bring them
  back. A newly created file's name is durable only once its directory is fsynced, whatever was done to
  the file; a rename is durable only once both directories are.

`PowerCut` (below) runs it for tests. `cut()` is the power cut: the caller has SIGKILLed every process
using the mount; the filesystem is unmounted, the daemon replays the undo logs (directories back to their
durable lists, files truncated to their synced size with overwritten bytes put back) and exits, and a
fresh daemon mounts the result, which is what a machine would find after a reboot. `shutdown()` is a
clean unmount (everything stays). The kernel's page cache of the mount goes with the unmount.

Mount options: no writeback cache (libfuse3 does not ask for it unless told), so every write(2), and a
splice(2) into a file, reaches the daemon before it returns; not direct_io, so MAP_SHARED mappings of the
files work (the server hashes spliced pages through one); attribute and entry timeouts 0. flock and POSIX
locks are left to the kernel (local to this host); splice(2) from a socket into a file works (the kernel
turns it into FUSE writes).

Limits: a cut drops ALL unsynced changes, it never keeps some and loses others, tears a write or reorders
writes (LazyFS's default; a real disk may keep any subset). A file's fsync does not make its name durable
(stricter than ext4, which commits the name with it). Metadata-only changes (chmod, chown, utimens) are
kept whatever happens. fallocate is not offered (EOPNOTSUPP). Cuts happen between FUSE requests, once
every process using the mount was killed. Python behind ctypes: tens of MB/s, fine for test files.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_libc = ctypes.CDLL(None, use_errno=True)
_renameat2 = _libc.renameat2
_renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def renameat2(source: str, target: str, flags: int) -> None:
    if _renameat2(_AT_FDCWD, os.fsencode(source), _AT_FDCWD, os.fsencode(target), flags) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code), source)


@dataclass
class FileLog:
    """Undo log of one file since its last fsync: its synced size, and old bytes of overwritten ranges."""

    synced_size: int
    saved: list[tuple[int, bytes]] = field(default_factory=list)


@dataclass
class Stats:
    writes: int = 0
    fsyncs: int = 0
    fdatasyncs: int = 0
    fsyncdirs: int = 0
    renames: dict[str, int] = field(default_factory=dict)
    reverted_files: int = 0
    reverted_bytes: int = 0
    removed_entries: int = 0
    restored_entries: int = 0
    errors: list[str] = field(default_factory=list)


def _load_mfusepy() -> Any:
    import mfusepy  # the test extra; imported here so the harness side does not need it

    return mfusepy


class PowerCutFS:
    """The filesystem's operations (mfusepy's Operations protocol), with the undo logs."""

    use_ns = True

    def __init__(self, backing: Path) -> None:
        self.root = str(backing / "root")
        self.trash = str(backing / "trash")
        os.makedirs(self.root, exist_ok=True)
        os.makedirs(self.trash, exist_ok=True)
        self.lock = threading.RLock()
        self.files: dict[int, FileLog] = {}
        self.dirs: dict[int, dict[str, tuple[int, bool]]] = {}  # dir inode -> durable entries (inode, is_dir)
        self.stats = Stats()

    # -- helpers -------------------------------------------------------------------------------------

    def _full(self, path: str) -> str:
        return self.root + path if path != "/" else self.root

    def _parent(self, path: str) -> str:
        return self._full(os.path.dirname(path) or "/")

    def _snapshot_dir(self, directory: str) -> None:
        """Before the first change to `directory` since its last fsync: remember its durable entries."""
        ino = os.lstat(directory).st_ino
        if ino in self.dirs:
            return
        entries = {}
        with os.scandir(directory) as scan:
            for entry in scan:
                info = entry.stat(follow_symlinks=False)
                entries[entry.name] = (info.st_ino, stat.S_ISDIR(info.st_mode))
        self.dirs[ino] = entries

    def _to_trash(self, full: str) -> None:
        """Takes `full` out of its directory, keeping its inode in the trash for a cut to bring back."""
        info = os.lstat(full)
        kind = "d" if stat.S_ISDIR(info.st_mode) else "f"
        keep = os.path.join(self.trash, f"{kind}{info.st_ino}")
        if os.path.lexists(keep):
            os.unlink(full)  # another name of a file already kept
        else:
            os.rename(full, keep)

    def _file_log(self, fd: int) -> tuple[int, FileLog]:
        info = os.fstat(fd)
        log = self.files.get(info.st_ino)
        if log is None:
            log = self.files[info.st_ino] = FileLog(info.st_size)
        return info.st_size, log

    def _save_range(self, fd: int, log: FileLog, offset: int, end: int) -> None:
        end = min(end, log.synced_size)
        if offset < end:
            log.saved.append((offset, os.pread(fd, end - offset, offset)))

    # -- metadata ------------------------------------------------------------------------------------

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        info = os.fstat(fh) if fh is not None else os.lstat(self._full(path))
        keys = ("st_mode", "st_nlink", "st_uid", "st_gid", "st_size", "st_ino", "st_blocks",
                "st_atime_ns", "st_mtime_ns", "st_ctime_ns")
        result = {key: getattr(info, key) for key in keys}
        for key in ("st_atime", "st_mtime", "st_ctime"):
            result[key] = result.pop(key + "_ns")
        return result

    def access(self, path: str, amode: int) -> int:
        if not os.access(self._full(path), amode):
            raise OSError(errno.EACCES, "access")
        return 0

    def chmod(self, path: str, mode: int) -> int:
        os.chmod(self._full(path), mode)
        return 0

    def chown(self, path: str, uid: int, gid: int) -> int:
        os.lchown(self._full(path), uid, gid)
        return 0

    def utimens(self, path: str, times: tuple[int, int] | None = None) -> int:
        if times is None:
            os.utime(self._full(path), follow_symlinks=False)
        else:
            os.utime(self._full(path), ns=times, follow_symlinks=False)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        info = os.statvfs(self._full(path))
        return {key: getattr(info, key) for key in ("f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail",
                                                    "f_ffree", "f_files", "f_flag", "f_frsize", "f_namemax")}

    def readlink(self, path: str) -> str:
        return os.readlink(self._full(path))

    # -- directories ---------------------------------------------------------------------------------

    def opendir(self, path: str) -> int:
        return 0

    def releasedir(self, path: str | None, fh: int) -> int:
        return 0

    def readdir(self, path: str, fh: int) -> list[tuple[str, dict[str, int], int]]:
        found = []  # with use_ino, an entry without its inode number (0) would be skipped by readdir(3)
        for name in (".", "..", *os.listdir(self._full(path))):
            with_info = os.lstat(os.path.join(self._full(path), name))
            found.append((name, {"st_ino": with_info.st_ino, "st_mode": with_info.st_mode}, 0))
        return found

    def fsyncdir(self, path: str | None, datasync: int, fh: int) -> int:
        with self.lock:
            self.stats.fsyncdirs += 1
            if path is not None:
                self.dirs.pop(os.lstat(self._full(path)).st_ino, None)
        return 0

    def mkdir(self, path: str, mode: int) -> int:
        with self.lock:
            self._snapshot_dir(self._parent(path))
            os.mkdir(self._full(path), mode)
        return 0

    def rmdir(self, path: str) -> int:
        with self.lock:
            full = self._full(path)
            if os.listdir(full):
                raise OSError(errno.ENOTEMPTY, "rmdir", path)
            self._snapshot_dir(self._parent(path))
            self._to_trash(full)
        return 0

    def unlink(self, path: str) -> int:
        with self.lock:
            self._snapshot_dir(self._parent(path))
            self._to_trash(self._full(path))
        return 0

    def symlink(self, target: str, source: str) -> int:
        with self.lock:
            self._snapshot_dir(self._parent(target))
            os.symlink(source, self._full(target))
        return 0

    def link(self, target: str, source: str) -> int:
        with self.lock:
            self._snapshot_dir(self._parent(target))
            os.link(self._full(source), self._full(target))
        return 0

    def rename(self, old: str, new: str, flags: int = 0) -> int:
        with self.lock:
            source, target = self._full(old), self._full(new)
            self._snapshot_dir(self._parent(old))
            self._snapshot_dir(self._parent(new))
            name = {0: "plain", RENAME_NOREPLACE: "noreplace", RENAME_EXCHANGE: "exchange"}.get(flags, str(flags))
            self.stats.renames[name] = self.stats.renames.get(name, 0) + 1
            if flags:
                renameat2(source, target, flags)
                return 0
            if os.path.lexists(target) and os.lstat(source).st_ino != os.lstat(target).st_ino:
                if stat.S_ISDIR(os.lstat(target).st_mode):
                    if os.listdir(target):
                        raise OSError(errno.ENOTEMPTY, "rename", new)
                    if not stat.S_ISDIR(os.lstat(source).st_mode):
                        raise OSError(errno.EISDIR, "rename", new)
                elif stat.S_ISDIR(os.lstat(source).st_mode):
                    raise OSError(errno.ENOTDIR, "rename", new)
                self._to_trash(target)  # the replaced entry stays restorable
            os.rename(source, target)
        return 0

    # -- files ---------------------------------------------------------------------------------------

    def create(self, path: str, mode: int, flags: int = os.O_WRONLY) -> int:
        with self.lock:
            full = self._full(path)
            self._snapshot_dir(self._parent(path))
            fd = os.open(full, (flags | os.O_CREAT) & ~os.O_TRUNC, mode)
            self._truncate_fd(fd, 0) if flags & os.O_TRUNC else self._file_log(fd)
            return fd

    def open(self, path: str, flags: int) -> int:
        with self.lock:
            fd = os.open(self._full(path), flags & ~(os.O_CREAT | os.O_EXCL | os.O_TRUNC))
            if flags & os.O_TRUNC:  # libfuse3 asks for atomic_o_trunc: the truncation comes with the open
                self._truncate_fd(fd, 0)
            return fd

    def read(self, path: str | None, size: int, offset: int, fh: int) -> bytes:
        return os.pread(fh, size, offset)

    def write(self, path: str | None, data: bytes, offset: int, fh: int) -> int:
        with self.lock:
            self.stats.writes += 1
            _, log = self._file_log(fh)
            self._save_range(fh, log, offset, offset + len(data))
            return os.pwrite(fh, data, offset)

    def truncate(self, path: str | None, length: int, fh: int | None = None) -> int:
        with self.lock:
            fd = fh if fh is not None else os.open(self._full(path or "/"), os.O_RDWR)
            try:
                self._truncate_fd(fd, length)
            finally:
                if fh is None:
                    os.close(fd)
        return 0

    def _truncate_fd(self, fd: int, length: int) -> None:
        size, log = self._file_log(fd)
        self._save_range(fd, log, length, size)
        os.ftruncate(fd, length)

    def fsync(self, path: str | None, datasync: int, fh: int) -> int:
        with self.lock:
            if datasync:
                self.stats.fdatasyncs += 1
            else:
                self.stats.fsyncs += 1
            self.files.pop(os.fstat(fh).st_ino, None)
        return 0

    def flush(self, path: str | None, fh: int) -> int:
        return 0

    def release(self, path: str | None, fh: int) -> int:
        os.close(fh)
        return 0

    # -- the power cut -------------------------------------------------------------------------------

    def _paths_by_inode(self) -> dict[int, str]:
        found = {os.lstat(self.root).st_ino: self.root}
        for base in (self.root, self.trash):
            for directory, dirnames, filenames in os.walk(base):
                for name in dirnames + filenames:
                    full = os.path.join(directory, name)
                    found.setdefault(os.lstat(full).st_ino, full)
        return found

    def revert(self) -> None:
        """Puts BACKING/root back to its durable state; nothing may be using it (it is unmounted)."""
        # 1. take out of each changed directory every entry that is not durable there
        for ino, durable in list(self.dirs.items()):
            directory = self._paths_by_inode().get(ino)
            if directory is None or directory.startswith(self.trash + "/"):
                continue
            for name in os.listdir(directory):
                full = os.path.join(directory, name)
                info = os.lstat(full)
                if durable.get(name, (None, False))[0] != info.st_ino:
                    self._to_trash(full)
                    self.stats.removed_entries += 1
        # 2. bring back every durable entry that is missing, from wherever it is now (trash, another directory)
        pending = dict(self.dirs)
        for _ in range(len(pending) + 1):
            where = self._paths_by_inode()
            for ino, durable in list(pending.items()):
                directory = where.get(ino)
                if directory is None or directory.startswith(self.trash + "/"):
                    continue
                for name, (entry_ino, is_dir) in durable.items():
                    full = os.path.join(directory, name)
                    if os.path.lexists(full):
                        continue
                    current = where.get(entry_ino)
                    if current is None:
                        self.stats.errors.append(f"inode {entry_ino} of {full} is gone")
                        continue
                    if is_dir:
                        os.rename(current, full)
                    else:
                        os.link(current, full, follow_symlinks=False)
                    self.stats.restored_entries += 1
                del pending[ino]
            if not pending:
                break
        # 3. files: back to their synced size and bytes
        where = self._paths_by_inode()
        for ino, log in self.files.items():
            path = where.get(ino)
            if path is None or path.startswith(self.trash + "/"):
                continue
            fd = os.open(path, os.O_RDWR)
            try:
                size = os.fstat(fd).st_size
                if size != log.synced_size or log.saved:
                    self.stats.reverted_files += 1
                    self.stats.reverted_bytes += abs(size - log.synced_size)
                os.ftruncate(fd, log.synced_size)
                for offset, old in reversed(log.saved):
                    os.pwrite(fd, old, offset)
                    self.stats.reverted_bytes += len(old)
                os.fsync(fd)
            finally:
                os.close(fd)
        self.files.clear()
        self.dirs.clear()
        self.empty_trash()

    def empty_trash(self) -> None:
        for name in os.listdir(self.trash):
            full = os.path.join(self.trash, name)
            if os.path.isdir(full) and not os.path.islink(full):
                shutil.rmtree(full)
            else:
                os.unlink(full)


def serve(backing: Path, mountpoint: Path, state: Path) -> int:
    """The daemon: mounts, serves until unmounted, then reverts if `state/action` says "cut"."""
    mfusepy = _load_mfusepy()
    filesystem = PowerCutFS(backing)

    class Operations(mfusepy.Operations):  # type: ignore[misc, name-defined]
        pass

    for name in ("getattr", "access", "chmod", "chown", "utimens", "statfs", "readlink", "opendir", "releasedir",
                 "readdir", "fsyncdir", "mkdir", "rmdir", "unlink", "symlink", "link", "rename", "create", "open",
                 "read", "write", "truncate", "fsync", "flush", "release"):
        setattr(Operations, name, staticmethod(getattr(filesystem, name)))
    Operations.use_ns = True

    class Fuse(mfusepy.FUSE):  # type: ignore[misc, name-defined]
        def rename_fuse_3(self, old: bytes, new: bytes, flags: int) -> int:  # mfusepy drops rename's flags
            return int(self.operations.rename(old.decode(), new.decode(), flags) or 0)

    (state / "pid").write_text(str(os.getpid()))
    try:
        Fuse(Operations(), str(mountpoint), foreground=True, nothreads=False, fsname="powercut",
             hard_remove=True, use_ino=True, attr_timeout=0, entry_timeout=0, negative_timeout=0)
    finally:
        action = (state / "action").read_text().strip() if (state / "action").exists() else "clean"
        if action == "cut":
            filesystem.revert()
        else:
            filesystem.empty_trash()
        (state / "report.json").write_text(json.dumps({"action": action, **filesystem.stats.__dict__}))
    return 0


class PowerCut:
    """The harness side: a mount of `backing` at `mountpoint` that tests can cut the power of.

    start() mounts; cut() = unmount, drop everything unsynced, mount again (the caller must have killed
    every process using the mount first); shutdown() unmounts keeping everything. reports holds each
    daemon's statistics (fsync and fsyncdir counts, what a cut reverted).
    """

    def __init__(self, backing: Path, mountpoint: Path, log_path: Path) -> None:
        self.backing = Path(backing)
        self.mountpoint = Path(mountpoint)
        self.state = self.backing / "state"
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None
        self.reports: list[dict[str, Any]] = []

    def start(self, timeout: float = 20) -> PowerCut:
        self.mountpoint.mkdir(parents=True, exist_ok=True)
        self.state.mkdir(parents=True, exist_ok=True)
        (self.state / "action").unlink(missing_ok=True)
        (self.state / "report.json").unlink(missing_ok=True)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "tests.support.powercut", str(self.backing), str(self.mountpoint),
                 str(self.state)], stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parents[2],
                start_new_session=True)
        deadline = time.monotonic() + timeout
        while not os.path.ismount(self.mountpoint):
            if self.proc.poll() is not None:
                raise RuntimeError(f"the FUSE daemon exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"the FUSE mount at {self.mountpoint} did not appear\n{self.log()[-3000:]}")
            time.sleep(0.02)
        return self

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    @property
    def root(self) -> Path:
        """The backing directory's view, for looking without going through the mount."""
        return self.backing / "root"

    def _unmount(self, action: str, timeout: float = 30) -> dict[str, Any]:
        assert self.proc is not None
        (self.state / "action").write_text(action)
        deadline = time.monotonic() + timeout
        while True:
            done = subprocess.run(["fusermount3", "-u", str(self.mountpoint)], check=False, capture_output=True, text=True)
            if done.returncode == 0 or not os.path.ismount(self.mountpoint):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"cannot unmount {self.mountpoint}: {done.stderr.strip()} (a process still "
                                   f"uses it: kill it first)")
            time.sleep(0.05)
        self.proc.wait(timeout)
        report_path = self.state / "report.json"
        if self.proc.returncode != 0 or not report_path.exists():
            raise RuntimeError(f"the FUSE daemon failed ({self.proc.returncode}):\n{self.log()[-3000:]}")
        report = dict(json.loads(report_path.read_text()))
        self.reports.append(report)
        if report["errors"]:
            raise RuntimeError(f"the power cut could not restore everything: {report['errors']}")
        return report

    def cut(self) -> dict[str, Any]:
        """Power cut and reboot: unsynced data and directory changes are gone, the mount is back."""
        report = self._unmount("cut")
        self.start()
        return report

    def shutdown(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            try:
                self._unmount("clean")
            except RuntimeError:
                subprocess.run(["fusermount3", "-u", "-z", str(self.mountpoint)], check=False, capture_output=True)
                self.proc.kill()
                self.proc.wait(10)


def fuse_available() -> str | None:
    """None when this machine can run the tool, else why not."""
    if not os.path.exists("/dev/fuse"):
        return "/dev/fuse is missing"
    if shutil.which("fusermount3") is None:
        return "fusermount3 is missing (apt-get install fuse3)"
    try:
        _load_mfusepy()
    except (ImportError, OSError) as exc:
        return f"mfusepy cannot load libfuse3 ({exc}): pip install mfusepy, apt-get install libfuse3-3"
    return None


if __name__ == "__main__":
    sys.exit(serve(Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])))
