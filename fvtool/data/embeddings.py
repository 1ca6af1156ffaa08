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
        self.embeddings = np.asarray(self.embeddings, dtype=np.float32)
        n = len(self.keys)
        if self.embeddings.ndim != 2 or self.embeddings.shape[0] != n:
            raise InputError(f"embeddings have shape {self.embeddings.shape}, expected [{n}, D]")
        if len(self.identities) != n or len(self.status) != n:
            raise InputError("keys, identities and status must have one entry per embedding")

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


def _strings(ds: h5py.Dataset) -> list[str]:
    return [s.decode("utf-8") if isinstance(s, bytes) else str(s) for s in ds[()]]


def read_embeddings(path: str | Path) -> EmbeddingSet:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"embeddings file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if f.attrs.get("format") != FORMAT:
                raise InputError(f"{path}: not an {FORMAT} file (format attribute {f.attrs.get('format')!r})")
            missing = [k for k in ("embeddings", "keys", "identities", "status") if k not in f]
            if missing:
                raise InputError(f"{path}: missing dataset(s) {', '.join(missing)}")
            attrs = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in f.attrs.items()}
            return EmbeddingSet(
                embeddings=f["embeddings"][()],
                keys=_strings(f["keys"]),
                identities=_strings(f["identities"]),
                status=_strings(f["status"]),
                attrs=attrs,
            )
    except OSError as e:
        raise InputError(f"{path}: cannot read HDF5 ({e})") from None
