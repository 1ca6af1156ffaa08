"""Identity splits (train / val / test) and their file (`fvtool-split`, JSON, version 1).

Why split by identity: a verifier is tested on people it has never seen; sharing people between
training and test inflates every number. Splits are drawn with a seed from the sorted identity
list, so the same seed gives the same split whatever order the files were listed in.

Kinds:
  "identity"           train/val/test drawn at random by fractions or counts;
  "lfw-unrestricted"   LFW View 2, fold k: test = the identities of fold k, train = every other
                       identity of the dataset ("unrestricted, no outside data" setting);
  "lfw-outside-folds"  train = identities used by no View 2 fold, test = all fold identities.
File fields: format, version, name, kind, source, seed, created, fvtool_version, extra,
train/val/test (sorted identity lists), images (optional: part -> sorted image keys),
heldout (optional, present only when images were held out: training identity -> the sorted keys of
its images withheld from training, which `images["train"]` then omits; see `hold_out_images`),
counts (identities and images per part), hash_version, sha256 (checked on read; version 2, what
fvtool writes, hashes kind + parts + images + name + extra; a file without hash_version is checked
with version 1, kind + parts + images). As for protocols (fvtool/protocols/model.py), every field
is type-checked, `name` must be a plain file name, and a file without sha256 is refused unless
the caller allows it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fvtool import __version__
from fvtool.atomic import canonical_sha256, write_json
from fvtool.errors import InputError
from fvtool.protocols.lfw import fold_identities
from fvtool.protocols.model import (
    HASH_VERSION,
    JsonFields,
    Protocol,
    check_name,
    check_relative_keys,
    hash_version_of,
    load_json_object,
    now_iso,
)

FORMAT = "fvtool-split"
VERSION = 1
PARTS = ("train", "val", "test")
HELDOUT = "heldout"  # pseudo-part: the images of training identities withheld from training


@dataclass
class Split:
    kind: str
    name: str
    train: list[str]
    val: list[str]
    test: list[str]
    images: dict[str, list[str]] | None = None
    source: str = ""
    seed: int | None = None
    created: str = field(default_factory=now_iso)
    fvtool_version: str = __version__
    extra: dict[str, Any] = field(default_factory=dict)
    heldout: dict[str, list[str]] | None = None  # train identity -> its image keys withheld from training

    unhashed: bool = field(default=False, compare=False)  # read from a file without sha256 (allowed)

    def __post_init__(self) -> None:
        check_name(self.name, "split")
        for p in PARTS:
            setattr(self, p, sorted(getattr(self, p)))
        if self.images is not None:
            unknown = set(self.images) - set(PARTS)
            if unknown:
                raise InputError(f"split {self.name!r}: unknown image part(s) {sorted(unknown)}")
            self.images = {p: sorted(self.images.get(p, [])) for p in PARTS}
        for i, p in enumerate(PARTS):
            for q in PARTS[i + 1:]:
                both = set(getattr(self, p)) & set(getattr(self, q))
                if both:
                    shown = ", ".join(sorted(both)[:5])
                    raise InputError(f"split {self.name!r}: {len(both)} identities are in both {p} and {q} ({shown})")
        if self.heldout is not None:
            self.heldout = {ident: sorted(ks) for ident, ks in sorted(self.heldout.items())}
            self._check_heldout()

    def _check_heldout(self) -> None:
        """Held-out images belong to training identities and are not training images themselves."""
        assert self.heldout is not None
        if self.images is None:
            raise InputError(f"split {self.name!r}: held-out images need an image-level split (image keys per part)")
        outside = sorted(set(self.heldout) - set(self.train))
        if outside:
            raise InputError(f"split {self.name!r}: held-out images of {len(outside)} identities that are not "
                             f"training identities ({', '.join(outside[:5])})")
        held = {k for ks in self.heldout.values() for k in ks}
        both = held & set(self.images["train"])
        if both:
            raise InputError(f"split {self.name!r}: {len(both)} held-out images are also training images "
                             f"({', '.join(sorted(both)[:5])})")

    def part(self, name: str) -> list[str]:
        """The identities of part `name`; `heldout`: the training identities that have held-out images."""
        if name == HELDOUT:
            return sorted(self.heldout or {})
        if name not in PARTS:
            raise InputError(f"unknown split part {name!r} (expected {', '.join(PARTS)} or {HELDOUT})")
        return getattr(self, name)

    def rows(self, part: str, keys: list[str], identities: list[str]) -> list[int]:
        """Indices of the images (`keys`, with their `identities`) that belong to part `part`: by image
        key for an image-level split, else by identity. One rule for every stage that selects a part.
        `heldout`: the held-out images of the training identities (none when the split holds none)."""
        ids = self.part(part)  # also rejects an unknown part name
        if part == HELDOUT:
            listed = {k for ks in (self.heldout or {}).values() for k in ks}
            return [i for i, k in enumerate(keys) if k in listed]
        if self.images is not None:
            listed = set(self.images[part])
            return [i for i, k in enumerate(keys) if k in listed]
        wanted = set(ids)
        return [i for i, ident in enumerate(identities) if ident in wanted]

    def counts(self) -> dict[str, dict[str, int | None]]:
        out: dict[str, dict[str, int | None]] = {
            p: {"identities": len(self.part(p)), "images": len(self.images[p]) if self.images is not None else None}
            for p in PARTS
        }
        if self.heldout is not None:
            out[HELDOUT] = {"identities": len(self.heldout), "images": sum(len(v) for v in self.heldout.values())}
        return out

    def content(self) -> dict[str, Any]:
        """What the hash covers; `heldout` only when present, so splits without it keep their hashes."""
        c = {"kind": self.kind, "train": self.train, "val": self.val, "test": self.test, "images": self.images}
        if self.heldout is not None:
            c["heldout"] = self.heldout
        return c

    def sha256(self, hash_version: int = HASH_VERSION) -> str:
        """The hash the file carries (version 2: the content, `name` and `extra`)."""
        if hash_version == 1:
            return canonical_sha256(self.content())
        return canonical_sha256({**self.content(), "name": self.name, "extra": self.extra})

    def to_dict(self) -> dict[str, Any]:
        check_name(self.name, "split")  # `name` may have been set after construction
        d: dict[str, Any] = {
            "format": FORMAT,
            "version": VERSION,
            "name": self.name,
            "kind": self.kind,
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


def write_split(path: str | Path, split: Split) -> None:
    write_json(path, split.to_dict(), indent=1)


def read_split(path: str | Path, *, allow_unhashed: bool = False) -> Split:
    """Read and check an `fvtool-split` file; every problem is an InputError naming `path`
    (`allow_unhashed`: see `fvtool.protocols.model.read_protocol`)."""
    path = Path(path)
    d = load_json_object(path, "split")
    if d.get("format") != FORMAT:
        raise InputError(f"{path}: not an {FORMAT} file (write one with `fvtool pairs split`)")
    if d.get("version") != VERSION:
        raise InputError(f"{path}: split format version {d.get('version')!r} is not supported (expected {VERSION})")
    f = JsonFields(d, path)
    hash_version = hash_version_of(d, path)
    images = d.get("images")
    if images is not None:
        if not isinstance(images, dict):
            raise InputError(f"{path}: field 'images' must be null or an object of part -> image keys")
        images = {part: JsonFields(images, path, "images.").strings(part) for part in images}
    heldout = d.get("heldout")
    if heldout is not None:
        if not isinstance(heldout, dict):
            raise InputError(f"{path}: field 'heldout' must be null or an object of identity -> image keys")
        heldout = {ident: JsonFields(heldout, path, "heldout.").strings(ident) for ident in heldout}
    try:
        split = Split(
            kind=f.optional("kind", str, ""), name=check_name(d.get("name"), str(path)), train=f.strings("train"),
            val=f.strings("val"), test=f.strings("test"), images=images, source=f.optional("source", str, ""),
            seed=f.optional("seed", int, None), created=f.optional("created", str, ""),
            fvtool_version=f.optional("fvtool_version", str, ""), extra=f.optional("extra", dict, {}),
            heldout=heldout,
        )
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    stored = d.get("sha256")
    if stored in (None, ""):
        if not allow_unhashed:
            raise InputError(f"{path}: the split has no sha256, so an edited or damaged file cannot be detected; "
                             "files written by fvtool always carry one (write it with `fvtool pairs split`)")
        split.unhashed = True
    elif stored != split.sha256(hash_version):
        raise InputError(f"{path}: content hash mismatch: the file was edited or damaged")
    if split.images is not None:
        check_relative_keys([k for p in PARTS for k in split.images[p]], str(path))
    if split.heldout is not None:
        check_relative_keys([k for ks in split.heldout.values() for k in ks], str(path))
    return split


def hold_out_images(split: Split, keys: Sequence[str], identities: Sequence[str], per_identity: int,
                    seed: int) -> Split:
    """Withhold `per_identity` images of every training identity that has more (so at least one stays
    for training) from training: they move from `images["train"]` to `heldout`.

    Why: a study that measures recognition *of the training identities* (example study 4: "2 images
    per person in face recognition testing set" of the same 6,400 identities it trained on) needs
    images of those people that the network never saw. Which images: a permutation of the identity's
    keys (sorted) from a generator seeded with (seed, CRC-32 of the identity), as the closed-set split
    of `fvtool identify` draws, so the choice depends neither on file order nor on other identities.
    Identities with <= `per_identity` images keep all of them for training (counted in
    `extra["heldout"]`)."""
    from fvtool.identification.closed_set import identity_rng

    if per_identity < 1:
        raise InputError(f"held-out images per identity must be >= 1 (got {per_identity})")
    if split.images is None:
        raise InputError("holding out images needs an image-level split (do not combine with --no-images)")
    if split.heldout is not None:
        raise InputError(f"split {split.name!r} already holds out images")
    train_ids = set(split.train)
    train_keys = set(split.images["train"])
    per: dict[str, list[str]] = {}
    for k, ident in zip(keys, identities, strict=True):
        if ident in train_ids and k in train_keys:
            per.setdefault(ident, []).append(k)
    heldout: dict[str, list[str]] = {}
    for ident in sorted(per):
        ks = sorted(per[ident])
        if len(ks) > per_identity:
            perm = identity_rng(seed, ident).permutation(len(ks))
            heldout[ident] = sorted(ks[i] for i in perm[:per_identity])
    held = {k for ks in heldout.values() for k in ks}
    images = {**split.images, "train": [k for k in split.images["train"] if k not in held]}
    extra = {**split.extra, "heldout": {"per_identity": per_identity, "seed": seed, "identities": len(heldout),
                                        "images": len(held), "identities_kept_whole": len(train_ids) - len(heldout)}}
    return Split(kind=split.kind, name=split.name, train=split.train, val=split.val, test=split.test, images=images,
                 source=split.source, seed=split.seed, created=split.created, extra=extra, heldout=heldout)


def _images_of(keys: Sequence[str], identities: Sequence[str], parts: dict[str, set[str]]) -> dict[str, list[str]]:
    owner = {ident: p for p, ids in parts.items() for ident in ids}
    out: dict[str, list[str]] = {p: [] for p in PARTS}
    for k, ident in zip(keys, identities, strict=True):
        p = owner.get(ident)
        if p is not None:
            out[p].append(k)
    return out


def _sizes(identities: Sequence[str]) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for ident in identities:
        sizes[ident] = sizes.get(ident, 0) + 1
    return sizes


def split_identities(
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    fractions: tuple[float, float, float] | None = None,
    counts: tuple[int, int, int] | None = None,
    seed: int = 0,
    min_images: int = 1,
    with_images: bool = True,
    name: str = "split",
    source: str = "",
) -> Split:
    """Random identity split by (train, val, test) fractions or counts.

    Only identities with >= `min_images` images take part (e.g. 2, so every test identity can form
    a genuine pair). With fractions, val and test get round(f * N) identities and train the rest;
    with counts, identities left over are in no part (reported in `extra["unused_identities"]`).
    """
    if (fractions is None) == (counts is None):
        raise InputError("give either fractions or counts for the split")
    sizes = _sizes(identities)
    eligible = sorted(i for i, c in sizes.items() if c >= min_images)
    n = len(eligible)
    if fractions is not None:
        if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
            raise InputError(f"split fractions must be three non-negative numbers summing to 1, got {fractions}")
        n_val, n_test = round(fractions[1] * n), round(fractions[2] * n)
        n_train = n - n_val - n_test
    else:
        if len(counts) != 3 or any(c < 0 for c in counts):
            raise InputError(f"split counts must be three non-negative integers, got {counts}")
        n_train, n_val, n_test = counts
        if n_train + n_val + n_test > n:
            raise InputError(f"split counts {counts} need {sum(counts)} identities but only {n} have "
                             f">= {min_images} image(s)")
    order = [eligible[i] for i in np.random.default_rng(seed).permutation(n)]
    train = order[:n_train]
    val = order[n_train:n_train + n_val]
    test = order[n_train + n_val:n_train + n_val + n_test]
    parts = {"train": set(train), "val": set(val), "test": set(test)}
    return Split(
        kind="identity", name=name, train=train, val=val, test=test,
        images=_images_of(keys, identities, parts) if with_images else None,
        source=source, seed=seed,
        extra={"min_images": min_images, "fractions": list(fractions) if fractions else None,
               "excluded_identities": len(sizes) - n, "unused_identities": n - n_train - n_val - n_test},
    )


def lfw_unrestricted_split(
    protocol: Protocol,
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    fold: int | None,
    min_images: int = 1,
    val_identities: int = 0,
    seed: int = 0,
    with_images: bool = True,
    name: str | None = None,
    source: str = "",
) -> Split:
    """Training identities for View 2 fold `fold` (0-based): every dataset identity outside that fold
    (train, with >= `min_images` images), the fold's identities as test. `fold=None`: train on
    identities used by no fold at all (test = all fold identities).

    `val_identities` > 0 moves that many training identities with >= 2 images (seeded draw) to val.
    Why: a model trained on the other folds' identities scores their pairs higher than unseen
    people's, so a threshold chosen on those folds (the LFW rule) sits too high for the test fold;
    pairs of held-out val identities give an unbiased threshold, and a recipe can be chosen on
    them without touching the test fold."""
    if protocol.kind != "pairs":
        raise InputError(f"protocol {protocol.name!r} is not a pairs protocol with folds")
    per_fold = fold_identities(protocol)
    if fold is None:
        test_ids = set().union(*per_fold)
        kind = "lfw-outside-folds"
    else:
        if not 0 <= fold < len(per_fold):
            raise InputError(f"protocol {protocol.name!r} has folds 0..{len(per_fold) - 1}, not {fold}")
        test_ids = per_fold[fold]
        kind = "lfw-unrestricted"
    sizes = _sizes(identities)
    train = sorted(i for i, c in sizes.items() if i not in test_ids and c >= min_images)
    test = sorted(test_ids & set(sizes))
    val: list[str] = []
    if val_identities:
        pool = [i for i in train if sizes[i] >= 2]
        if not 0 < val_identities < len(pool):
            raise InputError(f"val_identities must be 1..{len(pool) - 1} (training identities with >= 2 images), "
                             f"got {val_identities}")
        val = sorted(pool[i] for i in np.random.default_rng(seed).permutation(len(pool))[:val_identities])
        train = sorted(set(train) - set(val))
    parts = {"train": set(train), "val": set(val), "test": set(test)}
    return Split(
        kind=kind,
        name=name or f"{protocol.name}-" + (f"fold{fold + 1}-unrestricted" if fold is not None else "outside-folds"),
        train=train, val=val, test=test,
        images=_images_of(keys, identities, parts) if with_images else None,
        source=source or protocol.source, seed=seed if val_identities else None,
        extra={"protocol": protocol.name, "protocol_sha256": protocol.sha256(), "fold": fold,
               "min_images": min_images, "val_identities": val_identities,
               "test_identities_missing_from_dataset": len(test_ids - set(sizes))},
    )
