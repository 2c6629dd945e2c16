"""Atomic file writes (a crash never leaves a half-written file or directory behind), the exclusive lock a run
holds on its output directory, and one-line warnings to the user."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import shutil
import socket
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

RANK_VARIABLES = ("RANK", "PMI_RANK", "OMPI_COMM_WORLD_RANK", "MV2_COMM_WORLD_RANK")
LOCK_NAME = ".alignkit.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Open a temporary file beside ``path``; on success fsync it and rename it over ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp creates 0600; give the usual permissions
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_file(path) as fh:
        fh.write(text)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


def write_jsonl(path: str | os.PathLike, rows: Any) -> None:
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory beside ``path``; on success it replaces ``path`` in one rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        _fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def launch_rank() -> int:
    """This process's rank as the launcher (torchrun, accelerate launch, mpirun) set it; 0 when not launched."""
    for name in RANK_VARIABLES:
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 0


def warn(message: str) -> None:
    """One line on stderr, ``alignkit: warning: <message>``, from the main process only."""
    if launch_rank() == 0:
        print(f"alignkit: warning: {' '.join(message.split())}", file=sys.stderr, flush=True)


class DirectoryInUse(OSError):
    """Another process holds the exclusive lock on a directory (an OSError, so the CLI prints it as one line)."""


def _holder(fd: int) -> str:
    """Who holds the lock, as the lock file says (the holder writes it right after locking)."""
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        info = json.loads(os.read(fd, 4096).decode() or "{}")
    except ValueError:
        info = {}
    if not info.get("pid"):
        return "holder unknown: it may be starting"
    return f"pid {info['pid']} on host {info.get('host', '?')}, started {info.get('started', '?')}"


@contextlib.contextmanager
def exclusive_lock(directory: str | os.PathLike, purpose: str = "alignkit run") -> Iterator[Path]:
    """Hold an exclusive ``flock`` on ``directory/.alignkit.lock`` for the ``with`` block, with this process's pid,
    host and start time written into it. The kernel drops the lock when the process ends, crash or kill -9
    included, so a stale lock file never blocks a later run. Another holder: :class:`DirectoryInUse` at once,
    naming it. Without ``fcntl`` (not POSIX) nothing is locked."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield Path(directory) / LOCK_NAME
        return
    path = Path(directory) / LOCK_NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666 & ~_umask())
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DirectoryInUse(f"{directory} is in use by another {purpose} ({_holder(fd)}; lock file {path}); "
                                 "wait for it to finish or stop it, or choose another output_dir") from None
        started = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "started": started}).encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # released: nobody holds it
    finally:
        os.close(fd)  # closing the descriptor releases the lock
