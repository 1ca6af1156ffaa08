"""The embeddings file (HDF5, `fvtool-embeddings` version 1): written by `embed`, read by `verify`.

Datasets:
    embeddings   float32 [N, D], chunked
    keys         utf-8 strings [N]: image paths relative to the data root
    identities   utf-8 strings [N]
    status       utf-8 strings [N]: alignment status from the manifest (ok, fallback, ...)
Attributes (all JSON-able): format, version, backbone, checkpoint_sha256, input_size,
normalisation, align_mode, tta, fvtool_version, created, data_root, source ("embed" or
"import:<what>"), plus any extra ones the writer adds.

Why HDF5: one self-describing file with named arrays and metadata, partial reads, and no
pickling (safe to read from others).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from fvtool import __version__
from fvtool.atomic import atomic_path
from fvtool.errors import InputError

FORMAT = "fvtool-embeddings"
VERSION = 1


@dataclass
class EmbeddingSet:
    embeddings: np.ndarray  # [N, D] float32
    keys: list[str]
    identities: list[str]
    status: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.embeddings = real_matrix(self.embeddings, "embeddings")
        n = len(self.keys)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
            raise InputError(f"embeddings have shape {self.embeddings.shape}, expected [{n}, D]")
        if len(self.identities) != n or len(self.status) != n:
            raise InputError("keys, identities and status must have one entry per embedding")
        seen: set[str] = set()
        dup = [k for k in self.keys if k in seen or seen.add(k)]
        if dup:  # the last row would win a key lookup silently (a test file showed EER 0.056 instead of 0.039)
            shown = ", ".join(repr(k) for k in list(dict.fromkeys(dup))[:5])
            raise InputError(f"{len(dup)} duplicate image key(s) ({shown}): each image must have one embedding")

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[1])

    def index(self) -> dict[str, int]:
        return {k: i for i, k in enumerate(self.keys)}

    def attrs_json(self) -> dict[str, Any]:
        """The HDF5 attributes as JSON values (numpy scalars/arrays -> Python, bytes -> text,
        non-finite floats -> null), for the result files that quote them (verify, identify)."""
        out: dict[str, Any] = {}
        for k, v in self.attrs.items():
            if isinstance(v, np.generic):
                v = v.item()
            elif isinstance(v, np.ndarray):
                v = v.tolist()
            elif isinstance(v, bytes):
                v = v.decode("utf-8", "replace")
            if isinstance(v, float) and not np.isfinite(v):
                v = None
            out[k] = v
        return out


def real_matrix(x: Any, what: str) -> np.ndarray:
    """`x` as float32, refusing complex and non-numeric arrays rather than converting them (numpy
    would drop an imaginary part with only a warning, or fail with a bare TypeError/ValueError)."""
    a = np.asarray(x)
    if np.iscomplexobj(a):
        raise InputError(f"{what} are complex-valued ({a.dtype}); face embeddings are real vectors")
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"{what} have non-numeric dtype {a.dtype}")
    return a.astype(np.float32, copy=False)


def write_embeddings(path: str | Path, es: EmbeddingSet) -> None:
    """Write atomically (temporary name, then rename)."""
    attrs = {
        "format": FORMAT,
        "version": VERSION,
        "fvtool_version": __version__,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    attrs.update(es.attrs)
    str_dt = h5py.string_dtype("utf-8")
    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        n, d = es.embeddings.shape
        f.create_dataset(
            "embeddings", data=es.embeddings, chunks=(max(1, min(n, 4096)), d) if n else None
        )
        f.create_dataset("keys", data=np.array(es.keys, dtype=object), dtype=str_dt)
        f.create_dataset("identities", data=np.array(es.identities, dtype=object), dtype=str_dt)
        f.create_dataset("status", data=np.array(es.status, dtype=object), dtype=str_dt)
        for k, v in attrs.items():
            f.attrs[k] = "" if v is None else v


def h5_dataset(f: h5py.File, name: str, path: Path, ndim: int | None = None) -> h5py.Dataset:
    """Dataset `name` of an open HDF5 file, refusing a group or link under that name (a crafted file)
    and, with `ndim`, a dataset of another rank."""
    try:
        obj = f.get(name)
    except (KeyError, OSError, ValueError) as e:  # a dangling or external link
        raise InputError(f"{path}: cannot open {name!r} ({e})") from None
    if obj is None:
        raise InputError(f"{path}: no dataset {name!r} (found {sorted(f.keys())})")
    if not isinstance(obj, h5py.Dataset):
        raise InputError(f"{path}: {name!r} is an HDF5 {type(obj).__name__.lower()}, not a dataset")
    if ndim is not None and obj.ndim != ndim:
        raise InputError(f"{path}: dataset {name!r} has {obj.ndim} dimensions, expected {ndim}")
    return obj


def h5_strings(ds: h5py.Dataset, path: Path) -> list[str]:
    """A 1-D HDF5 string dataset as Python strings (UTF-8); InputError for other contents."""
    values = ds[()]
    if not (isinstance(values, np.ndarray) and values.dtype.kind in "OSU"):
        raise InputError(f"{path}: dataset {ds.name!r} does not hold strings (dtype {ds.dtype})")
    try:
        return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in values]
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: dataset {ds.name!r} holds text that is not UTF-8 ({e})") from None


def read_embeddings(path: str | Path) -> EmbeddingSet:
    """Read and check an embeddings file; every problem is an InputError naming `path`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embeddings file {path} is a folder" if path.is_dir() else
                         f"embeddings file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise InputError(f"{path}: not an {FORMAT} file (format attribute {f.attrs.get('format')!r})")
            missing = [k for k in ("embeddings", "keys", "identities", "status") if k not in f]
            if missing:
                raise InputError(f"{path}: missing dataset(s) {', '.join(missing)}")
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            emb = h5_dataset(f, "embeddings", path, ndim=2)[()]
            keys, identities, status = (h5_strings(h5_dataset(f, k, path, ndim=1), path)
                                        for k in ("keys", "identities", "status"))
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:  # truncated, corrupt, exotic types
        raise InputError(f"{path}: cannot read HDF5 ({e})") from None
    try:
        return EmbeddingSet(embeddings=emb, keys=keys, identities=identities, status=status, attrs=attrs)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
