"""Open-set identification (1:N search): CMC and DIR at FPIR, bob.measure's definitions, arrays in.

Why: closed-set accuracy assumes every probe's subject is enrolled. A deployed search system must
also reject probes of people who are not in the gallery; the numbers papers report for that
(IJB-B/C 1:N, NIST FRVT) are the CMC for mated searches and the detection-and-identification rate
(DIR) at a false-positive identification rate (FPIR). The rules are bob.measure's:

- ranks: for a mated probe (its subject has a gallery column), rank - 1 = the number of non-mated
  gallery scores >= the mated score (ties count against the probe; bob `cmc`:
  `numpy.sum(neg >= max_pos)`).
- CMC(r) = #mated probes with rank <= r / #mated probes (bob `cmc`, which is defined on mated probes
  only; `recognition_rate(rank=r)` without a threshold is the same number).
- FPIR(t) = #non-mated probes whose best score >= t / #non-mated probes (bob `false_alarm_rate`).
- DIR(t, r) = #mated probes with mated score >= t and rank <= r / #mated probes (bob
  `detection_identification_rate`).
- the threshold for an FPIR target is bob's `far_threshold` on the non-mated probes' best scores
  (what bob's `detection_identification_curve` does): the threshold with the largest attained
  FPIR <= target, ties kept together (`fvtool.verification.metrics.far_threshold`). A target below
  1 / #non-mated probes is reported as not measurable.

The gallery/probe split of any embeddings file (`split_open_set`): a seeded share of the identities
is left out of the gallery entirely (their images are non-mated probes: "unseen identities as
impostor probes"); each other identity enrols `gallery_images` images (seeded per identity, as the
closed-set split does) and its other images are mated probes. Identities with no image left for a
probe stay in the gallery as distractors. A gallery identity is one template: the normalised mean of
its normalised gallery embeddings (the template convention IJB-B/C uses), scored by cosine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fvtool.errors import InputError
from fvtool.identification.closed_set import identity_array, identity_rng
from fvtool.verification.metrics import ScoreTable
from fvtool.verification.scoring import l2_normalise

DEFAULT_RANKS = (1, 5, 10)
DEFAULT_FPIRS = (0.01, 0.1)
SCORE_BLOCK_ROWS = 4096  # probes per block of the probe x gallery score matrix
MAX_CMC_RANKS = 100  # the CMC curve stored in the JSON (and drawn) stops here


@dataclass(frozen=True)
class OpenSetSplit:
    """Gallery rows per enrolled identity, probe rows and their mate (gallery column, -1: non-mated)."""

    gallery_ids: list[str]  # enrolled identities, sorted: the gallery columns
    gallery_rows: list[np.ndarray]  # per column, the embedding rows of its template
    probe_rows: np.ndarray  # int64, ascending
    mates: np.ndarray  # int64 per probe: gallery column of its identity, -1 when not enrolled
    unseen_ids: list[str]  # identities left out of the gallery
    unseen_fraction: float
    gallery_images: int
    seed: int

    @property
    def n_mated(self) -> int:
        return int((self.mates >= 0).sum())

    @property
    def n_nonmated(self) -> int:
        return int((self.mates < 0).sum())


def split_open_set(identities: Sequence[str], *, keys: Sequence[str] | None = None, unseen_fraction: float = 0.3,
                   gallery_images: int = 1, seed: int = 0) -> OpenSetSplit:
    """Seeded gallery/probe split with a share of identities never enrolled (see the module docstring)."""
    if not 0.0 <= unseen_fraction < 1.0:
        raise InputError(f"unseen fraction {unseen_fraction} must be in [0, 1): some identities must be enrolled")
    if gallery_images < 1:
        raise InputError(f"gallery images {gallery_images} must be >= 1")
    ids = identity_array(identities, keys, seed)
    names = sorted(set(ids.tolist()))
    if len(names) < 2:
        raise InputError(f"open-set identification needs at least 2 identities; found {len(names)}")
    n_unseen = int(np.floor(unseen_fraction * len(names) + 0.5))
    if unseen_fraction > 0:
        n_unseen = min(max(n_unseen, 1), len(names) - 1)
    perm = np.random.default_rng([seed, 0x5E7]).permutation(len(names))
    unseen = {names[i] for i in perm[:n_unseen]}
    by_id: dict[str, list[int]] = {}
    for r, s in enumerate(ids.tolist()):
        by_id.setdefault(s, []).append(r)
    gallery_ids, gallery_rows, probes, mates = [], [], [], []
    for name in names:
        rows = np.asarray(by_id[name], dtype=np.int64)
        if name in unseen:
            probes.extend(rows.tolist())
            mates.extend([-1] * len(rows))
            continue
        if keys is not None:
            rows = rows[np.argsort(np.asarray([keys[r] for r in rows], dtype=str), kind="stable")]
        rows = rows[identity_rng(seed, name).permutation(len(rows))]
        col = len(gallery_ids)
        gallery_ids.append(name)
        gallery_rows.append(np.sort(rows[:gallery_images]))
        probes.extend(rows[gallery_images:].tolist())
        mates.extend([col] * len(rows[gallery_images:]))
    order = np.argsort(np.asarray(probes, dtype=np.int64), kind="stable")
    probe_rows = np.asarray(probes, dtype=np.int64)[order]
    mate_arr = np.asarray(mates, dtype=np.int64)[order]
    if not (mate_arr >= 0).any():
        raise InputError(f"no mated probe: every enrolled identity has at most {gallery_images} image(s); lower "
                         "--gallery-images or use identities with more images")
    return OpenSetSplit(gallery_ids, gallery_rows, probe_rows, mate_arr, sorted(unseen), float(unseen_fraction),
                        int(gallery_images), int(seed))


def templates(x: np.ndarray, groups: Sequence[np.ndarray]) -> np.ndarray:
    """One unit-length template per group of rows: the normalised mean of the normalised rows."""
    xn = l2_normalise(np.asarray(x, dtype=np.float64))
    return l2_normalise(np.stack([xn[g].mean(axis=0) for g in groups]))


def search_scores(probes: np.ndarray, gallery: np.ndarray) -> np.ndarray:
    """Cosine scores [n_probe, n_gallery] of unit-length rows, in probe blocks (float64)."""
    out = np.empty((len(probes), len(gallery)), np.float64)
    g = np.asarray(gallery, np.float64)
    for i in range(0, len(probes), SCORE_BLOCK_ROWS):
        out[i:i + SCORE_BLOCK_ROWS] = np.asarray(probes[i:i + SCORE_BLOCK_ROWS], np.float64) @ g.T
    return out


def _check(scores: np.ndarray, mates: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = np.asarray(scores, dtype=np.float64)
    m = np.asarray(mates, dtype=np.int64)
    if s.ndim != 2 or len(m) != s.shape[0]:
        raise InputError(f"scores {s.shape} and mates {m.shape}: one row of gallery scores per probe is needed")
    if (m >= s.shape[1]).any() or (m < -1).any():
        raise InputError("a mate index is outside the gallery columns")
    if not np.isfinite(s).all():
        raise InputError("scores contain NaN or infinity")
    return s, m


def mated_ranks(scores: np.ndarray, mates: np.ndarray) -> np.ndarray:
    """1-based rank of each mated probe: 1 + #non-mated gallery scores >= the mated score (bob)."""
    s, m = _check(scores, mates)
    rows = np.flatnonzero(m >= 0)
    mated = s[rows, m[rows]]
    ge = (s[rows] >= mated[:, None]).sum(axis=1)  # includes the mated column itself
    return ge.astype(np.int64)


