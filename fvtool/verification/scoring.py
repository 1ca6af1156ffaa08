"""Turning embeddings into comparison scores: cosine, Euclidean, squared Euclidean.

Why one convention: every metric rule in `metrics.py` is written once, for similarities
(higher = more likely the same person). A distance d becomes the score -d, so a distance
threshold t_d is the score threshold -t_d and "same iff d < t_d" becomes "same iff score > -t_d".
The rules accept at `score >= threshold` (ties accept, as bob and sklearn do); the k-fold rule
that insightface/facenet state in distances is handled in `kfold.py`.

Cosine similarity is always computed on L2-normalised embeddings (that is what cosine means);
the Euclidean metrics take `normalise` (default True, the face-recognition convention:
on unit vectors ||x-y||^2 = 2 - 2 cos, so all three metrics rank pairs identically).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from fvtool.errors import InputError
from fvtool.verification.options import METRICS

PAIR_BLOCK = 65_536  # pairs per block in `pair_scores`


@dataclass(frozen=True)
class Scoring:
    metric: str = "cosine"
    normalise: bool = True

    def __post_init__(self) -> None:
        if self.metric not in METRICS:
            raise InputError(f"unknown metric {self.metric!r} (choose from {', '.join(METRICS)})")
        if self.metric == "cosine" and not self.normalise:
            object.__setattr__(self, "normalise", True)

    @property
    def is_distance(self) -> bool:
        return self.metric != "cosine"

    def describe(self) -> dict[str, Any]:
        """What metrics.json states about the scores."""
        score = "cosine similarity" if not self.is_distance else f"similarity = -{self.metric} distance"
        return {"metric": self.metric, "normalised": self.normalise, "score": score}

    def bounds(self, max_norm: float) -> tuple[float, float]:
        """Closed interval that contains every score (before float rounding), used to size the
        all-pairs histogram; `max_norm` is the largest embedding norm after preparation."""
        if self.metric == "cosine":
            return -1.0, 1.0
        r = 2.0 if self.normalise else 2.0 * float(max_norm)
        return (-(r * r), 0.0) if self.metric == "sqeuclidean" else (-r, 0.0)


def l2_normalise(x: np.ndarray) -> np.ndarray:
    """Row-wise unit vectors (float32). All-zero rows are refused earlier (`check_embeddings`)."""
    x = np.asarray(x, dtype=np.float32)
    n = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(n, np.finfo(np.float32).tiny)).astype(np.float32, copy=False)


def prepare(emb: np.ndarray, scoring: Scoring) -> np.ndarray:
    """The float32 matrix the score functions work on (normalised if the scoring says so)."""
    emb = np.ascontiguousarray(emb, dtype=np.float32)
    return l2_normalise(emb) if scoring.normalise else emb


def check_embeddings(emb: np.ndarray, keys: list[str], used: np.ndarray | None = None, *, what: str = "") -> None:
    """Refuse NaN/inf and all-zero embeddings among the rows a protocol uses, naming their keys."""
    rows = np.arange(len(emb)) if used is None else np.unique(np.asarray(used))
    sub = emb[rows]
    bad_finite = rows[~np.isfinite(sub).all(axis=1)]
    bad_zero = rows[~(sub != 0).any(axis=1)]
    where = f"{what}: " if what else ""
    for bad, why in ((bad_finite, "contain NaN or inf"), (bad_zero, "are all zero")):
        if len(bad):
            shown = ", ".join(keys[i] for i in bad[:5])
            more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
            raise InputError(f"{where}{len(bad)} embeddings {why} ({shown}{more}); re-run `fvtool embed` "
                             "or check the model/checkpoint")


def pair_scores(x: np.ndarray, a: np.ndarray, b: np.ndarray, scoring: Scoring,
                block: int = PAIR_BLOCK) -> np.ndarray:
    """Scores of explicit pairs (rows a[i], b[i] of the prepared matrix), in float64.

    In blocks of `block` pairs: IJB-C's 15.7 M template pairs would need 2 x 64 GB of gathered
    float64 rows at once. Each score is one row's dot product, so blocking does not change a bit.
    """
    out = np.empty(len(a), np.float64)
    for i in range(0, len(a), block):
        xa = x[a[i:i + block]].astype(np.float64)
        xb = x[b[i:i + block]].astype(np.float64)
        if scoring.metric == "cosine":
            out[i:i + block] = np.einsum("ij,ij->i", xa, xb)
            continue
        d2 = np.einsum("ij,ij->i", xa - xb, xa - xb)
        out[i:i + block] = -d2 if scoring.metric == "sqeuclidean" else -np.sqrt(d2)
    return out


def score_block(xa: np.ndarray, xb: np.ndarray, scoring: Scoring,
                na: np.ndarray | None = None, nb: np.ndarray | None = None) -> np.ndarray:
    """The float32 score matrix of all rows of `xa` against all rows of `xb` (one GEMM).

    `na`, `nb` are the squared norms (needed for raw Euclidean metrics). The same function
    serves the naive all-pairs reference; the streaming code applies the same `transform_dots` to
    its blocks' products, so the two differ only by the GEMM's rounding (block shapes differ).
    """
    s = xa @ xb.T
    return transform_dots(s, scoring, na, nb)


def transform_dots(s, scoring: Scoring, na=None, nb=None):
    """Dot products -> scores, in place, in float32 arithmetic (numpy arrays or torch tensors:
    the same elementwise IEEE operations, so both backends give the same values)."""
    if scoring.metric == "cosine":
        return s
    if scoring.normalise:  # ||x-y||^2 = 2 - 2<x,y>; score = 2<x,y> - 2
        s *= 2.0
        s -= 2.0
    else:  # 2<x,y> - (|x|^2 + |y|^2): the sum is symmetric, so s(x, y) == s(y, x) bit for bit
        s *= 2.0
        s -= na[:, None] + nb[None, :]
    _clamp_nonpositive(s)  # rounding can make a distance slightly negative
    if scoring.metric == "euclidean":  # score = -sqrt(d2), d2 = -s
        _neg_sqrt_neg(s)
    return s


def _clamp_nonpositive(s) -> None:
    if isinstance(s, np.ndarray):
        np.minimum(s, np.float32(0.0), out=s)
    else:
        s.clamp_(max=0.0)


def _neg_sqrt_neg(s) -> None:
    if isinstance(s, np.ndarray):
        np.negative(s, out=s)
        np.sqrt(s, out=s)
        np.negative(s, out=s)
    else:
        s.neg_().sqrt_().neg_()
