"""Plain pair lists: `image_a image_b label` lines (the course's verification list, seed 002), or
`image_a image_b` without labels (its unlabelled test list, scored into a submission CSV).

Format read: one pair per line; fields separated by whitespace or commas; an optional header line
(a first line that names no image files); labels 1 (same person) / 0 (different). Paths are
relative to the data folder (`ver_data`), or all start with that one folder's name, which is
dropped. A labelled list becomes a one-fold pairs protocol; because the images have no identity
names, identities are the connected groups of same-labelled pairs (`pair-group-N`), and a
different-labelled pair inside one group is a contradiction and refused.

Submission CSV (`write_submission`): header `ID,Label`, one row per pair in list order, ID the
0-based pair index and Label the score (higher = more likely the same person). The seed describes
the sample submission only as "the first column is the index"; this is the usual Kaggle layout.
"""

from __future__ import annotations

import csv
import io
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.atomic import write_text
from fvtool.data.scan import IMAGE_EXTENSIONS
from fvtool.errors import InputError
from fvtool.protocols.model import Protocol

_SPLIT = re.compile(r"[,\s]+")


@dataclass
class PairList:
    path: Path
    a: list[str]
    b: list[str]
    labels: np.ndarray | None  # bool per pair, None for an unlabelled list


def looks_like_pair_list(path: Path) -> bool:
    """True when the first data line's first two fields name image files."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for _ in range(3):
            fields = [x for x in _SPLIT.split(f.readline().strip()) if x]
            if len(fields) >= 2 and all(Path(x).suffix.lower() in IMAGE_EXTENSIONS for x in fields[:2]):
                return True
    return False


def read_pair_list(path: str | Path, data_root: str | Path | None = None) -> PairList:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"pair list {path} does not exist")
    prefix = Path(data_root).name + "/" if data_root is not None else None
    a: list[str] = []
    b: list[str] = []
    labels: list[int] = []
    n_fields = None
    for lineno, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        fields = [x for x in _SPLIT.split(line.strip()) if x]
        if not fields:
            continue
        is_image = [Path(x).suffix.lower() in IMAGE_EXTENSIONS for x in fields[:2]]
        if not a and not all(is_image):
            continue  # header line
        where = f"{path}:{lineno}"
        if len(fields) not in (2, 3) or not all(is_image):
            raise InputError(f"{where}: expected `image_a image_b [label]`, got {line.strip()[:80]!r}")
        if n_fields is None:
            n_fields = len(fields)
        elif len(fields) != n_fields:
            raise InputError(f"{where}: {len(fields)} fields, earlier lines have {n_fields} (labelled and unlabelled "
                             "lines mixed)")
        ka, kb = (_key(x, prefix, where) for x in fields[:2])
        a.append(ka)
        b.append(kb)
        if len(fields) == 3:
            if fields[2] not in ("0", "1"):
                raise InputError(f"{where}: label must be 1 (same) or 0 (different), got {fields[2]!r}")
            labels.append(int(fields[2]))
    if not a:
        raise InputError(f"{path}: no `image_a image_b [label]` lines")
    firsts = {k.split("/")[0] for k in a + b}
    if prefix is None and len(firsts) == 1 and all(k.count("/") == 1 for k in a + b):
        a, b = [k.split("/", 1)[1] for k in a], [k.split("/", 1)[1] for k in b]  # `ver_data/x.jpg` -> `x.jpg`
    return PairList(path, a, b, np.asarray(labels, dtype=bool) if n_fields == 3 else None)


def _key(text: str, prefix: str | None, where: str) -> str:
    key = text.replace("\\", "/")
    if prefix and key.startswith(prefix):
        key = key[len(prefix):]
    if key.startswith("/") or ".." in key.split("/"):
        raise InputError(f"{where}: image path {text!r} is not relative to the data folder")
    return key


def pair_list_protocol(pairs: PairList, name: str | None = None) -> Protocol:
    """A labelled list as a one-fold pairs protocol (identities: groups joined by same-labelled pairs)."""
    if pairs.labels is None:
        raise InputError(f"{pairs.path} has no labels (`image_a image_b` lines): score it with "
                         "`fvtool interop pair-scores` instead of verifying it")
    images = sorted(set(pairs.a) | set(pairs.b))
    idx = {k: i for i, k in enumerate(images)}
    a = np.asarray([idx[k] for k in pairs.a], dtype=np.int64)
    b = np.asarray([idx[k] for k in pairs.b], dtype=np.int64)
    parent = list(range(len(images)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for i, j, s in zip(a, b, pairs.labels, strict=True):
        if s:
            parent[find(int(i))] = find(int(j))
    roots = [find(i) for i in range(len(images))]
    for n, (i, j, s) in enumerate(zip(a, b, pairs.labels, strict=True)):
        if not s and roots[i] == roots[j]:
            raise InputError(f"{pairs.path}: pair {n + 1} ({images[i]}, {images[j]}) is labelled different, but "
                             "same-labelled pairs join them into one person")
    group = {r: g for g, r in enumerate(dict.fromkeys(roots))}
    try:
        return Protocol(kind="pairs", name=name or pairs.path.stem, images=images,
                        identities=[f"pair-group-{group[r]}" for r in roots], a=a, b=b, same=pairs.labels,
                        fold=np.zeros(len(a), dtype=np.int64), source=f"pair-list:{pairs.path.name}")
    except InputError as e:  # the rules every protocol obeys (e.g. no pair of an image with itself)
        raise InputError(f"{pairs.path}: {e}") from None


def write_submission(path: str | Path, scores: np.ndarray) -> None:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["ID", "Label"])
    for i, s in enumerate(scores):
        w.writerow([i, f"{float(s):.6f}"])
    write_text(path, buf.getvalue())
