"""Generated pair protocols: k identity-disjoint folds of n same + n different pairs, from any
aligned folder, manifest or identity folder (LFW View 2 built the same way, for other data).

How pairs are drawn (seeded, `numpy.random.default_rng(seed)`, independent of input order because
identities and images are sorted first):
  1. identities are shuffled and dealt round-robin to the k folds, those with >= 2 images first, so
     each fold gets a near-equal share of identities that can form same-person pairs;
  2. a same-person pair: an identity chosen uniformly among the fold's identities with >= 2 images,
     then two distinct images of it (identities whose every pair is taken drop out);
  3. a different-person pair: two distinct identities chosen uniformly among all the fold's
     identities (single-image identities included: they can only ever appear here), one image each;
  4. a pair already drawn (in either order) is drawn again, so no pair occurs twice.
Choosing identities uniformly (not images) keeps large identities (George_W_Bush: 530 images)
from dominating, as in the LFW protocol. Within a fold, same pairs come first, then different
pairs: the LFW order, so a generated LFW-layout protocol can be exported as pairs.txt.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fvtool.errors import InputError
from fvtool.protocols.model import Protocol

Pair = tuple[int, int]


@dataclass
class FoldPlan:
    """The identities of one fold, each as the sorted list of its image indices (into the dataset)."""

    members: list[list[int]]

    @property
    def multi(self) -> list[int]:
        return [i for i, m in enumerate(self.members) if len(m) >= 2]

    def same_capacity(self) -> int:
        return sum(len(m) * (len(m) - 1) // 2 for m in self.members)

    def diff_capacity(self) -> int:
        n = sum(len(m) for m in self.members)
        return n * (n - 1) // 2 - self.same_capacity()


def canonical_order(keys: Sequence[str], identities: Sequence[str]) -> tuple[list[str], list[str]]:
    """Keys and identities sorted by key, so the draw (and the written file) does not depend on the
    order the dataset was listed in; duplicate keys are refused (they would make pairs ambiguous)."""
    if len(keys) != len(identities):
        raise InputError(f"{len(keys)} keys but {len(identities)} identities")
    order = sorted(range(len(keys)), key=keys.__getitem__)
    ks = [keys[i] for i in order]
    dup = [a for a, b in itertools.pairwise(ks) if a == b]
    if dup:
        raise InputError(f"{len(dup)} image keys occur twice in the dataset (e.g. {dup[0]})")
    return ks, [identities[i] for i in order]


def group_by_identity(keys: Sequence[str], identities: Sequence[str]) -> dict[str, list[int]]:
    """identity -> image indices sorted by key (so the draw does not depend on input order)."""
    if len(keys) != len(identities):
        raise InputError(f"{len(keys)} keys but {len(identities)} identities")
    out: dict[str, list[int]] = {}
    for i, ident in enumerate(identities):
        out.setdefault(ident, []).append(i)
    return {k: sorted(v, key=lambda i: keys[i]) for k, v in sorted(out.items())}


def _norm(i: int, j: int) -> Pair:
    return (i, j) if i < j else (j, i)


def sample_same_pairs(members: list[list[int]], n: int, rng: np.random.Generator, used: set[Pair]) -> list[Pair]:
    """n distinct same-identity pairs: identity uniform among those with a pair left, then 2 images."""
    avail = [g for g in range(len(members)) if len(members[g]) >= 2]
    taken = dict.fromkeys(avail, 0)
    owner = {i: g for g in avail for i in members[g]}
    for a, b in used:  # pairs drawn earlier count against their identity's capacity
        g = owner.get(a)
        if g is not None and owner.get(b) == g:
            taken[g] += 1
    avail = [g for g in avail if taken[g] < len(members[g]) * (len(members[g]) - 1) // 2]
    out: list[Pair] = []
    while len(out) < n:
        if not avail:
            raise InputError(f"only {len(out)} distinct same-person pairs exist, {n} requested")
        pos = int(rng.integers(len(avail)))
        g = avail[pos]
        m = members[g]
        x, y = rng.choice(len(m), size=2, replace=False)
        p = _norm(m[int(x)], m[int(y)])
        if p in used:
            continue
        used.add(p)
        out.append(p)
        taken[g] += 1
        if taken[g] == len(m) * (len(m) - 1) // 2:
            avail.pop(pos)
    return out


def sample_diff_pairs(members: list[list[int]], n: int, rng: np.random.Generator, used: set[Pair]) -> list[Pair]:
    """n distinct different-identity pairs: two identities uniform, then one image of each.

    If random draws keep hitting taken pairs (n close to the number that exist), the remaining
    pairs are chosen uniformly from an explicit list of the untaken ones, so the call never loops.
    """
    k = len(members)
    if k < 2 and n:
        raise InputError("different-person pairs need at least 2 identities")
    out: list[Pair] = []
    misses = 0
    while len(out) < n and misses < 20 * n + 1000:
        g1, g2 = rng.choice(k, size=2, replace=False)
        m1, m2 = members[int(g1)], members[int(g2)]
        p = _norm(m1[int(rng.integers(len(m1)))], m2[int(rng.integers(len(m2)))])
        if p in used:
            misses += 1
            continue
        used.add(p)
        out.append(p)
    if len(out) < n:
        owner = {i: g for g, m in enumerate(members) for i in m}
        flat = sorted(owner)
        rest = [
            (x, y) for ai, x in enumerate(flat) for y in flat[ai + 1:]
            if owner[x] != owner[y] and (x, y) not in used
        ]
        need = n - len(out)
        if need > len(rest):
            raise InputError(f"only {len(out) + len(rest)} distinct different-person pairs exist, {n} requested")
        for r in sorted(rng.choice(len(rest), size=need, replace=False).tolist()):
            used.add(rest[r])
            out.append(rest[r])
    return out


def assign_folds(groups: dict[str, list[int]], folds: int, rng: np.random.Generator) -> list[list[str]]:
    """Deal shuffled identities round-robin to folds: multi-image identities first, then singles."""
    names = list(groups)  # sorted by group_by_identity
    order = [names[i] for i in rng.permutation(len(names))]
    multi = [n for n in order if len(groups[n]) >= 2]
    single = [n for n in order if len(groups[n]) < 2]
    out: list[list[str]] = [[] for _ in range(folds)]
    for pos, n in enumerate(multi + single):
        out[pos % folds].append(n)
    return [sorted(f) for f in out]


def build_pairs_protocol(
    keys: Sequence[str],
    identities: Sequence[str],
    fold_pairs: list[tuple[list[Pair], list[Pair]]],
    *,
    name: str,
    source: str,
    seed: int | None,
    extra: dict,
) -> Protocol:
    """A pairs Protocol over only the images the pairs use (sorted by key); per fold same then diff."""
    used = sorted({i for s, d in fold_pairs for p in (*s, *d) for i in p}, key=lambda i: keys[i])
    remap = {old: new for new, old in enumerate(used)}
    a, b, same, fold = [], [], [], []
    for f, (s, d) in enumerate(fold_pairs):
        for pairs, flag in ((s, True), (d, False)):
            for i, j in pairs:
                a.append(remap[i])
                b.append(remap[j])
                same.append(flag)
                fold.append(f)
    return Protocol(
        kind="pairs",
        name=name,
        images=[keys[i] for i in used],
        identities=[identities[i] for i in used],
        a=np.asarray(a, dtype=np.int64),
        b=np.asarray(b, dtype=np.int64),
        same=np.asarray(same, dtype=bool),
        fold=np.asarray(fold, dtype=np.int64),
        source=source,
        seed=seed,
        extra=extra,
    )


def generate_kfold(
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    folds: int = 10,
    n_same: int = 300,
    n_diff: int | None = None,
    seed: int = 0,
    name: str = "generated",
    source: str = "",
) -> tuple[Protocol, list[dict]]:
    """k identity-disjoint folds of `n_same` same + `n_diff` (default n_same) different pairs.

    Returns the protocol and per-fold statistics. InputError (before drawing anything) when a fold
    cannot hold the requested pairs, saying which fold and how many it could hold.
    """
    n_diff = n_same if n_diff is None else n_diff
    if folds < 1:
        raise InputError("--folds must be at least 1")
    if n_same < 0 or n_diff < 0 or n_same + n_diff == 0:
        raise InputError("ask for at least one pair per fold (--n / --n-diff)")
    keys, identities = canonical_order(keys, identities)
    groups = group_by_identity(keys, identities)
    if len(groups) < 2 * folds:
        raise InputError(f"{len(groups)} identities cannot form {folds} folds (each fold needs >= 2 identities)")
    rng = np.random.default_rng(seed)
    fold_ids = assign_folds(groups, folds, rng)
    plans = [FoldPlan([groups[n] for n in ids]) for ids in fold_ids]
    for f, plan in enumerate(plans):
        if plan.same_capacity() < n_same or plan.diff_capacity() < n_diff:
            raise InputError(
                f"fold {f} has {len(plan.members)} identities ({len(plan.multi)} with >= 2 images): at most "
                f"{plan.same_capacity()} same and {plan.diff_capacity()} different pairs, but {n_same} + {n_diff} "
                "were requested; lower --n or --folds"
            )
    fold_pairs: list[tuple[list[Pair], list[Pair]]] = []
    stats: list[dict] = []
    for f, plan in enumerate(plans):
        used: set[Pair] = set()
        s = sample_same_pairs(plan.members, n_same, rng, used)
        d = sample_diff_pairs(plan.members, n_diff, rng, used)
        fold_pairs.append((s, d))
        stats.append(_fold_stats(f, plan, fold_ids[f], identities, s, d))
    proto = build_pairs_protocol(
        keys, identities, fold_pairs, name=name, source=source, seed=seed,
        extra={"generator": "kfold", "folds": folds, "n_same": n_same, "n_diff": n_diff,
               "identity_disjoint_folds": True},
    )
    return proto, stats


def _fold_stats(f: int, plan: FoldPlan, ids: list[str], identities: Sequence[str],
                s: list[Pair], d: list[Pair]) -> dict:
    single = {n for n, m in zip(ids, plan.members, strict=True) if len(m) == 1}
    in_same = {identities[i] for p in s for i in p}
    in_diff = {identities[i] for p in d for i in p}
    return {
        "fold": f,
        "identities": len(ids),
        "multi_image_identities": len(plan.multi),
        "images": sum(len(m) for m in plan.members),
        "same": len(s),
        "different": len(d),
        "images_used": len({i for p in (*s, *d) for i in p}),
        "identities_in_same": len(in_same),
        "identities_in_different": len(in_diff),
        "single_image_identities_used": len(in_diff & single),
        "same_capacity": plan.same_capacity(),
    }
