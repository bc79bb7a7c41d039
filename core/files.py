"""Writing files and folders so that a reader never sees half of one: write under a temporary name, then
rename. Also: the checks a command makes before it writes (can it, may it replace this), and a lock that keeps
two runs out of one folder."""

from __future__ import annotations

import errno
import os
import shutil
import uuid
from pathlib import Path

from .errors import BadInput


def temporary_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other writer picks (a rename within one folder is atomic)."""
    return path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")


def atomic_write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    tmp = temporary_name(path)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def remove(path: Path) -> None:
    """Remove a file, a link (not what it points to) or a folder tree."""
    if path.is_symlink() or not path.is_dir():
        path.unlink(missing_ok=True)
    else:
        shutil.rmtree(path)


def replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished ``tmp`` folder to ``folder``, replacing an old one without a moment of absence."""
    if not os.path.lexists(folder):
        os.rename(tmp, folder)
        return
    old = folder.parent / f".{folder.name}.old-{uuid.uuid4().hex[:8]}"
    os.rename(folder, old)
    try:
        os.rename(tmp, folder)
    except OSError:
        os.rename(old, folder)  # the old one goes back: nothing is lost
        raise
    try:
        remove(old)
    except OSError as error:  # said, not hidden: the new folder is in place, the old copy is not gone
        raise OSError(
            f"{folder} was replaced, but its old copy {old} could not be removed: {error}"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# Before writing


def protected_folder(path: str | Path) -> str:
    """Why ``path`` must never be replaced as a whole (the current folder, one above it, the home folder, a
    file system's root), or "" when it may be."""
    target = Path(path).expanduser().resolve()
    cwd = Path.cwd().resolve()
    if target == cwd:
        return "the current folder"
    if target in cwd.parents:
        return "a folder above the current one"
    if target == Path.home().resolve():
        return "your home folder"
    if target == Path(target.anchor):
        return "the root of a file system"
    return ""


def _can_create_in(folder: Path) -> None:
    """Create and remove a file in ``folder``: permission bits alone do not tell (root, ACLs, read-only
    mounts)."""
    probe = folder / f".write-test-{uuid.uuid4().hex[:8]}"
    os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    probe.unlink()


def check_writable(path: str | Path, what: str = "--out", *, beside: bool = False) -> None:
    """Refuse, before any work, a ``path`` that cannot be written: inside it when it is a folder, else in the
    nearest folder above it that exists (where it will be made). ``beside``: ``path`` is made as a temporary
    sibling and renamed into place, so it is the folder above it that must be writable."""
    path = Path(path).expanduser().absolute()
    if not beside and path.exists() and not path.is_dir():
        raise BadInput(f"{what} {path} is a file, not a folder")
    folder = path if path.is_dir() and not beside else path.parent
    while not folder.exists():
        folder = folder.parent
    if not folder.is_dir():
        raise BadInput(f"{what} {path} cannot be made: {folder} is a file, not a folder")
    try:
        _can_create_in(folder)
    except OSError as error:
        raise BadInput(
            f"{what} {path} cannot be written: {folder} is not writable ({error.strerror or error}); "
            "choose a folder you can write to"
        ) from None


# ---------------------------------------------------------------------------------------------------------
# One run per folder


class FolderLocked(BadInput):
    """Another live process holds the folder's lock."""

    def __init__(self, folder: Path, pid: int | None):
        self.folder, self.pid = folder, pid
        holder = f"another run (pid {pid})" if pid else "another run"
        super().__init__(f"{folder} is in use by {holder}; wait for it to finish or choose another folder")


class FolderLock:
    """Keep ``folder`` to this process while the ``with`` block runs, through the file ``folder/name``.

    The lock is the operating system's (``flock``; ``msvcrt.locking`` on Windows), so it ends with its
    process: a run that was killed never blocks the next one. The file records the holder's pid, for the
    message, and is removed on release. Where the file system has no locks, a live pid in the file locks.
    """

    def __init__(self, folder: str | Path, name: str):
        self.folder = Path(folder)
        self.path = self.folder / name
        self._fd: int | None = None

    def __enter__(self) -> FolderLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def acquire(self) -> None:
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _os_lock(fd)
            except BlockingIOError:
                pid = _read_pid(fd)
                os.close(fd)
                raise FolderLocked(self.folder, pid) from None
            except BaseException:
                os.close(fd)
                raise
            if not locked:  # no locks on this file system: a live pid other than ours holds the folder
                pid = _read_pid(fd)
                if pid and pid != os.getpid() and _alive(pid):
                    os.close(fd)
                    raise FolderLocked(self.folder, pid)
            if os.name == "nt" or _same_file(fd, self.path):
                break
            os.close(fd)  # the last holder removed the file as it let go: lock the one there now
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is None:
            return
        if os.name != "nt":
            self.path.unlink(missing_ok=True)  # while still held, so no one locks a file that is going
        os.close(fd)  # this lets the lock go
        if os.name == "nt":
            try:
                self.path.unlink()
            except OSError:
                pass


def _os_lock(fd: int) -> bool:
    """Take the OS lock without waiting: True once held, False where the file system has none;
    BlockingIOError while another process holds it."""
    try:
        if os.name == "nt":
            import msvcrt

            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
            except OSError as error:
                if error.errno in (errno.EACCES, errno.EDEADLK):  # held by another process
                    raise BlockingIOError(*error.args) from None
                raise
        else:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise
    except OSError as error:
        if error.errno in (errno.ENOLCK, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EINVAL):
            return False
        raise
    return True


def _read_pid(fd: int) -> int | None:
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        return int(os.read(fd, 32).split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _alive(pid: int) -> bool:
    if os.name == "nt":  # no way to ask there without a signal; a folder is never blocked forever
        return False
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, the call only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


__all__ = [
    "FolderLock",
    "FolderLocked",
    "atomic_write_bytes",
    "atomic_write_text",
    "check_writable",
    "protected_folder",
    "remove",
    "replace_folder",
    "temporary_name",
]
