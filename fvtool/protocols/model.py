"""The in-memory protocol and its file format (`fvtool-protocol`, JSON, version 1).

A protocol names images by key (path relative to the data root) and defines comparisons:
  kind "pairs":    explicit pairs (indices a, b into `images`), each with `same` (1/0) and `fold`.
  kind "allpairs": every unordered pair of images within each trial: `trials` is a list of
                   lists of image indices (MEDS-II / BLUFR style); never stored as N^2 rows.
Both carry `identities` (one per image), provenance (`source`, `seed`, `created`,
`fvtool_version`), `counts`, and `sha256`, a hash that `read_protocol` verifies, so an edited or
truncated file is detected. `hash_version` 2 (what fvtool writes) hashes every
field that affects results or output paths: kind, images, identities, pairs/trials, `name` and
`extra`; a file without `hash_version` is read with the version-1 rule (kind, images, identities,
pairs/trials). A file without a hash is refused unless the caller allows it (`verify
--allow-unhashed`), and is then marked `unhashed`.

Why the reader is strict: protocol files come from others. Every value is checked for
its JSON type before it reaches numpy (no 1e30 index overflowing, no "abc", NaN or 1.5 truncated to
an index), `name` must be a plain file name (it becomes part of output paths), image keys must be
relative paths, and the same rules as the LFW text reader hold for every protocol: no image listed
twice, no pair of an image with itself, folds non-negative and fewer than the pairs; and in a
file, `same` must agree with the identities.
Writing then reading is lossless (tested); `fvtool.protocols.lfw` writes the official text files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fvtool import __version__
from fvtool.atomic import canonical_sha256, write_json
from fvtool.errors import InputError


def now_iso() -> str:
    """Creation time for provenance fields; honours $SOURCE_DATE_EPOCH (reproducible-builds convention)
    so that the same command with the same seed can produce a byte-identical file when wanted."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch and epoch.strip().isdigit():
        return _dt.datetime.fromtimestamp(int(epoch), _dt.UTC).isoformat(timespec="seconds")
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


FORMAT = "fvtool-protocol"
VERSION = 1
KINDS = ("pairs", "allpairs")
#: what `sha256` covers: 1 = kind, images, identities, pairs/trials; 2 = also name and extra
HASH_VERSION = 2
MAX_NAME = 200


def check_name(name: Any, where: str) -> str:
    """`name` if it is safe as one component of an output path, else InputError naming `where`.

    Why: protocol and split names come from files others wrote and become default output paths
    (`verify/<embeddings>-<name>/`, `splits/<name>.json`); a name like `../../x` would write outside
    the workspace. Refused: non-strings, empty, `.`/`..`, path separators (`/`, `\\`), `:` (drive
    letters, NTFS streams), control and format characters, more than MAX_NAME characters.
    """
    if not isinstance(name, str):
        raise InputError(f"{where}: name {name!r} is not a string")
    bad = ("empty" if not name else "'.' or '..'" if name in (".", "..")
           else "a path separator" if any(c in name for c in "/\\:")
           else "a control character" if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in name)
           else f"longer than {MAX_NAME} characters" if len(name) > MAX_NAME else "")
    if bad:
        raise InputError(f"{where}: name {name!r} is not a plain file name ({bad}); it would become part of "
                         "an output path")
    return name


