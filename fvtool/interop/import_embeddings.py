"""Turn another tool's embeddings into fvtool's embeddings HDF5, with the same checks as `embed`.

Accepted inputs (never unpickled: `.npy`/`.npz` are read with `allow_pickle=False`):
  .npy   an [N, D] array, with the keys in a text file (one per line, `--keys`)
  .npz   arrays `embeddings` (or the one 2-D array) and `keys`, optionally `identities`
  .csv   a header row; a key column (`key`, `path` or `file`), optionally `identity`, the rest numbers
  .h5    named datasets (`--emb-dataset`, default `embeddings`; `--keys-dataset`, default `keys`;
         `--ids-dataset` optional), e.g. from insightface/facenet scripts or fvtool itself

Keys become paths relative to `data_root` with `/` separators (absolute paths inside the root
are relativised; anything outside is refused). Identities come from the file when it has
them, else from the first folder of each key (the LFW/ImageFolder layout).
"""

from __future__ import annotations

import csv
import zipfile
from pathlib import Path, PurePosixPath

import h5py
import numpy as np

from fvtool.atomic import sha256_file
from fvtool.data.embeddings import EmbeddingSet, h5_dataset, h5_strings, real_matrix
from fvtool.errors import InputError

#: what each reader returns: embeddings [N, D], keys, identities (None when the file has none)
_Loaded = tuple[np.ndarray, list[str], list[str] | None]


def _normalise_key(raw: str, data_root: Path | None, where: str) -> str:
    key = raw.strip().replace("\\", "/")
    p = PurePosixPath(key)
    if p.is_absolute():
        if data_root is None:
            raise InputError(f"{where}: key {raw!r} is absolute; pass --data-root to make keys relative to it")
        try:
            key = Path(key).resolve().relative_to(data_root.resolve()).as_posix()
        except ValueError:
            raise InputError(f"{where}: key {raw!r} lies outside the data root {data_root}") from None
    elif ".." in p.parts or not key:
        raise InputError(f"{where}: key {raw!r} is not a relative path inside the data root")
    return key


