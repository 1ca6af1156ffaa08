"""Write outputs so that an interrupted run never leaves a file that looks complete.

Every stage writes to a temporary name in the destination folder and renames it into place
(rename is atomic on one filesystem). Readers therefore see either the old file, no file,
or the complete new file, never a truncated one. The file and then its folder are fsynced around
the rename, so a power loss cannot leave an empty or partial file under the final name either.

Temporary names carry the writer's process id (`.fvtool-tmp-<pid>-...`), so a stage that cleans up
after a killed run (`remove_stale_temporaries`) removes only the temporaries of processes that are
gone, never a concurrent run's file in flight. `output_lock` serialises writers of one output
(`fvtool embed`, the workspace's latest.json) across processes.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fvtool.errors import InputError

TMP_MARK = ".fvtool-tmp-"
_OWNED = re.compile(re.escape(TMP_MARK) + r"(\d+)-")
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_output_file(dest: str | os.PathLike[str]) -> Path:
    """`dest` as a Path, or InputError if it is an existing folder (a file output cannot replace it)."""
    dest = Path(dest)
    if dest.is_dir():
        raise InputError(f"output {dest} is a folder; give a file name")
    return dest


def make_folder(folder: str | os.PathLike[str]) -> Path:
    """Create `folder` (and its parents) for outputs; InputError if it or a parent is a file."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        raise InputError(f"output folder {folder} cannot be created: it or one of its parents is a file") from None
    return folder


def tmp_prefix() -> str:
    """Prefix of this process's temporary names: `.fvtool-tmp-<pid>-` (see `remove_stale_temporaries`)."""
    return f"{TMP_MARK}{os.getpid()}-"


def fsync_path(path: str | os.PathLike[str]) -> None:
    """Flush a file's (or a folder's) data and metadata to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as e:  # some filesystems cannot fsync a folder; the data itself was flushed
        if e.errno not in (errno.EINVAL, errno.ENOTSUP, errno.EBADF):
            raise
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success fsync it, rename it to `dest` and fsync the
    folder; on error delete it.

    The temporary name keeps the suffix of `dest` so libraries that look at it (PIL, h5py) work.
    """
    dest = check_output_file(dest)
    make_folder(dest.parent)
    fd, tmp = tempfile.mkstemp(prefix=tmp_prefix(), suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        fsync_path(tmp_path)  # the bytes reach the disk before the name does
        os.replace(tmp_path, dest)
        fsync_path(dest.parent)  # and the rename itself
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


def write_bytes(dest: str | os.PathLike[str], data: bytes) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_bytes(data)


def write_text(dest: str | os.PathLike[str], text: str) -> None:
    write_bytes(dest, text.encode("utf-8"))


def write_json(dest: str | os.PathLike[str], obj: Any, indent: int | None = 2) -> None:
    """Write JSON atomically; NaN/inf are refused (they are not JSON and hide bugs)."""
    write_text(dest, json.dumps(obj, indent=indent, allow_nan=False, sort_keys=False) + "\n")


def _alive(pid: int) -> bool:
    """Whether process `pid` exists on this machine (this process counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporary files left by killed runs (recursively); returns how many were removed.

    Only temporaries whose owner is gone: a name with a process id (`.fvtool-tmp-<pid>-...`) is kept
    while that process runs (a concurrent run writing into the same folder), and removed once it
    has ended. Names without one come from fvtool versions before the id was added and are removed.
    Process ids are those of this machine: do not share one output folder between machines.
    """
    n = 0
    for p in Path(folder).rglob(f"{TMP_MARK}*"):
        m = _OWNED.match(p.name)
        if (m and _alive(int(m.group(1)))) or not p.is_file():
            continue
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


@contextlib.contextmanager
def output_lock(target: str | os.PathLike[str], *, wait_s: float = 0.0) -> Iterator[Path]:
    """Hold an exclusive lock on `target` (the lock file `<target>.lock`) for the block.

    Why a lock file beside the output rather than the output or its partial file: the output is
    replaced by rename and the partial file is created and deleted by the holder, so neither can
    carry a lock for the whole write; `fcntl.flock` on a file that stays put can. The lock is
    released by the kernel when the process dies (kill -9 included), so a stale lock file never
    blocks a later run. `wait_s` = 0: refuse at once if another process holds it (InputError, exit
    code 3, naming its pid); > 0: wait up to that long first. The lock file is removed on release.
    """
    target = Path(target)
    lock = target.with_name(target.name + ".lock")
    make_folder(lock.parent)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666 & ~_UMASK)
        except OSError as e:  # a read-only folder, a folder named like the lock file, ...
            raise InputError(f"cannot create the lock file {lock} for {target} ({e.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            if time.monotonic() < deadline:
                time.sleep(0.05)
                continue
            raise InputError(f"{target} is being written by another fvtool process"
                             f"{f' (pid {holder})' if holder.isdigit() else ''}; "
                             "wait for it to finish or choose another output") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino  # not unlinked by a releasing holder meanwhile
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_sha256(obj: Any) -> str:
    """Hash of a JSON-able object independent of key order and whitespace: the content hash that
    protocol and split files carry and their readers verify."""
    return sha256_bytes(json.dumps(obj, separators=(",", ":"), sort_keys=True).encode())
