"""The official LFW protocol text files: View 2 `pairs.txt` and View 1 `pairsDevTrain/Test.txt`.

Format (LFW README): the first line gives the structure, `folds<TAB>n` (View 2: `10\t300`) or a
single `n` (View 1: one set, e.g. `1100`). Then, per fold, n same-person lines `name\ti\tj` followed
by n different-person lines `name1\ti\tname2\tj`. Numbers are 1-based image numbers; image i of
`name` is the file `name/name_%04d.jpg`.

Why so strict: published LFW numbers are only comparable on exactly these pairs, so parsing
rejects anything that would not write back byte for byte (wrong field counts, leading zeros,
truncated files, duplicate pairs) and reports every problem with its line number. Folds of the
official View 2 file become `Protocol.fold` 0..9 and the file order of pairs is kept, which makes
`format_lfw_pairs(read_lfw_pairs(f))` byte-identical to `f` (md5 9f1ba174e4e1c508ff7cdf10ac338a7d).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fvtool.atomic import write_text
from fvtool.errors import InputError
from fvtool.protocols.model import Protocol, resolve_keys

#: folder of the packaged official files (see lfw_files/README.md)
PACKAGED_DIR = Path(__file__).resolve().parent / "lfw_files"
OFFICIAL_MD5 = {
    "pairs.txt": "9f1ba174e4e1c508ff7cdf10ac338a7d",
    "pairsDevTrain.txt": "4f27cbf15b2da4a85c1907eb4181ad21",
    "pairsDevTest.txt": "5132f7440eb68cf58910c8a45a2ac10b",
}
_NUMBER = re.compile(r"[1-9][0-9]*")
_KEY = re.compile(r"^(?P<name>[^/]+)/(?P=name)_(?P<num>[0-9]{4,})\.[A-Za-z0-9]+$")
_MAX_SHOWN = 10


@dataclass(frozen=True)
class LfwHeader:
    folds: int
    per_fold: int  # same pairs per fold (= different pairs per fold)
    single: bool  # True for the one-number View 1 header


def lfw_key(name: str, number: int, ext: str = ".jpg") -> str:
    """The image key LFW uses for image `number` (1-based) of `name`."""
    return f"{name}/{name}_{number:04d}{ext}"


def parse_lfw_key(key: str) -> tuple[str, int]:
    """(name, number) of an LFW-style key (any extension); InputError for other layouts."""
    m = _KEY.match(key)
    if not m:
        raise InputError(
            f"image key {key!r} does not follow the LFW layout <Name>/<Name>_NNNN.<ext>, "
            "so this protocol cannot be written as an LFW pairs file"
        )
    return m.group("name"), int(m.group("num"))


def packaged_file(name: str = "pairs.txt") -> Path:
    """Path of a packaged official file (`pairs.txt`, `pairsDevTrain.txt`, `pairsDevTest.txt`)."""
    if name not in OFFICIAL_MD5:
        raise InputError(f"no packaged LFW file {name!r} (have {', '.join(OFFICIAL_MD5)})")
    p = PACKAGED_DIR / name
    if not p.is_file():
        raise InputError(f"packaged LFW file {p} is missing: the fvtool installation is incomplete")
    return p


def _parse_header(line: str, where: str) -> LfwHeader:
    parts = line.split("\t")
    if all(_NUMBER.fullmatch(p) for p in parts) and len(parts) in (1, 2):
        if len(parts) == 1:
            return LfwHeader(1, int(parts[0]), single=True)
        return LfwHeader(int(parts[0]), int(parts[1]), single=False)
    raise InputError(
        f"{where}:1: expected the LFW header `folds<TAB>pairs_per_fold` (View 2, e.g. `10\\t300`) "
        f"or `pairs_per_class` (View 1, e.g. `1100`), got {line!r}"
    )


def _check_name(name: str) -> str | None:
    if not name or name in (".", "..") or "/" in name or "\\" in name or name != name.strip():
        return f"invalid person name {name!r}"
    return None


def parse_lfw_pairs(text: str, *, source: str = "pairs.txt", name: str | None = None) -> Protocol:
    """Parse LFW pairs text into a `pairs` Protocol; all problems are reported with line numbers."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()  # the final newline
    crlf = bool(lines) and all(ln.endswith("\r") for ln in lines)
    if crlf:
        lines = [ln[:-1] for ln in lines]
    while lines and not lines[-1].strip():
        lines.pop()  # tolerate trailing blank lines (they carry nothing)
    if not lines:
        raise InputError(f"{source}: empty file (expected an LFW pairs file)")
    header = _parse_header(lines[0], source)
    per_class = header.per_fold
    expected = header.folds * 2 * per_class
    body = lines[1:]

    errors: list[str] = []

    def err(lineno: int, msg: str) -> None:
        errors.append(f"{source}:{lineno}: {msg}")

    if len(body) != expected:
        what = "truncated?" if len(body) < expected else "extra lines?"
        shape = f"{per_class} per class" if header.single else f"{header.folds} folds x 2 x {per_class}"
        err(len(lines) if len(body) > expected else len(lines) + 1,
            f"expected {expected} pair lines after the header ({shape}), found {len(body)} ({what})")

    keys: dict[str, int] = {}
    a: list[int] = []
    b: list[int] = []
    same: list[bool] = []
    fold: list[int] = []
    seen: dict[tuple[int, int], int] = {}

    def key_index(person: str, num: str) -> int:
        k = lfw_key(person, int(num))
        if k not in keys:
            keys[k] = len(keys)
        return keys[k]

    for pos, line in enumerate(body[:expected]):
        lineno = pos + 2
        f, r = divmod(pos, 2 * per_class)
        is_same = r < per_class
        fields = line.split("\t")
        want = 3 if is_same else 4
        if len(fields) != want:
            kind = "same-person line `name\\ti\\tj`" if is_same else "different-person line `name1\\ti\\tname2\\tj`"
            where = f"fold {f + 1}, " if not header.single else ""
            err(lineno, f"expected a {kind} ({where}pair {r + 1} of {2 * per_class}), got {len(fields)} "
                        f"tab-separated fields: {line!r}")
            continue
        names = [fields[0]] if is_same else [fields[0], fields[2]]
        nums = [fields[1], fields[2]] if is_same else [fields[1], fields[3]]
        bad = [m for m in (_check_name(n) for n in names) if m]
        bad += [f"image number {n!r} is not a positive integer without leading zeros"
                for n in nums if not _NUMBER.fullmatch(n)]
        if bad:
            err(lineno, "; ".join(bad))
            continue
        if is_same and nums[0] == nums[1]:
            err(lineno, f"same-person pair compares image {nums[0]} of {names[0]} with itself")
            continue
        if not is_same and names[0] == names[1]:
            err(lineno, f"different-person pair names the same person {names[0]!r} twice")
            continue
        i = key_index(names[0], nums[0])
        j = key_index(names[-1], nums[1])
        pair = (min(i, j), max(i, j))
        if pair in seen:
            err(lineno, f"duplicate pair (same images as line {seen[pair]})")
            continue
        seen[pair] = lineno
        a.append(i)
        b.append(j)
        same.append(is_same)
        fold.append(f)

    if errors:
        shown = "\n  ".join(errors[:_MAX_SHOWN])
        more = f"\n  ... and {len(errors) - _MAX_SHOWN} more" if len(errors) > _MAX_SHOWN else ""
        raise InputError(f"{source}: {len(errors)} problem(s) in LFW pairs file:\n  {shown}{more}")

    images = list(keys)
    identities = [k.split("/", 1)[0] for k in images]
    md5 = hashlib.md5(text.encode("utf-8")).hexdigest()
    base = Path(source).name
    official = md5 in OFFICIAL_MD5.values()
    view = 1 if header.single else 2
    if name is None:
        name = {"pairsDevTrain.txt": "lfw-view1-train", "pairsDevTest.txt": "lfw-view1-test"}.get(
            base, "lfw-view2" if view == 2 else "lfw-view1")
    return Protocol(
        kind="pairs",
        name=name,
        images=images,
        identities=identities,
        a=np.asarray(a, dtype=np.int64),
        b=np.asarray(b, dtype=np.int64),
        same=np.asarray(same, dtype=bool),
        fold=np.asarray(fold, dtype=np.int64),
        source=f"lfw:{base}",
        extra={"lfw": {"view": view, "file": base, "md5": md5, "official": official,
                       "folds": header.folds, "per_fold": per_class, "single_header": header.single,
                       "crlf": crlf}},
    )


