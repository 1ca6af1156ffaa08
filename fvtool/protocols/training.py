"""Labelled pair lists for siamese models trained on same/different pairs.

File format: an ordinary `fvtool-protocol` of kind "pairs" whose folds are splits, named in
`extra["fold_names"]` (fold 0 = "train", 1 = "val", 2 = "test"), plus `extra["purpose"] =
"training-pairs"` and `extra["identity_disjoint"]`. Why reuse the protocol file: the same reader,
hash check, `resolve_indices` and leakage guard apply, and the split of each pair is covered by
the content hash (it lives in `fold`, not in free-form extras).

Two builders:
  `training_pairs`      balanced same/different pairs drawn from the training identities only
                        (optionally val pairs from the val identities): identity-disjoint from
                        any test protocol built on other identities;
  `random_pair_split`   one study's recipe: a pool of balanced pairs over all identities, shuffled
                        and cut 72/18/10 into train/val/test. It shares identities (and images)
                        between train and test, which inflates test numbers; the returned
                        `LeakageReport`-style counts say by how much, and the CLI warns loudly.
                        `random_split_test_part` makes its test part an evaluation protocol.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np

from fvtool.errors import InputError
from fvtool.protocols.generate import (
    FoldPlan,
    Pair,
    build_pairs_protocol,
    canonical_order,
    group_by_identity,
    sample_diff_pairs,
    sample_same_pairs,
)
from fvtool.protocols.model import Protocol

LEAKAGE_WARNING = (
    "random pair split: train, val and test pairs are drawn from the SAME identities (and share images). "
    "Test numbers measure recognition of people seen in training, not verification of new people; they are "
    "not comparable with identity-disjoint protocols (LFW View 2, `fvtool pairs generate`)."
)


def _members(groups: dict[str, list[int]], names: Iterable[str]) -> list[list[int]]:
    missing = [n for n in names if n not in groups]
    if missing:
        raise InputError(f"{len(missing)} identities of the split are not in the dataset ({', '.join(missing[:5])})")
    return [groups[n] for n in sorted(set(names))]


def _draw(members: list[list[int]], n_same: int, n_diff: int, rng: np.random.Generator, what: str) -> tuple[
        list[Pair], list[Pair]]:
    plan = FoldPlan(members)
    if plan.same_capacity() < n_same or plan.diff_capacity() < n_diff:
        raise InputError(f"{what}: {len(members)} identities allow at most {plan.same_capacity()} same and "
                         f"{plan.diff_capacity()} different pairs; {n_same} + {n_diff} requested")
    used: set[Pair] = set()
    return sample_same_pairs(members, n_same, rng, used), sample_diff_pairs(members, n_diff, rng, used)


def training_pairs(
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    train_identities: Iterable[str],
    n_same: int,
    n_diff: int | None = None,
    val_identities: Iterable[str] | None = None,
    n_val: int = 0,
    seed: int = 0,
    name: str = "training-pairs",
    source: str = "",
) -> Protocol:
    """Balanced pairs from `train_identities` only (fold 0 "train"); with `val_identities` and
    `n_val`, n_val same + n_val different pairs from those (fold 1 "val")."""
    n_diff = n_same if n_diff is None else n_diff
    keys, identities = canonical_order(keys, identities)
    groups = group_by_identity(keys, identities)
    rng = np.random.default_rng(seed)
    folds = [_draw(_members(groups, train_identities), n_same, n_diff, rng, "training identities")]
    names = ["train"]
    if val_identities is not None and n_val > 0:
        vids = set(val_identities)
        overlap = vids & set(train_identities)
        if overlap:
            raise InputError(f"{len(overlap)} identities are in both train and val ({', '.join(sorted(overlap)[:5])})")
        folds.append(_draw(_members(groups, vids), n_val, n_val, rng, "val identities"))
        names.append("val")
    return build_pairs_protocol(
        keys, identities, folds, name=name, source=source, seed=seed,
        extra={"purpose": "training-pairs", "fold_names": names, "identity_disjoint": True,
               "n_same": n_same, "n_diff": n_diff, "n_val": n_val},
    )


def random_pair_split(
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    n_pairs: int,
    fractions: tuple[float, float, float] = (0.72, 0.18, 0.10),
    seed: int = 0,
    name: str = "random-pair-split",
    source: str = "",
) -> tuple[Protocol, dict[str, int]]:
    """`n_pairs` balanced pairs (half same, half different) over all identities, shuffled and cut
    by `fractions` into folds 0/1/2 = train/val/test. Returns the protocol and leakage counts
    (identities and images the test fold shares with train)."""
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise InputError(f"pair-split fractions must be three non-negative numbers summing to 1, got {fractions}")
    if n_pairs < 2:
        raise InputError("--pairs must be at least 2")
    keys, identities = canonical_order(keys, identities)
    groups = group_by_identity(keys, identities)
    rng = np.random.default_rng(seed)
    n_same = n_pairs // 2
    same, diff = _draw(list(groups.values()), n_same, n_pairs - n_same, rng, "dataset")
    pool = [(p, True) for p in same] + [(p, False) for p in diff]
    order = rng.permutation(len(pool))
    n_val, n_test = round(fractions[1] * len(pool)), round(fractions[2] * len(pool))
    n_train = len(pool) - n_val - n_test
    cuts = [order[:n_train], order[n_train:n_train + n_val], order[n_train + n_val:]]
    folds = [([pool[i][0] for i in c if pool[i][1]], [pool[i][0] for i in c if not pool[i][1]]) for c in cuts]
    proto = build_pairs_protocol(
        keys, identities, folds, name=name, source=source, seed=seed,
        extra={"purpose": "training-pairs", "fold_names": ["train", "val", "test"], "identity_disjoint": False,
               "fractions": list(fractions), "warning": LEAKAGE_WARNING},
    )
    ids = np.asarray(proto.identities)
    def used(f: int) -> np.ndarray:
        sel = proto.fold == f
        return np.unique(np.concatenate([proto.a[sel], proto.b[sel]]))
    tr, te = used(0), used(2)
    leak = {
        "test_identities": len(set(ids[te].tolist())),
        "test_identities_also_in_train": len(set(ids[te].tolist()) & set(ids[tr].tolist())),
        "test_images": len(te),
        "test_images_also_in_train": len(np.intersect1d(te, tr)),
    }
    proto.extra["leakage"] = leak
    return proto, leak


def random_split_test_part(proto: Protocol, folds: int = 10, seed: int = 0) -> Protocol:
    """The test part of a random pair split as an evaluation protocol, refolded into `folds` stratified
    folds; it keeps the leakage warning (`pairs info` and the report show it)."""
    names = proto.extra["fold_names"]
    test = proto.select_folds([names.index("test")], name=f"{proto.name}-test")
    if min(int(test.same.sum()), int((~test.same).sum())) < folds:
        raise InputError(f"the test part holds {int(test.same.sum())} genuine and {int((~test.same).sum())} "
                         f"impostor pairs: too few for {folds} folds; raise --pairs or lower --test-folds")
    test = test.refold(folds, seed=seed, name=f"{proto.name}-test")
    test.extra = {"part": "test", "from_training_pairs": {"name": proto.name, "sha256": proto.sha256()},
                  "identity_disjoint": False, "warning": proto.extra.get("warning"),
                  "leakage": proto.extra.get("leakage"), "refolded": test.extra.get("refolded")}
    return test
