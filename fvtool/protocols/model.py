"""The in-memory protocol and its file format (`fvtool-protocol`, JSON, version 1).

A protocol names images by key (path relative to the data root) and defines comparisons:
  kind "pairs":    explicit pairs (indices a, b into `images`), each with `same` (1/0) and `fold`.
  kind "allpairs": every unordered pair of images within each trial: `trials` is a list of
                   lists of image indices (MEDS-II / BLUFR style); never stored as N^2 rows.
Both carry `identities` (one per image), provenance (`source`, `seed`, `created`,
`fvtool_version`), `counts`, and `sha256`, a hash of the content fields that `read_protocol`
verifies, so an edited or truncated file is detected.
Writing then reading is lossless (tested); `fvtool.protocols.lfw` writes the official text files.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
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

    def __post_init__(self) -> None:
        self.validate()

    # ---- structure -------------------------------------------------------------------
    def validate(self) -> None:
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
        else:
            if not self.trials:
                raise InputError(f"protocol {self.name!r}: an allpairs protocol needs at least one trial")
            self.trials = [np.asarray(t, dtype=np.int64) for t in self.trials]
            for t in self.trials:
                if len(t) and (t.min() < 0 or t.max() >= n):
                    raise InputError(f"protocol {self.name!r}: trial index out of range 0..{n - 1}")

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
        """The fields the hash covers (everything but provenance timestamps)."""
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

    def sha256(self) -> str:
        return canonical_sha256(self.content())

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "source": self.source,
            "seed": self.seed,
            "created": self.created,
            "fvtool_version": self.fvtool_version,
            "counts": self.counts(),
            "sha256": self.sha256(),
            "extra": self.extra,
        }
        d.update(self.content())
        return d


def write_protocol(path: str | Path, protocol: Protocol) -> None:
    write_json(path, protocol.to_dict(), indent=None)


def read_protocol(path: str | Path) -> Protocol:
    path = Path(path)
    try:
        d = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise InputError(f"protocol file {path} does not exist") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: not a valid protocol file ({e})") from None
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise InputError(f"{path}: not an {FORMAT} file (for LFW pairs.txt use `fvtool pairs lfw`)")
    if d.get("version") != VERSION:
        raise InputError(f"{path}: protocol format version {d.get('version')} is not supported (expected {VERSION})")
    try:
        kw: dict[str, Any] = {}
        if d["kind"] == "pairs":
            p = d["pairs"]
            kw = {"a": p["a"], "b": p["b"], "same": p["same"], "fold": p["fold"]}
        else:
            kw = {"trials": d["trials"]}
        proto = Protocol(
            kind=d["kind"],
            name=d["name"],
            images=list(d["images"]),
            identities=list(d["identities"]),
            source=d.get("source", ""),
            seed=d.get("seed"),
            created=d.get("created", ""),
            fvtool_version=d.get("fvtool_version", ""),
            extra=d.get("extra", {}),
            **kw,
        )
    except KeyError as e:
        raise InputError(f"{path}: protocol field {e} is missing") from None
    if d.get("sha256") and d["sha256"] != proto.sha256():
        raise InputError(f"{path}: content hash mismatch: the file was edited or damaged")
    check_relative_keys(proto.images, str(path))
    return proto


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