def read_lfw_pairs(path: str | Path, *, name: str | None = None) -> Protocol:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise InputError(f"LFW pairs file {path} does not exist") from None
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a text file ({e})") from None
    return parse_lfw_pairs(text, source=str(path), name=name)


def format_lfw_pairs(protocol: Protocol, *, single_header: bool | None = None) -> str:
    """LFW text for a pairs protocol whose folds each hold n same then n different pairs, in order.

    `single_header` chooses the View 1 one-number header (default: as read, else View 2 style
    for several folds). Raises InputError when the protocol does not have that structure or its
    keys are not LFW-style, instead of writing a file that other tools would misread.
    """
    if protocol.kind != "pairs":
        raise InputError(f"protocol {protocol.name!r} is {protocol.kind!r}; only pairs protocols have an LFW form")
    m = len(protocol.a)
    if m == 0:
        raise InputError(f"protocol {protocol.name!r} has no pairs")
    k = protocol.n_folds
    if m % (2 * k):
        raise InputError(f"protocol {protocol.name!r}: {m} pairs cannot form {k} folds of n same + n different")
    n = m // (2 * k)
    expected_fold = np.repeat(np.arange(k), 2 * n)
    expected_same = np.tile(np.r_[np.ones(n, bool), np.zeros(n, bool)], k)
    if not (np.array_equal(protocol.fold, expected_fold) and np.array_equal(protocol.same, expected_same)):
        raise InputError(
            f"protocol {protocol.name!r} is not in LFW order: each fold 0..{k - 1} must hold {n} same-person "
            "pairs followed by the same number of different-person pairs, folds in order"
        )
    if single_header is None:
        single_header = bool(protocol.extra.get("lfw", {}).get("single_header", False)) and k == 1
    if single_header and k != 1:
        raise InputError("the one-number (View 1) header needs a single-fold protocol")
    parsed = [parse_lfw_key(key) for key in protocol.images]
    out = [f"{n}" if single_header else f"{k}\t{n}"]
    for i, j, s in zip(protocol.a.tolist(), protocol.b.tolist(), protocol.same.tolist(), strict=True):
        (n1, i1), (n2, j2) = parsed[i], parsed[j]
        if s:
            if n1 != n2:
                raise InputError(f"protocol {protocol.name!r}: same-person pair joins {n1!r} and {n2!r}")
            out.append(f"{n1}\t{i1}\t{j2}")
        else:
            out.append(f"{n1}\t{i1}\t{n2}\t{j2}")
    return "\n".join(out) + "\n"