@dataclass
class Protocol:
    kind: str
    name: str
    images: list[str]
    identities: list[str]
    # kind == "pairs"
    a: np.ndarray | None = None  # int64 indices into images
    b: np.ndarray | None = None
    same: np.ndarray | None = None  # bool
    fold: np.ndarray | None = None  # int64 fold id (0-based)
    # kind == "allpairs"
    trials: list[np.ndarray] | None = None
    source: str = ""
    seed: int | None = None
    created: str = field(default_factory=now_iso)
    fvtool_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)

    unhashed: bool = field(default=False, compare=False)  # read from a file without sha256 (allowed)

    def __post_init__(self) -> None:
        self.validate()

    # ---- structure -------------------------------------------------------------------
    def validate(self) -> None:
        """The rules every protocol obeys, however it was made (file, LFW text, generator)."""
        check_name(self.name, "protocol")
        if self.kind not in KINDS:
            raise InputError(f"protocol {self.name!r}: unknown kind {self.kind!r} (expected {' or '.join(KINDS)})")
        if len(self.images) != len(self.identities):
            raise InputError(f"protocol {self.name!r}: {len(self.images)} images but {len(self.identities)} identities")
        n = len(self.images)
        if self.kind == "pairs":
            if self.a is None or self.b is None or self.same is None or self.fold is None:
                raise InputError(f"protocol {self.name!r}: a pairs protocol needs a, b, same and fold")
            self.a = np.asarray(self.a, dtype=np.int64)
            self.b = np.asarray(self.b, dtype=np.int64)
            self.same = np.asarray(self.same, dtype=bool)
            self.fold = np.asarray(self.fold, dtype=np.int64)
            m = len(self.a)
            if not (len(self.b) == len(self.same) == len(self.fold) == m):
                raise InputError(f"protocol {self.name!r}: pair arrays have different lengths")
            if m and (min(self.a.min(), self.b.min()) < 0 or max(self.a.max(), self.b.max()) >= n):
                raise InputError(f"protocol {self.name!r}: pair index out of range 0..{n - 1}")
            self._check_pairs()
        else:
            if not self.trials:
                raise InputError(f"protocol {self.name!r}: an allpairs protocol needs at least one trial")
            self.trials = [np.asarray(t, dtype=np.int64) for t in self.trials]
            for i, t in enumerate(self.trials):
                if len(t) and (t.min() < 0 or t.max() >= n):
                    raise InputError(f"protocol {self.name!r}: trial index out of range 0..{n - 1}")
                if len(np.unique(t)) != len(t):
                    raise InputError(f"protocol {self.name!r}: trial {i} lists an image twice (it would be "
                                     "compared with itself)")
        self._check_images()

    def _check_images(self) -> None:
        seen: set[str] = set()
        dup = [k for k in self.images if k in seen or seen.add(k)]
        if dup:
            raise InputError(f"protocol {self.name!r}: {len(dup)} image(s) listed twice (e.g. {dup[0]!r}); each "
                             "image must appear once, or pairs of it with itself would be scored")

    def check_labels(self) -> None:
        """Refuse pairs whose same/different label contradicts the two images' identities.

        Applied to protocol files (`read_protocol`), whose labels and identities are both stated:
        a contradiction means an edited or broken file (e.g. flipped labels). Not part of
        `validate`, because protocols built in memory may carry placeholder identities whose
        labels come from elsewhere (IJB template pairs: one "identity" per template).
        """
        if self.kind != "pairs" or not len(self.a):
            return
        ids = np.asarray(self.identities, dtype=object)
        agree = ids[self.a] == ids[self.b]
        if (bad := np.flatnonzero(agree != self.same)).size:
            self._problem("have a same/different label that contradicts the images' identities", bad)

    def _problem(self, what: str, rows: np.ndarray) -> None:
        i = int(rows[0])
        a, b = int(self.a[i]), int(self.b[i])
        raise InputError(f"protocol {self.name!r}: {len(rows)} pair(s) {what} (e.g. pair {i}: "
                         f"{self.images[a]!r} and {self.images[b]!r})")

    def _check_pairs(self) -> None:
        """The LFW reader's rules for every pairs protocol, plus sane folds. (A pair listed twice is
        allowed here: it weighs twice, which randomly drawn pair lists may do on purpose; the LFW
        reader refuses it because the official files have none.)"""
        m = len(self.a)
        if not m:
            return
        if (bad := np.flatnonzero(self.a == self.b)).size:
            self._problem("compare an image with itself", bad)
        if self.fold.min() < 0 or self.fold.max() >= m:
            raise InputError(f"protocol {self.name!r}: fold ids must be 0..{m - 1} (fewer folds than pairs), got "
                             f"{int(self.fold.min())}..{int(self.fold.max())}")

    def select_folds(self, folds: list[int], name: str | None = None) -> Protocol:
        """A pairs protocol holding only the pairs of `folds` (0-based), renumbered 0..k-1.

        Why: "unrestricted" LFW training for fold k uses identities of the other folds, so the
        honest evaluation scores fold k alone (`fvtool pairs lfw --fold 10`).
        """
        if self.kind != "pairs":
            raise InputError(f"protocol {self.name!r} is {self.kind}: only pairs protocols have folds to select")
        wanted = sorted(set(folds))
        bad = [f for f in wanted if not 0 <= f < self.n_folds]
        if bad:
            raise InputError(f"protocol {self.name!r} has folds 1..{self.n_folds}; no fold {bad[0] + 1}")
        keep = np.isin(self.fold, wanted)
        used = np.unique(np.concatenate([self.a[keep], self.b[keep]]))
        remap = np.full(len(self.images), -1, dtype=np.int64)
        remap[used] = np.arange(len(used))
        fold_map = {f: i for i, f in enumerate(wanted)}
        return Protocol(
            kind="pairs",
            name=name or f"{self.name}-fold{'+'.join(str(f + 1) for f in wanted)}",
            images=[self.images[i] for i in used],
            identities=[self.identities[i] for i in used],
            a=remap[self.a[keep]],
            b=remap[self.b[keep]],
            same=self.same[keep],
            fold=np.array([fold_map[int(f)] for f in self.fold[keep]], dtype=np.int64),
            source=self.source,
            seed=self.seed,
            extra={**self.extra, "selected_folds": [f + 1 for f in wanted], "selected_from": self.sha256()},
        )

    def refold(self, k: int, seed: int = 0, name: str | None = None) -> Protocol:
        """The same pairs dealt into `k` cross-validation folds, stratified: the genuine pairs and the
        impostor pairs are each shuffled (seeded) and dealt round-robin, so every fold holds ~1/k of
        each.

        Why: a model trained "unrestricted" outside LFW fold 10 is evaluated on fold 10 alone, which
        leaves k-fold accuracy nothing to cross-validate the threshold on; refolding fold 10's 600
        pairs into 10 folds of 30 + 30 gives the cross-validated threshold that LFW-style studies
        report, without a threshold chosen on the training identities. Pairs, not identities, are
        dealt: one identity's pairs may fall in several folds, which can bias one threshold very
        little (the folds of LFW itself are identity-disjoint; these are not, and `extra` says so).
        """
        if self.kind != "pairs":
            raise InputError(f"protocol {self.name!r} is {self.kind}: only pairs protocols can be refolded")
        n_gen, n_imp = int(self.same.sum()), int((~self.same).sum())
        if k < 2 or k > min(n_gen, n_imp):
            raise InputError(f"--refold {k}: need 2 <= k <= min(genuine, impostor) pairs = {min(n_gen, n_imp)}")
        rng = np.random.default_rng(seed)
        fold = np.empty(len(self.same), dtype=np.int64)
        for mask in (self.same, ~self.same):
            idx = np.flatnonzero(mask)
            fold[idx[rng.permutation(len(idx))]] = np.arange(len(idx)) % k
        return Protocol(
            kind="pairs", name=name or f"{self.name}-cv{k}", images=list(self.images),
            identities=list(self.identities), a=self.a.copy(), b=self.b.copy(), same=self.same.copy(), fold=fold,
            source=self.source, seed=seed,
            extra={**self.extra, "refolded": {"folds": k, "seed": seed, "from": self.sha256(),
                                              "stratified": "genuine and impostor pairs dealt separately",
                                              "identity_disjoint_folds": False}},
        )

    @property
    def n_folds(self) -> int:
        if self.kind == "pairs":
            return int(self.fold.max()) + 1 if len(self.fold) else 0
        return len(self.trials or [])

    def resolve_indices(self, keys: list[str]) -> np.ndarray:
        """Index into `keys` of each protocol image (int64 array aligned with `self.images`).

        Exact key match first; otherwise the key without its file extension, because `align` may
        write `.png` crops for `.jpg` inputs while protocols name the original files. A stem that
        two keys share (`a.jpg` and `a.png`) is ambiguous and matches only exactly.
        Raises InputError naming the first few protocol images not found and their total count.
        """
        return resolve_keys(self.images, keys, what=f"protocol {self.name!r}")

    def counts(self) -> dict[str, Any]:
        """Genuine/impostor counts and the lowest measurable FAR (1 / impostors)."""
        if self.kind == "pairs":
            gen = int(self.same.sum())
            imp = int(len(self.same) - gen)
        else:
            ids = np.asarray(self.identities)
            gen = imp = 0
            for t in self.trials:
                _, c = np.unique(ids[t], return_counts=True)
                total = len(t) * (len(t) - 1) // 2
                g = int((c * (c - 1) // 2).sum())
                gen += g
                imp += total - g
        return {
            "images": len(self.images),
            "identities": len(set(self.identities)),
            "folds": self.n_folds,
            "pairs": gen + imp,
            "genuine": gen,
            "impostor": imp,
            "min_far": (1.0 / imp) if imp else None,
        }

    # ---- serialisation ----------------------------------------------------------------
    def content(self) -> dict[str, Any]:
        """The comparisons: kind, images, identities and pairs or trials (hash version 1)."""
        c: dict[str, Any] = {"kind": self.kind, "images": self.images, "identities": self.identities}
        if self.kind == "pairs":
            c["pairs"] = {
                "a": self.a.tolist(),
                "b": self.b.tolist(),
                "same": self.same.astype(int).tolist(),
                "fold": self.fold.tolist(),
            }
        else:
            c["trials"] = [t.tolist() for t in self.trials]
        return c

    def sha256(self, hash_version: int = HASH_VERSION) -> str:
        """The hash the file carries: version 2 covers the content, `name` and `extra` (everything that
        affects results or output paths; provenance such as `created` and `source` aside)."""
        if hash_version == 1:
            return canonical_sha256(self.content())
        return canonical_sha256({**self.content(), "name": self.name, "extra": self.extra})

    def to_dict(self) -> dict[str, Any]:
        check_name(self.name, "protocol")  # `name` may have been set after construction
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "source": self.source,
            "seed": self.seed,
            "created": self.created,
            "fvtool_version": self.fvtool_version,
            "counts": self.counts(),
            "hash_version": HASH_VERSION,
            "sha256": self.sha256(),
            "extra": self.extra,
        }
        d.update(self.content())
        return d


def write_protocol(path: str | Path, protocol: Protocol) -> None:
    write_json(path, protocol.to_dict(), indent=None)


def read_protocol(path: str | Path, *, allow_unhashed: bool = False) -> Protocol:
    """Read and check an `fvtool-protocol` file; every problem is an InputError naming `path`.

    `allow_unhashed`: accept a file without `sha256` (hand-written, or stripped), marked
    `unhashed` so that results can say so; by default such a file is refused, because without
    the hash an edited file (e.g. flipped labels) cannot be told from a genuine one.
    """
    path = Path(path)
    d = load_json_object(path, "protocol")
    if d.get("format") != FORMAT:
        raise InputError(f"{path}: not an {FORMAT} file (for LFW pairs.txt use `fvtool pairs lfw`)")
    if d.get("version") != VERSION:
        raise InputError(f"{path}: protocol format version {d.get('version')!r} is not supported (expected {VERSION})")
    f = JsonFields(d, path)
    hash_version = hash_version_of(d, path)
    kind = f.choice("kind", KINDS)
    name = check_name(d.get("name"), str(path))
    images, identities = f.strings("images"), f.strings("identities")
    n = len(images)
    content: dict[str, Any] = {"kind": kind, "images": images, "identities": identities}
    if kind == "pairs":
        p = JsonFields(f.obj("pairs"), path, "pairs.")
        content["pairs"] = {"a": p.ints("a", 0, n - 1), "b": p.ints("b", 0, n - 1),
                            "same": [int(v) for v in p.ints("same", 0, 1, booleans=True)],
                            "fold": p.ints("fold", 0, None)}
        kw: dict[str, Any] = dict(content["pairs"])
    else:
        trials = d.get("trials")
        if not isinstance(trials, list) or not trials:
            raise InputError(f"{path}: field 'trials' must be a non-empty list of lists of image indices")
        content["trials"] = [JsonFields({"t": t}, path, f"trials[{i}]").ints("t", 0, n - 1)
                             for i, t in enumerate(trials)]
        kw = {"trials": content["trials"]}
    extra = f.optional("extra", dict, {})
    # the hash first: an edited file is reported as edited, not by the first rule its edit breaks
    stored = d.get("sha256")
    unhashed = stored in (None, "")
    if unhashed and not allow_unhashed:
        raise InputError(f"{path}: the protocol has no sha256, so an edited or damaged file cannot be detected; "
                         "files written by fvtool always carry one. Rewrite it with `fvtool pairs`, or pass "
                         "--allow-unhashed to score it anyway (the result then says so)")
    if not unhashed:
        hashed = content if hash_version == 1 else {**content, "name": name, "extra": extra}
        if stored != canonical_sha256(hashed):
            raise InputError(f"{path}: content hash mismatch: the file was edited or damaged")
    try:
        proto = Protocol(
            kind=kind, name=name, images=images, identities=identities, source=f.optional("source", str, ""),
            seed=f.optional("seed", int, None), created=f.optional("created", str, ""),
            fvtool_version=f.optional("fvtool_version", str, ""), extra=extra, unhashed=unhashed, **kw,
        )
        proto.check_labels()
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    check_relative_keys(proto.images, str(path))
    return proto


def load_json_object(path: Path, what: str) -> dict[str, Any]:
    """The JSON object in `path`; InputError for a missing, unreadable or non-object file."""
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"{what} file {path} does not exist") from None
    except IsADirectoryError:
        raise InputError(f"{what} file {path} is a folder") from None
    except (ValueError, OSError, RecursionError) as e:  # JSON, UTF-8, permissions, absurd nesting
        raise InputError(f"{path}: not a valid {what} file ({e})") from None
    if not isinstance(d, dict):
        raise InputError(f"{path}: not a valid {what} file (expected a JSON object)")
    return d


