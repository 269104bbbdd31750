"""Atomic writes: a temporary file in the target folder renamed into place, with signals held across the
rename; inputs locked and checked unchanged; the count of outputs committed (read by the CLI's exit status).
"""

from __future__ import annotations

import errno
import os
import secrets
import signal
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ..errors import CheckpointError, OutputError
from ..interruption import CommitLog, refuse_commit_if_stopping
from .outputs import refuse_unreplaceable


def current_umask() -> int:
    """The process umask (reading it means setting it, so it is set straight back)."""
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _default_mode(existing: Path) -> int:
    if existing.exists():
        return existing.stat().st_mode & 0o7777
    return 0o666 & ~current_umask()


TEMP_SUFFIX = ".rnninit-tmp"  # a temporary file or folder being written


OLD_SUFFIX = ".rnninit-old"  # a replaced model folder on its way out (where a folder swap is not atomic)


def temporary_path(folder: Path, suffix: str = TEMP_SUFFIX) -> Path:
    """A fresh name in `folder` of fixed length, whatever OUTPUT's name: a dot, 12 random hex digits and
    `suffix` (25 bytes), so a 255-byte OUTPUT name still works and a leftover is recognisable."""
    return folder / f".{secrets.token_hex(6)}{suffix}"


def create_temporary_file(folder: Path) -> tuple[int, Path]:
    """A new, empty, private temporary file in `folder`: (descriptor, path)."""
    while True:
        path = temporary_path(folder)
        try:
            return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), path
        except FileExistsError:
            continue


def create_temporary_folder(folder: Path) -> Path:
    while True:
        path = temporary_path(folder)
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            continue
        return path


@dataclass(frozen=True)
class FileIdentity:
    """What says a path still holds the file rnninit read: the same inode, size and modification time."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, status: os.stat_result) -> FileIdentity:
        return cls(status.st_dev, status.st_ino, status.st_size, status.st_mtime_ns)


def refuse_changed(path: Path, expected: FileIdentity) -> None:
    """--in-place: refuse to replace INPUT if another writer changed or replaced it since it was read."""
    try:
        now: FileIdentity | None = FileIdentity.of(os.stat(path))
    except OSError:
        now = None
    if now != expected:
        raise OutputError(f"{path} changed while rnninit was rewriting it (another writer?); nothing was written")


@contextmanager
def locked_input(path: Path) -> Iterator[int]:
    """--in-place: an exclusive lock (flock) on INPUT, held until the rewrite is done, so concurrent
    in-place runs on one file (or one model folder) take turns. Yields a read-only descriptor of the
    file (or folder) that is at `path` while the lock is held: a run that waited for the lock reads the
    file the previous run wrote."""
    import fcntl

    while True:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            try:
                fcntl.flock(descriptor, fcntl.LOCK_EX)
            except OSError as error:
                if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                    raise
                break  # a file system without locks: the identity check before the rename still applies
            opened = os.fstat(descriptor)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                raise CheckpointError(f"{path}: no such file (it was removed while rnninit waited for it)") from None
            if (now.st_dev, now.st_ino) == (opened.st_dev, opened.st_ino):
                break
        except BaseException:
            os.close(descriptor)
            raise
        os.close(descriptor)  # replaced while we waited (another run finished): lock the new file
    try:
        yield descriptor
    finally:
        os.close(descriptor)


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextmanager
def signals_held(*, commit: bool = True) -> Iterator[None]:
    """Hold SIGINT and SIGTERM (their handlers run when the block ends) while outputs are renamed into
    place, so an interruption lands before the renames (nothing written) or after them (all written),
    never between; with `commit`, a stop asked for earlier (see interruption.py) raises KeyboardInterrupt before
    any rename. The cleanup after a failure holds them with commit=False, so that a signal cannot cut it short.
    Only the main thread can change handlers; elsewhere this holds nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous: dict[int, Any] = {}

    def hold(signum: int, _frame: object) -> None:
        received.append(signum)

    try:
        for signum in _HELD_SIGNALS:
            if signal.getsignal(signum) is not None:  # None: installed outside Python, leave it alone
                previous[signum] = signal.signal(signum, hold)
        if commit:
            refuse_commit_if_stopping()
        yield
    finally:
        _restore_handlers(previous)
        for signum in dict.fromkeys(received):
            handler = previous[signum]
            if callable(handler):
                handler(signum, None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(signum)


def _restore_handlers(previous: dict[int, Any]) -> None:
    """Put every handler of `previous` back. A handler already put back can run between two of these calls and
    raise (a program's SIGTERM handler raising SystemExit): the others are put back all the same, then its
    exception goes on."""
    raised: BaseException | None = None
    while True:
        try:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            break
        except BaseException as error:  # re-raised below, once every handler is back
            raised = raised or error
    if raised is not None:
        raise raised


@contextmanager
def cleanup_held() -> Iterator[None]:
    """A failed write's cleanup: signals held (not re-checking for a stop), so that none leaves a temporary
    file or folder behind."""
    with signals_held(commit=False):
        yield


def atomic_write(output: str | Path, write: Callable[[BinaryIO], None], *,
                 expect: FileIdentity | None = None) -> None:
    """Call `write` on a temporary file in OUTPUT's folder, fsync it, then rename it onto OUTPUT.

    On any error the temporary file is removed and OUTPUT is left as it was. Right before the rename,
    OUTPUT is checked again (still replaceable; with `expect`, --in-place, still the file that was read).
    """
    out = Path(output)
    mode = _default_mode(out)
    temp: Path | None = None
    try:
        while True:  # the name is known before the file exists: a Ctrl-C right after its creation removes it
            temp = temporary_path(out.parent)
            try:
                descriptor = os.open(temp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
                break
            except FileExistsError:
                temp = None  # another writer's file
            except OSError as error:
                temp = None
                raise OutputError(f"cannot write in {out.parent}: {error.strerror or error}") from None
        with os.fdopen(descriptor, "w+b") as sink:
            write(sink)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temp, mode)
        with signals_held():
            refuse_unreplaceable(out)
            if expect is not None:
                refuse_changed(out, expect)
            os.replace(temp, out)
            CommitLog.record()
    except BaseException as error:
        if temp is None:
            raise
        with cleanup_held():
            temp.unlink(missing_ok=True)
        failed = write_failure(error)
        if failed is not None:
            raise OutputError(f"cannot write {out}: {failed.strerror or failed}") from None
        raise
    fsync_folder(out.parent)


def write_failure(error: BaseException) -> OSError | None:
    """The OSError behind a failed write (a full disk, a file size limit...): the error itself, or the
    one that torch.save's zip writer turned into a RuntimeError ("unexpected pos ...")."""
    if isinstance(error, OSError):
        return error
    if isinstance(error, RuntimeError) and isinstance(error.__context__, OSError):
        return error.__context__
    return None


def flush_early(sink: BinaryIO) -> None:
    """fdatasync what is written so far (the writer fsyncs again once complete, before the rename: that fsync then
    waits only for what came after); not a file (a pipe, a buffer): nothing."""
    try:
        sink.flush()
        os.fdatasync(sink.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def fsync_folder(folder: Path) -> None:
    try:
        descriptor = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(descriptor)
    except OSError:
        pass
    finally:
        os.close(descriptor)