def write_lfw_pairs(path: str | Path, protocol: Protocol, *, single_header: bool | None = None) -> None:
    write_text(path, format_lfw_pairs(protocol, single_header=single_header))


def read_packaged(name: str = "pairs.txt") -> Protocol:
    """The packaged official file as a Protocol, after checking it is unmodified (md5)."""
    p = packaged_file(name)
    data = p.read_bytes()
    md5 = hashlib.md5(data).hexdigest()
    if md5 != OFFICIAL_MD5[name]:
        raise InputError(f"packaged {p} has md5 {md5}, expected {OFFICIAL_MD5[name]}: the file was modified")
    proto = parse_lfw_pairs(data.decode("utf-8"), source=str(p))
    proto.source = f"lfw:{name} (packaged official file)"
    return proto


def check_images(protocol: Protocol, keys: list[str], *, source: str = "") -> np.ndarray:
    """Indices of the protocol's images in `keys`; InputError naming missing images (first few + total)."""
    what = f"{source or protocol.source or protocol.name}"
    return resolve_keys(protocol.images, keys, what=what)


def fold_identity_overlap(protocol: Protocol) -> dict[str, list[int]]:
    """Identities that occur in more than one fold (name -> folds); empty for the official View 2."""
    ids = np.asarray(protocol.identities)
    seen: dict[str, set[int]] = {}
    for arr in (protocol.a, protocol.b):
        for ident, f in zip(ids[arr].tolist(), protocol.fold.tolist(), strict=True):
            seen.setdefault(ident, set()).add(f)
    return {k: sorted(v) for k, v in sorted(seen.items()) if len(v) > 1}


def fold_identities(protocol: Protocol) -> list[set[str]]:
    """The identities each fold uses (for "unrestricted" training splits and leakage checks)."""
    ids = np.asarray(protocol.identities)
    out: list[set[str]] = [set() for _ in range(protocol.n_folds)]
    for arr in (protocol.a, protocol.b):
        for ident, f in zip(ids[arr].tolist(), protocol.fold.tolist(), strict=True):
            out[f].add(ident)
    return out
