"""Write outputs so that an interrupted run never leaves a file that looks complete.

Every stage writes to a temporary name in the destination folder and renames it into place
(rename is atomic on one filesystem). Readers therefore see either the old file, no file,
or the complete new file, never a truncated one.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

TMP_MARK = ".fvtool-tmp-"
_UMASK = os.umask(0)
os.umask(_UMASK)


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `dest`; on success rename it to `dest`, on error delete it.

    The temporary name keeps the suffix of `dest` so libraries that look at it (PIL, h5py) work.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=TMP_MARK, suffix=dest.suffix, dir=dest.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        os.replace(tmp_path, dest)
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


def remove_stale_temporaries(folder: str | os.PathLike[str]) -> int:
    """Delete temporaries left by a killed run (recursively); returns how many were removed."""
    n = 0
    for p in Path(folder).rglob(f"{TMP_MARK}*"):
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
            n += 1
    return n


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
