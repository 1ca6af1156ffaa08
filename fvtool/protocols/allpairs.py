"""All-pairs protocols: every unordered pair of images within a trial (NIST MEDS-II, LFW BLUFR,
an MS-Celeb test subset).

Why no pair list: N images give N(N-1)/2 comparisons (87,549,528 on full LFW); the protocol stores
the images and, per trial, the image indices, and the verify stage streams the upper triangle.
Counts come from identity sizes alone: genuine = sum over identities of c(c-1)/2, impostor = the
rest, and the lowest FAR that can be measured is 1 / impostor count.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np

from fvtool.errors import InputError
from fvtool.protocols.model import Protocol


def allpairs_counts(identities: Iterable[str]) -> dict[str, int | float | None]:
    """Pairs, genuine and impostor counts of all unordered pairs of the given images (one
    identity label per image), computed from identity sizes without materialising any pair."""
    sizes = np.fromiter(Counter(identities).values(), dtype=np.int64)
    n = int(sizes.sum())
    total = n * (n - 1) // 2
    genuine = int((sizes * (sizes - 1) // 2).sum())
    impostor = total - genuine
    return {
        "images": n,
        "identities": len(sizes),
        "pairs": total,
        "genuine": genuine,
        "impostor": impostor,
        "min_far": (1.0 / impostor) if impostor else None,
    }


def allpairs_protocol(
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    name: str = "allpairs",
    source: str = "",
    subset: Iterable[str] | None = None,
    max_per_identity: int | None = None,
    extra: dict | None = None,
) -> Protocol:
    """One trial over all images, or over the images of the identities in `subset`.

    `max_per_identity` keeps only the first N images (in key order, so no seed is needed) of each
    identity: genuine pairs grow with the square of an identity's image count, and on LFW one
    person (George W Bush, 530 images) would otherwise own most of them, so FRR would measure him.
    """
    if len(keys) != len(identities):
        raise InputError(f"{len(keys)} keys but {len(identities)} identities")
    if not keys:
        raise InputError("no images for an all-pairs protocol")
    if subset is None:
        images, ids = list(keys), list(identities)
    else:
        wanted = set(subset)
        unknown = wanted - set(identities)
        if unknown:
            shown = ", ".join(sorted(unknown)[:5])
            raise InputError(f"{len(unknown)} subset identities are not in the dataset ({shown}"
                             f"{' ...' if len(unknown) > 5 else ''})")
        sel = [i for i, ident in enumerate(identities) if ident in wanted]
        images = [keys[i] for i in sel]
        ids = [identities[i] for i in sel]
    if max_per_identity is not None:
        if max_per_identity < 1:
            raise InputError(f"max_per_identity must be >= 1, got {max_per_identity}")
        kept: dict[str, list[str]] = {}
        for key, ident in sorted(zip(images, ids, strict=True)):
            kept.setdefault(ident, [])
            if len(kept[ident]) < max_per_identity:
                kept[ident].append(key)
        keep = {k for ks in kept.values() for k in ks}
        sel = [i for i, k in enumerate(images) if k in keep]
        images, ids = [images[i] for i in sel], [ids[i] for i in sel]
        extra = {**(extra or {}), "max_per_identity": max_per_identity}
    if len(images) < 2:
        raise InputError(f"an all-pairs protocol needs at least 2 images, got {len(images)}")
    return Protocol(
        kind="allpairs",
        name=name,
        images=images,
        identities=ids,
        trials=[np.arange(len(images), dtype=np.int64)],
        source=source,
        extra=dict(extra or {}),
    )


def allpairs_trials(
    keys: Sequence[str],
    identities: Sequence[str],
    *,
    trials: int,
    test_identities: int | float,
    seed: int,
    name: str = "allpairs-trials",
    source: str = "",
) -> Protocol:
    """BLUFR-like repeated trials: each trial is all pairs over `test_identities` identities drawn
    at random (a count, or a fraction of the identities); the rest of the identities are that
    trial's training pool (`training_identities(protocol, t)`).

    The draw is seeded and independent of the input order (identities are sorted first).
    """
    if trials < 1:
        raise InputError("--trials must be at least 1")
    all_ids = sorted(set(identities))
    n_ids = len(all_ids)
    if isinstance(test_identities, float) and 0 < test_identities < 1:
        count = round(test_identities * n_ids)
    else:
        count = int(test_identities)
    if not 1 <= count <= n_ids:
        raise InputError(f"cannot draw {count} test identities per trial from {n_ids} identities")
    rng = np.random.default_rng(seed)
    by_id: dict[str, list[int]] = {}
    for i, ident in enumerate(identities):
        by_id.setdefault(ident, []).append(i)
    trial_idx: list[np.ndarray] = []
    for _ in range(trials):
        chosen = rng.choice(n_ids, size=count, replace=False)
        members = sorted(i for c in chosen for i in by_id[all_ids[int(c)]])
        if len(members) < 2:
            raise InputError("a trial has fewer than 2 images; draw more identities per trial")
        trial_idx.append(np.asarray(members, dtype=np.int64))
    return Protocol(
        kind="allpairs",
        name=name,
        images=list(keys),
        identities=list(identities),
        trials=trial_idx,
        source=source,
        seed=seed,
        extra={"test_identities_per_trial": count},
    )


def trial_identities(protocol: Protocol, trial: int) -> set[str]:
    """Identities compared in trial `trial` of an all-pairs protocol."""
    if protocol.kind != "allpairs":
        raise InputError(f"protocol {protocol.name!r} is not an all-pairs protocol")
    if not 0 <= trial < len(protocol.trials):
        raise InputError(f"protocol {protocol.name!r} has trials 0..{len(protocol.trials) - 1}, not {trial}")
    ids = protocol.identities
    return {ids[i] for i in protocol.trials[trial].tolist()}


def training_identities(protocol: Protocol, trial: int) -> set[str]:
    """The identities of the protocol's images outside trial `trial` (BLUFR-style training pool)."""
    return set(protocol.identities) - trial_identities(protocol, trial)


def per_trial_counts(protocol: Protocol) -> list[dict[str, int | float | None]]:
    ids = protocol.identities
    return [allpairs_counts(ids[i] for i in t.tolist()) for t in protocol.trials]