def cmc(scores: np.ndarray, mates: np.ndarray, max_rank: int | None = None) -> np.ndarray:
    """CMC[r - 1] = share of mated probes with rank <= r, r = 1 .. max_rank (default: gallery size)."""
    s, m = _check(scores, mates)
    ranks = mated_ranks(s, m)
    if len(ranks) == 0:
        raise InputError("no mated probe: the CMC is defined on probes whose subject is enrolled")
    n = max_rank or s.shape[1]
    counts = np.bincount(np.minimum(ranks, n + 1), minlength=n + 2)[1:n + 1]
    return np.cumsum(counts) / len(ranks)


@dataclass(frozen=True)
class DirPoint:
    fpir_target: float
    threshold: float | None  # None: no non-mated probe, so no threshold can be set
    fpir: float | None  # attained
    dir: float | None
    rank: int
    measurable: bool  # the target is >= 1 / #non-mated probes

    def to_dict(self) -> dict[str, float | int | bool | None]:
        return {"fpir_target": self.fpir_target, "threshold": self.threshold, "fpir": self.fpir, "dir": self.dir,
                "rank": self.rank, "measurable": self.measurable}


def dir_at_fpir(scores: np.ndarray, mates: np.ndarray, fpirs: Sequence[float] = DEFAULT_FPIRS,
                rank: int = 1) -> list[DirPoint]:
    """DIR at each FPIR target (bob's rules, module docstring)."""
    s, m = _check(scores, mates)
    nonmated_best = s[m < 0].max(axis=1) if (m < 0).any() and s.shape[1] else np.empty(0)
    rows = np.flatnonzero(m >= 0)
    mated = s[rows, m[rows]]
    ranks = mated_ranks(s, m)
    out = []
    table = ScoreTable.from_scores(nonmated_best, np.empty(0)) if len(nonmated_best) else None
    for f in fpirs:
        if not 0.0 < f < 1.0:
            raise InputError(f"FPIR target {f} must be in (0, 1)")
        if table is None or len(rows) == 0:
            out.append(DirPoint(float(f), None, None, None, rank, False))
            continue
        t = table.far_threshold(f)[0]
        fpir = float((nonmated_best >= t).mean())
        d = float(((mated >= t) & (ranks <= rank)).mean())
        out.append(DirPoint(float(f), float(t), fpir, d, rank, f >= 1.0 / len(nonmated_best)))
    return out


def search_result(scores: np.ndarray, mates: np.ndarray, fpirs: Sequence[float], ranks: Sequence[int],
                  ) -> dict[str, Any]:
    """The metrics part of an `fvtool-openset` JSON from a probe x gallery score matrix and the mates."""
    n_gal = scores.shape[1]
    curve = cmc(scores, mates, min(n_gal, MAX_CMC_RANKS))
    at = {str(r): (float(curve[r - 1]) if r <= len(curve) else None) for r in ranks}
    return {
        "counts": {"gallery": int(n_gal), "probes": len(mates), "mated_probes": int((mates >= 0).sum()),
                   "nonmated_probes": int((mates < 0).sum())},
        "cmc": {"ranks": list(range(1, len(curve) + 1)), "rate": [float(v) for v in curve], "at": at,
                "rule": "bob cmc: rank - 1 = #non-mated gallery scores >= the mated score; mated probes only"},
        "dir": [p.to_dict() for p in dir_at_fpir(scores, mates, fpirs, rank=1)],
        "dir_rule": "bob: threshold = far_threshold of the non-mated probes' best scores at the FPIR target; DIR = "
                    "share of mated probes with mated score >= threshold and rank 1",
    }