def hash_version_of(d: dict[str, Any], path: Path) -> int:
    v = d.get("hash_version", 1)
    if type(v) is not int or v not in (1, HASH_VERSION):
        raise InputError(f"{path}: hash_version {v!r} is not supported (expected 1 or {HASH_VERSION})")
    return v


class JsonFields:
    """Typed access to the fields of a JSON object read from `path`: every wrong type or value is an
    InputError naming the file and the field, never a TypeError/OverflowError from numpy."""

    def __init__(self, d: dict[str, Any], path: Path, prefix: str = "") -> None:
        self.d, self.path, self.prefix = d, path, prefix

    def _get(self, key: str) -> Any:
        if key not in self.d:
            raise InputError(f"{self.path}: field '{self.prefix}{key}' is missing")
        return self.d[key]

    def _bad(self, key: str, what: str) -> InputError:
        return InputError(f"{self.path}: field '{self.prefix}{key}' {what}")

    def obj(self, key: str) -> dict[str, Any]:
        v = self._get(key)
        if not isinstance(v, dict):
            raise self._bad(key, "must be a JSON object")
        return v

    def choice(self, key: str, allowed: tuple[str, ...]) -> str:
        v = self._get(key)
        if v not in allowed:
            raise self._bad(key, f"is {v!r}; expected {' or '.join(allowed)}")
        return v

    def strings(self, key: str) -> list[str]:
        v = self._get(key)
        if not isinstance(v, list):
            raise self._bad(key, "must be a list of strings")
        bad = next((i for i, x in enumerate(v) if not isinstance(x, str)), None)
        if bad is not None:
            raise self._bad(key, f"must hold strings only; item {bad} is {v[bad]!r}")
        return v

    def ints(self, key: str, lo: int, hi: int | None, *, booleans: bool = False) -> list[int]:
        """A list of integers in [lo, hi] (hi None: no upper bound but 2**62); JSON floats, NaN,
        strings and (unless `booleans`) true/false are refused rather than converted."""
        v = self._get(key)
        if not isinstance(v, list):
            raise self._bad(key, "must be a list of integers")
        top = (1 << 62) if hi is None else hi
        for i, x in enumerate(v):
            ok = (type(x) is int or (booleans and type(x) is bool)) and lo <= x <= top
            if not ok:
                rng = f"{lo}..{hi}" if hi is not None else f">= {lo}"
                raise self._bad(key, f"item {i} is {x!r}; expected an integer {rng}")
        return v

    def optional(self, key: str, typ: type, default: Any) -> Any:
        v = self.d.get(key, default)
        if v is not None and not (isinstance(v, typ) and not (typ is int and isinstance(v, bool))):
            raise self._bad(key, f"must be a {typ.__name__}, got {v!r}")
        return v