def _read_npy(path: Path, keys_file: Path | None) -> _Loaded:
    if keys_file is None:
        raise InputError(f"{path}: a .npy file holds no keys; pass --keys FILE (one key per line, in row order)")
    try:
        emb = np.load(path, allow_pickle=False)
    except ValueError as e:  # an object array needs pickle: refuse
        raise InputError(f"{path}: cannot read without unpickling ({e}); save a numeric array") from None
    try:
        keys = [line for line in keys_file.read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{keys_file}: cannot read the keys ({e})") from None
    return emb, keys, None


def _read_npz(path: Path) -> _Loaded:
    try:
        with np.load(path, allow_pickle=False) as z:
            return _npz_arrays(path, z)
    except ValueError as e:  # object arrays need pickle: refuse
        raise InputError(f"{path}: cannot read without unpickling ({e}); store keys as a string array") from None


def _npz_arrays(path: Path, z: np.lib.npyio.NpzFile) -> _Loaded:
    names = set(z.files)
    if "embeddings" in names:
        emb = z["embeddings"]
    else:
        two_d = [n for n in z.files if z[n].ndim == 2]
        if len(two_d) != 1:
            raise InputError(f"{path}: name the embeddings array 'embeddings' (found {sorted(names)})")
        emb = z[two_d[0]]
    if "keys" not in names:
        raise InputError(f"{path}: no 'keys' array (found {sorted(names)})")
    keys = [str(k) for k in z["keys"]]
    ids = [str(i) for i in z["identities"]] if "identities" in names else None
    return emb, keys, ids


def _read_csv(path: Path) -> _Loaded:
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    if len(rows) < 2:
        raise InputError(f"{path}: expected a header row and at least one embedding row")
    header = [h.strip().lower() for h in rows[0]]
    key_col = next((header.index(c) for c in ("key", "path", "file") if c in header), None)
    if key_col is None:
        raise InputError(f"{path}: no key column (name it 'key', 'path' or 'file')")
    id_col = header.index("identity") if "identity" in header else None
    num_cols = [i for i in range(len(header)) if i not in (key_col, id_col)]
    keys, ids, vecs = [], [], []
    for lineno, row in enumerate(rows[1:], start=2):
        if len(row) != len(header):
            raise InputError(f"{path}:{lineno}: {len(row)} fields, header has {len(header)}")
        try:
            vecs.append([float(row[i]) for i in num_cols])
        except ValueError as e:
            raise InputError(f"{path}:{lineno}: {e}") from None
        keys.append(row[key_col])
        if id_col is not None:
            ids.append(row[id_col])
    return np.asarray(vecs, dtype=np.float32), keys, (ids if id_col is not None else None)


def _read_h5(path: Path, emb_ds: str, keys_ds: str, ids_ds: str | None) -> _Loaded:
    try:
        with h5py.File(path, "r") as f:
            if ids_ds is None and "identities" in f:
                ids_ds = "identities"
            ids = h5_strings(h5_dataset(f, ids_ds, path, ndim=1), path) if ids_ds else None
            return h5_dataset(f, emb_ds, path)[()], h5_strings(h5_dataset(f, keys_ds, path, ndim=1), path), ids
    except (OSError, ValueError, TypeError, KeyError, RuntimeError) as e:  # truncated, corrupt, exotic types
        raise InputError(f"{path}: cannot read HDF5 ({e})") from None


def import_embeddings(
    path: str | Path,
    *,
    keys_file: str | Path | None = None,
    data_root: str | Path | None = None,
    emb_dataset: str = "embeddings",
    keys_dataset: str = "keys",
    ids_dataset: str | None = None,
    model_name: str = "",
) -> EmbeddingSet:
    """Read, check and convert; the caller writes the result with `write_embeddings`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path} does not exist")
    root = Path(data_root) if data_root else None
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            emb, keys, ids = _read_npy(path, Path(keys_file) if keys_file else None)
        elif suffix == ".npz":
            emb, keys, ids = _read_npz(path)
        elif suffix == ".csv":
            emb, keys, ids = _read_csv(path)
        elif suffix in (".h5", ".hdf5"):
            emb, keys, ids = _read_h5(path, emb_dataset, keys_dataset, ids_dataset)
        else:
            raise InputError(f"{path}: unsupported file type {suffix!r} (use .npy + --keys, .npz, .csv or .h5)")
    except (OSError, EOFError, ValueError, UnicodeDecodeError, zipfile.BadZipFile, csv.Error) as e:
        what = suffix.lstrip(".")
        raise InputError(f"{path}: cannot read it as {what} ({e}); truncated, or not a {what} file?") from None
    try:
        emb = real_matrix(emb, "embeddings")
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    if emb.ndim != 2:
        raise InputError(f"{path}: embeddings must be a 2-D [N, D] array, got shape {emb.shape}")
    if emb.shape[0] != len(keys):
        raise InputError(f"{path}: {emb.shape[0]} embeddings but {len(keys)} keys")
    keys = [_normalise_key(k, root, f"{path} row {i}") for i, k in enumerate(keys)]
    seen: dict[str, int] = {}
    dups = [k for i, k in enumerate(keys) if seen.setdefault(k, i) != i]
    if dups:
        raise InputError(f"{path}: {len(dups)} duplicate key(s), e.g. {', '.join(dups[:3])}")
    bad = ~np.isfinite(emb).all(axis=1)
    if bad.any():
        named = [keys[i] for i in np.flatnonzero(bad)[:3]]
        raise InputError(f"{path}: {int(bad.sum())} embedding(s) contain NaN/inf, e.g. {', '.join(named)}")
    if ids is None:
        ids = [k.split("/", 1)[0] if "/" in k else "" for k in keys]
        if any(not i for i in ids):
            raise InputError(f"{path}: keys without a folder give no identity; add an 'identities' column/array")
    elif len(ids) != len(keys):
        raise InputError(f"{path}: {len(ids)} identities for {len(keys)} keys")
    attrs = {
        "source": f"import:{suffix.lstrip('.')}",
        "source_path": str(path.resolve()),
        "source_sha256": sha256_file(path),
        "backbone": model_name or "imported",
        "data_root": str(root.resolve()) if root else "",
    }
    return EmbeddingSet(emb, keys, list(ids), ["ok"] * len(keys), attrs)
