"""Confidence intervals by resampling identities, and paired comparisons of two embedding files.

Why identities, not pairs: comparisons that share an identity are correlated (one hard identity
produces many false rejects), so resampling pairs as if independent gives intervals that are far
too narrow. The identity ("subjects") bootstrap draws identities with replacement; a replicate in
which identity i was drawn m_i times counts each genuine comparison of i m_i times and each
impostor comparison of i and j m_i * m_j times (comparisons between two copies of one identity
are not invented). Every replicate runs the exact same rules as the point estimate (`ScoreTable`
with integer weights), and intervals are percentile intervals.

Paired comparison: two embedding files scored on the same protocol share the identities, so one
multiplicity vector per replicate is applied to both; the interval of the difference therefore
removes the variation that both models share ("is loss A really better at FAR = 1e-4?").

For all-pairs protocols the impostors below the kept scores are one block ("rest") whose weight
in a replicate follows from the identity sizes per trial; a replicate whose operating point falls
into that block cannot be evaluated exactly and is left out (counted in `valid`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fvtool.verification.metrics import ScoreTable


@dataclass
class Comparisons:
    """Scores with the identity of each comparison (identity indices 0..n_ids-1)."""

    genuine: np.ndarray
    gen_id: np.ndarray
    impostor: np.ndarray  # exact impostor scores (all, or those above the rest block)
    imp_ia: np.ndarray
    imp_ib: np.ndarray
    n_ids: int
    # all-pairs only: the impostors not listed, as one block below every listed impostor
    rest_value: float | None = None
    trial_counts: Sequence[tuple[np.ndarray, np.ndarray]] = ()  # per trial: (identity ids, image counts)

    def impostor_weight_total(self, m: np.ndarray) -> int:
        """Weighted number of impostor comparisons of all trials (sum over identity pairs
        i < j of m_i m_j c_i c_j = ((sum m c)^2 - sum (m c)^2) / 2)."""
        total = 0
        for ids, counts in self.trial_counts:
            mc = m[ids].astype(np.int64) * counts
            total += (int(mc.sum()) ** 2 - int((mc * mc).sum())) // 2
        return total


class Resampler:
    """Sort once; a replicate only re-weights the distinct scores."""

    def __init__(self, comps: Comparisons) -> None:
        self.c = comps
        parts = [np.asarray(comps.impostor, np.float64), np.asarray(comps.genuine, np.float64)]
        if comps.rest_value is not None:
            parts.append(np.array([comps.rest_value]))
        self.values, inv = np.unique(np.concatenate(parts), return_inverse=True)
        ni, ng = len(comps.impostor), len(comps.genuine)
        self.inv_imp, self.inv_gen = inv[:ni], inv[ni: ni + ng]
        self.inv_rest = int(inv[-1]) if comps.rest_value is not None else None

    def table(self, m: np.ndarray | None = None) -> ScoreTable:
        c = self.c
        u = len(self.values)
        if m is None:
            m = np.ones(c.n_ids, np.int64)
        w_imp = m[c.imp_ia] * m[c.imp_ib]
        w_gen = m[c.gen_id]
        ci = np.bincount(self.inv_imp, weights=w_imp, minlength=u).astype(np.int64)
        cg = np.bincount(self.inv_gen, weights=w_gen, minlength=u).astype(np.int64)
        if self.inv_rest is not None:
            ci[self.inv_rest] += c.impostor_weight_total(m) - int(w_imp.sum())
        return ScoreTable.from_counts(self.values, ci, cg)

    # exactness of a replicate (all-pairs): the answer must not touch the rest block
    def far_ok(self, t: ScoreTable, thr: float, above: bool) -> bool:
        if self.c.rest_value is None:
            return True
        imp_vals = t.values[t.imp > 0]
        p = len(imp_vals) - 1 if above else int(np.searchsorted(imp_vals, thr))
        return bool((imp_vals[max(0, p - 1): p + 1] != self.c.rest_value).all())

    def around_ok(self, t: ScoreTable, thr: float, k: int = 2) -> bool:
        if self.c.rest_value is None:
            return True
        j = int(np.searchsorted(t.values, thr))
        return bool((t.values[max(0, j - k): j + k] > self.c.rest_value).all())


def _stats(t: ScoreTable, rs: Resampler, fars: Sequence[float]) -> np.ndarray:
    """[EER, FRR@far...] of one table; NaN where the replicate cannot be evaluated exactly."""
    out = np.full(1 + len(fars), np.nan)
    try:
        e = t.eer()
        if rs.around_ok(t, e.threshold):
            out[0] = e.value
        for i, f in enumerate(fars):
            op = t.frr_at_far(f)
            if rs.far_ok(t, op.threshold, op.above_max):
                out[1 + i] = op.frr
    except ValueError:  # a replicate without genuine or impostor comparisons
        pass
    return out


def multiplicities(n_ids: int, replicates: int, seed: int) -> np.ndarray:
    """[replicates, n_ids] identity counts of a with-replacement draw of n_ids identities."""
    rng = np.random.default_rng(seed)
    return rng.multinomial(n_ids, np.full(n_ids, 1.0 / n_ids), size=replicates).astype(np.int64)


def _interval(samples: np.ndarray, level: float) -> dict[str, float | int | None]:
    ok = samples[np.isfinite(samples)]
    if len(ok) < 2:
        return {"lo": None, "hi": None, "se": None, "valid": len(ok)}
    a = (1 - level) / 2
    lo, hi = np.quantile(ok, [a, 1 - a])
    return {"lo": float(lo), "hi": float(hi), "se": float(ok.std(ddof=1)), "valid": len(ok)}


def bootstrap_ci(comps: Comparisons, fars: Sequence[float], *, replicates: int = 1000, seed: int = 0,
                 level: float = 0.95, tick: Callable[[], None] | None = None) -> dict:
    """Identity-bootstrap percentile intervals for the EER and FRR at each FAR target."""
    rs = Resampler(comps)
    point = _stats(rs.table(), rs, fars)
    reps = np.empty((replicates, 1 + len(fars)))
    for r, m in enumerate(multiplicities(comps.n_ids, replicates, seed)):
        reps[r] = _stats(rs.table(m), rs, fars)
        if tick:
            tick()
    return {
        "replicates": replicates, "seed": seed, "level": level, "unit": "identity", "method": "percentile",
        "eer": {"estimate": _num(point[0]), **_interval(reps[:, 0], level)},
        "frr_at_far": [{"far_target": f, "estimate": _num(point[1 + i]), **_interval(reps[:, 1 + i], level)}
                       for i, f in enumerate(fars)],
    }


def paired_comparison(a: Comparisons, b: Comparisons, fars: Sequence[float], *, replicates: int = 1000,
                      seed: int = 0, level: float = 0.95, tick: Callable[[], None] | None = None) -> dict:
    """Differences a - b of EER and FRR@FAR with a paired identity-bootstrap interval."""
    if a.n_ids != b.n_ids:
        raise ValueError("paired comparison needs the same identities in both score sets")
    ra, rb = Resampler(a), Resampler(b)
    pa, pb = _stats(ra.table(), ra, fars), _stats(rb.table(), rb, fars)
    diffs = np.empty((replicates, 1 + len(fars)))
    for r, m in enumerate(multiplicities(a.n_ids, replicates, seed)):
        diffs[r] = _stats(ra.table(m), ra, fars) - _stats(rb.table(m), rb, fars)
        if tick:
            tick()

    def entry(i: int) -> dict:
        iv = _interval(diffs[:, i], level)
        sig = iv["lo"] is not None and (iv["lo"] > 0 or iv["hi"] < 0)
        return {"a": _num(pa[i]), "b": _num(pb[i]), "diff": _num(pa[i] - pb[i]), **iv, "significant": bool(sig)}

    return {
        "replicates": replicates, "seed": seed, "level": level, "unit": "identity", "method": "percentile",
        "eer": entry(0),
        "frr_at_far": [{"far_target": f, **entry(1 + i)} for i, f in enumerate(fars)],
    }


def _num(v: float) -> float | None:
    return float(v) if np.isfinite(v) else None