def check_relative_keys(keys: list[str], where: str) -> None:
    """Refuse image keys that could point outside a data root (`../x`, `/etc/x`, `C:\\x`).

    Why here as well as in `safe_join`: protocol and split files come from others, and a stage
    that only compares keys would otherwise carry such a key into its outputs unnoticed.
    """
    bad = [k for k in keys if not isinstance(k, str) or not k or k.startswith("/") or "\\" in k
           or ".." in k.split("/") or (len(k) > 1 and k[1] == ":")]
    if bad:
        raise InputError(f"{where}: {len(bad)} image keys are not relative paths inside a data root "
                         f"(e.g. {bad[0]!r})")


def _stem(key: str) -> str:
    root, _ext = posixpath.splitext(key)
    return root


def resolve_keys(wanted: list[str], keys: list[str], *, what: str = "protocol", show: int = 5) -> np.ndarray:
    """Map each of `wanted` to its index in `keys` (exact match, then extension-less match).

    Shared by `Protocol.resolve_indices` and the LFW/leakage checks so every stage matches
    image names the same way.
    """
    exact = {k: i for i, k in enumerate(keys)}
    by_stem: dict[str, int] = {}
    ambiguous: set[str] = set()
    for i, k in enumerate(keys):
        s = _stem(k)
        if s in by_stem:
            ambiguous.add(s)
        else:
            by_stem[s] = i
    out = np.empty(len(wanted), dtype=np.int64)
    missing: list[str] = []
    for j, w in enumerate(wanted):
        i = exact.get(w)
        if i is None:
            s = _stem(w)
            i = by_stem.get(s) if s not in ambiguous else None
        if i is None:
            missing.append(w)
            out[j] = -1
        else:
            out[j] = i
    if missing:
        shown = ", ".join(missing[:show])
        more = f" and {len(missing) - show} more" if len(missing) > show else ""
        raise InputError(
            f"{what}: {len(missing)} of {len(wanted)} images are not in the dataset/embeddings "
            f"({shown}{more}); check that the protocol and the data are the same dataset"
        )
    return out
