"""Verification metrics as pure functions over (impostor, genuine) score arrays, bob.measure style.

Conventions (../shared/docs/metrics-spec.md): scores are similarities; a comparison is accepted
when `score >= t` (ties accept). FAR = #impostor >= t / #impostor, FRR = #genuine < t / #genuine.

Why one table: every rule below is a prefix/suffix count over the distinct scores in ascending
order, so the scores are sorted once (`ScoreTable`) and each metric is a vectorised pass over it.
The table also takes integer weights per score (a bootstrap replicate counts a comparison m times)
so the bootstrap reuses the exact same rules instead of re-implementing them.

Rules (each named in the output):
- `far_threshold` (bob): the threshold with the largest attained FAR <= target, scanning impostor
  scores from the top with tie groups kept together; if even the top tie group exceeds the target,
  the threshold is just above the maximum impostor score (FAR 0). No interpolation.
- `eer` (bob `eer_threshold`): candidates are the minimum score and the midpoints between
  consecutive distinct scores; the one minimising |FAR - FRR| wins (bob's scan keeps the later
  candidate on ties and stops once either score list is exhausted); EER = (FAR + FRR) / 2 there.
  Rates are compared exactly (integer arithmetic), where bob accumulates floats.
- `eer_rocch` (bob/Bosaris): EER on the ROC convex hull; <= the bob EER.
- `eer_interp` (sklearn style): where FPR = 1 - TPR on the linearly interpolated ROC.
- `auc`: trapezoid area under the exact ROC (= sklearn `auc(roc_curve)`, ties count one half).
- `intersection_threshold`: where the genuine and impostor score densities cross (histograms).
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

# ---------------------------------------------------------------------------------------------
# the sorted table


@dataclass(frozen=True)
class EER:
    value: float
    threshold: float
    far: float
    frr: float


@dataclass
class OperatingPoint:
    """FRR at a FAR target: the bob threshold, the FAR it attains and whether the target is
    measurable at all (a target below 1/#impostors cannot be told apart from 0).

    The one operating-point record of fvtool: `ScoreTable.frr_at_far` returns it, the verify stage
    completes it (`exact`, `transaction`, `ci`) and writes it as an entry of metrics.json
    "operating_points" (fvtool/verification/record.py), and the report reads it back into the
    same class for its tables and figures.
    """

    far_target: float
    frr: float | None  # None only where a report has no measurable value
    far: float | None  # attained FAR (no interpolation)
    threshold: float | None = None
    measurable: bool = True  # False when far_target < 1 / #impostors
    ci: tuple[float, float] | None = None  # bootstrap confidence interval of the FRR
    above_max: bool = False  # threshold above every impostor score (FAR 0)
    false_accepts: int | None = None
    false_rejects: int | None = None
    exact: bool = True  # all-pairs: the attained FAR is exact, not bounded by the histogram
    transaction: dict[str, float] | None = None  # --fta exclude: transaction-level FAR/FRR

    @property
    def tar(self) -> float | None:
        return None if self.frr is None else 1.0 - self.frr


class ScoreTable:
    """Distinct scores (ascending, float64) with the impostor and genuine count at each.

    `imp_ge[j]` = impostors with score >= values[j] (length U+1, last 0);
    `gen_lt[j]` = genuines with score < values[j] (length U+1, last = all).
    A threshold between values[j-1] and values[j] therefore has FAR = imp_ge[j] / n_imp and
    FRR = gen_lt[j] / n_gen; index U stands for "above every score".
    """

    def __init__(self, values: np.ndarray, imp: np.ndarray, gen: np.ndarray) -> None:
        self.values = values
        self.imp = imp
        self.gen = gen
        self.n_imp = int(imp.sum())
        self.n_gen = int(gen.sum())
        self.imp_ge = np.concatenate([np.cumsum(imp[::-1])[::-1], [0]]).astype(np.int64)
        self.gen_lt = np.concatenate([[0], np.cumsum(gen)]).astype(np.int64)

    # ---- construction -------------------------------------------------------------------
    @classmethod
    def from_scores(cls, impostor: np.ndarray, genuine: np.ndarray,
                    w_imp: np.ndarray | None = None, w_gen: np.ndarray | None = None) -> ScoreTable:
        """Sort once. Weights (integers >= 0) default to 1 per score. Each side is reduced to
        (distinct value, count) on its own and the two are merged, so no inverse index of all
        scores is ever held (all-pairs runs pass tens of millions of genuine scores)."""
        ui, ci = _distinct(impostor, w_imp)
        ug, cg = _distinct(genuine, w_gen)
        values = np.union1d(ui, ug)
        imp = np.zeros(len(values), np.int64)
        gen = np.zeros(len(values), np.int64)
        imp[np.searchsorted(values, ui)] = ci
        gen[np.searchsorted(values, ug)] = cg
        return cls.from_counts(values, imp, gen)

    @classmethod
    def from_counts(cls, values: np.ndarray, imp: np.ndarray, gen: np.ndarray) -> ScoreTable:
        """From per-value counts (values ascending, distinct); values with no weight are dropped
        so the candidate sets are exactly those of the weighted score lists."""
        imp = np.asarray(imp, dtype=np.int64)
        gen = np.asarray(gen, dtype=np.int64)
        keep = (imp > 0) | (gen > 0)
        if not keep.all():
            values, imp, gen = values[keep], imp[keep], gen[keep]
        return cls(np.asarray(values, dtype=np.float64), imp, gen)

    def _require(self, impostors: bool = True, genuines: bool = True) -> None:
        if impostors and self.n_imp == 0:
            raise ValueError("no impostor scores")
        if genuines and self.n_gen == 0:
            raise ValueError("no genuine scores")

    # ---- rates at thresholds ------------------------------------------------------------------
    def counts_at(self, thresholds: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        """(false accepts, false rejects) at arbitrary thresholds (vectorised)."""
        j = np.searchsorted(self.values, np.asarray(thresholds, dtype=np.float64), side="left")
        return self.imp_ge[j], self.gen_lt[j]

    def rates_at(self, thresholds: np.ndarray | float) -> tuple[np.ndarray, np.ndarray]:
        fa, fr = self.counts_at(thresholds)
        return fa / max(self.n_imp, 1), fr / max(self.n_gen, 1)

    # ---- fixed-FAR operating points --------------------------------------------------------
    def far_threshold(self, far: float) -> tuple[float, bool]:
        """bob `far_threshold`: (threshold, above_max)."""
        self._require(genuines=False)
        if not 0.0 <= far <= 1.0:
            raise ValueError(f"FAR target {far} is outside [0, 1]")
        imp_idx = np.flatnonzero(self.imp > 0)
        if far >= 1.0 - sys.float_info.epsilon:  # bob: accept everything
            return float(np.nextafter(self.values[imp_idx[0]], -np.inf)), False
        attained = self.imp_ge[imp_idx] / self.n_imp  # decreasing along imp_idx
        ok = attained <= far
        if not ok.any():
            return float(np.nextafter(self.values[imp_idx[-1]], np.inf)), True
        return float(self.values[imp_idx[int(np.argmax(ok))]]), False

    def frr_at_far(self, far: float) -> OperatingPoint:
        self._require()
        thr, above = self.far_threshold(far)
        fa, fr = self.counts_at(thr)
        return OperatingPoint(
            far_target=float(far), threshold=thr, above_max=above,
            far=float(fa) / self.n_imp, frr=float(fr) / self.n_gen,
            false_accepts=int(fa), false_rejects=int(fr),
            measurable=bool(far >= 1.0 / self.n_imp),
        )

    # ---- EER -------------------------------------------------------------------------------
    def eer(self) -> EER:
        """bob `eer_threshold` (exact arithmetic) and the EER at that threshold."""
        self._require()
        i_tot, g_tot = self.n_imp, self.n_gen
        u = len(self.values)
        fa = self.imp_ge[:u]
        fr = self.gen_lt[:u]
        # bob evaluates candidates while both lists still have scores >= the candidate's
        # upper neighbour (with <=, so later candidates win ties), then the first candidate
        # after one list is exhausted (with <).
        max_imp = self.values[np.flatnonzero(self.imp > 0)[-1]]
        max_gen = self.values[np.flatnonzero(self.gen > 0)[-1]]
        kstar = int(np.searchsorted(self.values, min(max_imp, max_gen), side="right"))
        diff = np.abs(fa / i_tot - fr / g_tot)
        pre = diff[:kstar]
        near = np.flatnonzero(pre <= pre.min() + 1e-12)

        def key(k: int) -> int:  # |FAR - FRR| * n_imp * n_gen, exactly
            return abs(int(fa[k]) * g_tot - int(fr[k]) * i_tot)

        keys = [key(int(k)) for k in near]
        best_key = min(keys)
        best = int(near[max(i for i, kv in enumerate(keys) if kv == best_key)])
        if kstar < u and key(kstar) < best_key:
            best = kstar
        thr = self.values[0] if best == 0 else (self.values[best - 1] + self.values[best]) / 2
        far_v, frr_v = fa[best] / i_tot, fr[best] / g_tot
        return EER(value=float((far_v + frr_v) / 2), threshold=float(thr), far=float(far_v), frr=float(frr_v))

    def _hter_cost(self) -> np.ndarray:
        """(FAR + FRR) * n_imp * n_gen at every threshold candidate, in exact integers."""
        self._require()
        return self.imp_ge * self.n_gen + self.gen_lt * self.n_imp

    def min_hter(self) -> float:
        """The lowest HTER = (FAR + FRR) / 2 over all thresholds (at `min_hter_threshold`); 1 - it is the
        best balanced accuracy, the accuracy that does not reward rejecting everything on an all-pairs list."""
        return float(self._hter_cost().min()) / (2.0 * self.n_imp * self.n_gen)

    def min_hter_threshold(self) -> float:
        """Threshold (accept iff score >= t) with the lowest FAR + FRR (bob `min_hter_threshold`);
        on ties the lowest. On a balanced pair list (an LFW fold: 300 + 300) this is the
        best-accuracy threshold; on an unbalanced one (all pairs) it is the best *balanced*
        accuracy, which is what a threshold chosen there must carry over to a balanced test fold.
        Returned as the midpoint between neighbouring distinct scores, so it does not sit on a
        score of the list it was chosen on."""
        j = int(np.argmin(self._hter_cost()))
        if j == 0:
            return float(self.values[0])
        if j == len(self.values):
            return float(np.nextafter(self.values[-1], np.inf))
        return float((self.values[j - 1] + self.values[j]) / 2)

    def roc_points(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(thresholds, pfa, pmiss) at every distinct decision, thresholds ascending; the last
        point (threshold just above the maximum) rejects everything."""
        self._require()
        thr = np.concatenate([self.values, [np.nextafter(self.values[-1], np.inf)]])
        return thr, self.imp_ge / self.n_imp, self.gen_lt / self.n_gen

    def rocch(self) -> tuple[np.ndarray, np.ndarray]:
        """Vertices (pfa, pmiss) of the ROC convex hull, pfa decreasing (Bosaris `rocch`)."""
        self._require()
        x = self.imp_ge  # false accepts, decreasing
        y = self.gen_lt  # false rejects, increasing
        n = len(x)
        # Only lower-left corners of the staircase can be hull vertices: an impostor step
        # arrives at the point and a genuine step leaves it.
        j = np.arange(n)
        arrive = np.ones(n, bool)
        arrive[1:] = self.imp > 0
        leave = np.ones(n, bool)
        leave[:-1] = self.gen > 0
        arrive[-1] = leave[0] = True  # the end points (0, 1) and (1, 0) always belong
        idx = j[arrive & leave]
        xs = x[idx][::-1].tolist()  # pfa ascending
        ys = y[idx][::-1].tolist()
        hull: list[tuple[int, int]] = []
        for p in zip(xs, ys, strict=True):
            while len(hull) >= 2:
                (x1, y1), (x2, y2) = hull[-2], hull[-1]
                if (x2 - x1) * (p[1] - y1) - (y2 - y1) * (p[0] - x1) <= 0:
                    hull.pop()
                else:
                    break
            hull.append(p)
        hx = np.array([h[0] for h in hull][::-1], dtype=np.float64) / self.n_imp
        hy = np.array([h[1] for h in hull][::-1], dtype=np.float64) / self.n_gen
        return hx, hy

    def eer_rocch(self) -> float:
        """bob/Bosaris `rocch2eer` on the hull: the largest diagonal crossing of the hull's
        segment lines, ignoring horizontal/vertical segments."""
        pfa, pmiss = self.rocch()
        x0, x1 = pfa[:-1], pfa[1:]
        y0, y1 = pmiss[:-1], pmiss[1:]
        ok = np.minimum(np.abs(x0 - x1), np.abs(y0 - y1)) >= sys.float_info.epsilon
        if not ok.any():
            return 0.0
        x0, x1, y0, y1 = x0[ok], x1[ok], y0[ok], y1[ok]
        det = x0 * y1 - x1 * y0
        seg = det / ((y1 - y0) + (x0 - x1))
        return float(max(0.0, seg.max()))

    def eer_interp(self) -> tuple[float, float]:
        """sklearn style: (EER, threshold) where the linearly interpolated ROC meets
        FPR = 1 - TPR (= FNR); the threshold is interpolated along the same segment."""
        thr, pfa, pmiss = self.roc_points()
        thr = thr.copy()
        thr[-1] = self.values[-1]  # sklearn's first threshold is +inf; report the max instead
        g = pmiss - pfa  # increases from -1 to +1 along ascending thresholds
        j = int(np.argmax(g >= 0))
        if j == 0:
            return float(pfa[0]), float(thr[0])
        lam = -g[j - 1] / (g[j] - g[j - 1])
        value = pfa[j - 1] + lam * (pfa[j] - pfa[j - 1])
        return float(value), float(thr[j - 1] + lam * (thr[j] - thr[j - 1]))

    def auc(self) -> float:
        _, pfa, pmiss = self.roc_points()
        tpr = 1.0 - pmiss
        return float(np.sum((pfa[:-1] - pfa[1:]) * (tpr[:-1] + tpr[1:]) / 2.0))

    def intersection_threshold(self, bins: int = 100) -> float | None:
        """See `intersection_from_hist`: equal-width bins over the observed score range."""
        self._require()
        edges = np.linspace(self.values[0], self.values[-1], bins + 1)
        idx = np.clip(np.searchsorted(edges, self.values, side="right") - 1, 0, bins - 1)
        hi = np.bincount(idx, weights=self.imp, minlength=bins)
        hg = np.bincount(idx, weights=self.gen, minlength=bins)
        return intersection_from_hist(edges, hi, hg)


def _distinct(scores: np.ndarray, weights: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(distinct values ascending as float64, total weight of each)."""
    x = np.asarray(scores).ravel()
    if not np.isfinite(x).all():
        raise ValueError("scores must be finite")
    if weights is None:
        u, c = np.unique(x, return_counts=True)
        return u.astype(np.float64), c.astype(np.int64)
    u, inv = np.unique(x, return_inverse=True)
    c = np.bincount(inv, weights=np.asarray(weights, dtype=np.int64), minlength=len(u))
    return u.astype(np.float64), c.astype(np.int64)


# ---------------------------------------------------------------------------------------------
# histogram intersection (one study's alternative threshold)


def intersection_from_hist(edges: np.ndarray, hist_imp: np.ndarray, hist_gen: np.ndarray) -> float | None:
    """Threshold where the normalised genuine and impostor histograms cross.

    Rule: densities p_imp, p_gen (each histogram / its total) at the bin centres; between the
    impostor mode and the genuine mode, take the first centre where p_gen >= p_imp and
    interpolate linearly with the previous centre. None when the genuine mode is not above the
    impostor mode (nothing to intersect).
    """
    hist_imp = np.asarray(hist_imp, dtype=np.float64)
    hist_gen = np.asarray(hist_gen, dtype=np.float64)
    if hist_imp.sum() <= 0 or hist_gen.sum() <= 0:
        return None
    pi = hist_imp / hist_imp.sum()
    pg = hist_gen / hist_gen.sum()
    c = (np.asarray(edges[:-1], np.float64) + np.asarray(edges[1:], np.float64)) / 2
    a, b = int(np.argmax(pi)), int(np.argmax(pg))
    if b <= a:
        return None
    delta = pi[a: b + 1] - pg[a: b + 1]
    k = int(np.argmax(delta <= 0))
    if k == 0:
        return float(c[a])
    d0, d1 = delta[k - 1], delta[k]
    x0, x1 = c[a + k - 1], c[a + k]
    return float(x0 + (x1 - x0) * d0 / (d0 - d1))


# ---------------------------------------------------------------------------------------------
# bob-style functions on two score arrays


def far_threshold(impostor: np.ndarray, far: float) -> float:
    return ScoreTable.from_scores(impostor, np.empty(0)).far_threshold(far)[0]


def frr_at_far(impostor: np.ndarray, genuine: np.ndarray, far: float) -> OperatingPoint:
    return ScoreTable.from_scores(impostor, genuine).frr_at_far(far)


def frr_at_fars(impostor: np.ndarray, genuine: np.ndarray, fars: list[float]) -> list[OperatingPoint]:
    t = ScoreTable.from_scores(impostor, genuine)
    return [t.frr_at_far(f) for f in fars]


def eer(impostor: np.ndarray, genuine: np.ndarray) -> EER:
    return ScoreTable.from_scores(impostor, genuine).eer()


def eer_rocch(impostor: np.ndarray, genuine: np.ndarray) -> float:
    return ScoreTable.from_scores(impostor, genuine).eer_rocch()


def eer_interp(impostor: np.ndarray, genuine: np.ndarray) -> tuple[float, float]:
    return ScoreTable.from_scores(impostor, genuine).eer_interp()


def roc(impostor: np.ndarray, genuine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, tar, thresholds) with FAR ascending, like sklearn `roc_curve` without dropping
    intermediate points (the first point rejects everything)."""
    thr, pfa, pmiss = ScoreTable.from_scores(impostor, genuine).roc_points()
    return pfa[::-1].copy(), (1.0 - pmiss)[::-1].copy(), thr[::-1].copy()


def det(impostor: np.ndarray, genuine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(far, frr, thresholds) with thresholds ascending."""
    thr, pfa, pmiss = ScoreTable.from_scores(impostor, genuine).roc_points()
    return pfa, pmiss, thr


def auc(impostor: np.ndarray, genuine: np.ndarray) -> float:
    return ScoreTable.from_scores(impostor, genuine).auc()


def intersection_threshold(impostor: np.ndarray, genuine: np.ndarray, bins: int = 100) -> float | None:
    return ScoreTable.from_scores(impostor, genuine).intersection_threshold(bins)


_NORMAL = NormalDist()


def probit(p: np.ndarray | float) -> np.ndarray:
    """Normal deviate (DET axes): -inf at 0, +inf at 1, nan outside [0, 1], as scipy's `ndtri`.

    The standard library's inverse normal CDF (Wichura's AS241, double precision), element by
    element: callers pass at most a few 10^4 values (curve rows, axis ticks), and importing
    scipy.special for `ndtri` cost `verify` and `report` ~0.8 s of start-up each.
    """
    a = np.asarray(p, dtype=np.float64)
    out = np.array([_NORMAL.inv_cdf(v) if 0.0 < v < 1.0 else (-math.inf if v == 0.0 else math.inf if v == 1.0
                                                                   else math.nan) for v in a.ravel().tolist()],
                   dtype=np.float64)
    return out.reshape(a.shape)
