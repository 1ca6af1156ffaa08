"""Metric rules against ../shared/docs/metrics-spec.md vectors, scikit-learn, and plain re-computations
of the bob / Bosaris / insightface / facenet rules (loops over candidate thresholds, written from the
rule text, counting with exact fractions)."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from scipy.optimize import brentq
from sklearn.metrics import auc as sk_auc
from sklearn.metrics import roc_auc_score, roc_curve

from fvtool.verification import kfold, metrics
from fvtool.verification.metrics import ScoreTable

# ---------------------------------------------------------------------------------------------
# spec vectors


def test_vector1():
    imp, gen = [0.1, 0.2, 0.3, 0.4], [0.35, 0.6, 0.7, 0.8]
    e = metrics.eer(imp, gen)
    assert e.threshold == pytest.approx(0.375) and e.value == pytest.approx(0.25)
    assert metrics.far_threshold(imp, 0.25) == 0.4
    t = metrics.far_threshold(imp, 0.1)
    assert t > 0.4 and t == np.nextafter(0.4, 1)
    op = metrics.frr_at_far(imp, gen, 0.1)
    assert op.far == 0 and op.frr == 0.25 and op.above_max and not op.measurable  # 0.1 < 1/4
    assert metrics.auc(imp, gen) == pytest.approx(0.9375)
    assert metrics.eer_rocch(imp, gen) == pytest.approx(0.125)


def test_vector2():
    e = metrics.eer([1, 3], [2, 4])
    assert (e.value, e.threshold) == (0.5, 2.5)
    assert metrics.eer_rocch([1, 3], [2, 4]) == pytest.approx(0.25)


def test_vector3_ties():
    e = metrics.eer([0.3, 0.3, 0.5], [0.3, 0.5, 0.5])
    assert e.value == pytest.approx(1 / 3) and e.threshold == pytest.approx(0.4)


def test_vector4_far_threshold():
    imp = np.arange(10)
    assert metrics.far_threshold(imp, 0.11) == 9
    assert metrics.far_threshold(imp, 0.09) > 9
    assert metrics.far_threshold(imp, 0.91) == 1
    imp2 = [0.5, 0.6, 0.7, 0.8, 0.9, 1, 1, 1, 1]
    assert metrics.far_threshold(imp2, 0.5) == 1.0
    assert metrics.far_threshold(imp2, 0.4) > 1.0


DIST5 = np.array([.4512, 1.2345, 1.0101, 2.0202, .3303, .9404, 1.5505, 1.1106, .2207, .7308, .8409, 1.9001])
SAME5 = np.array([1, 1, 0, 0, 1, 1, 0, 0, 1, 0, 0, 0], bool)


def test_vector5_kfold():
    folds = kfold.contiguous_folds(12, 3)
    r = kfold.kfold_accuracy(DIST5, SAME5, folds)
    assert r.fold_threshold == pytest.approx([0.34, 0.46, 0.95])
    assert r.fold_accuracy == pytest.approx([0.5, 0.75, 0.5])
    assert r.accuracy_mean == pytest.approx(0.583333, abs=1e-6)
    assert r.accuracy_std == pytest.approx(0.117851, abs=1e-6)
    fr = kfold.facenet_roc(DIST5, SAME5, folds)
    assert fr["auc"] == pytest.approx(0.870370, abs=1e-6)
    assert fr["eer"] == pytest.approx(0.222222, abs=1e-6)


def test_probit_values():
    assert metrics.probit([0.001, 0.01, 0.1]) == pytest.approx([-3.0902, -2.3263, -1.2816], abs=1e-4)


# ---------------------------------------------------------------------------------------------
# references written from the rule text


def ref_far_threshold(imp, far):
    s = np.sort(np.asarray(imp, float))[::-1]
    n = len(s)
    if far >= 1 - np.finfo(float).eps:
        return np.nextafter(s[-1], -np.inf)
    valid = np.nextafter(s[0], np.inf)
    i = 0
    while i < n:
        v = s[i]
        while i + 1 < n and s[i + 1] == v:
            i += 1
        if Fraction(i + 1, n) > Fraction(far):
            break
        valid = v
        i += 1
    return valid


def ref_eer(imp, gen):
    """bob's scan: candidates min and midpoints; `<=` while both lists have scores at/above the
    candidate's upper neighbour, then one more candidate with `<`; exact fractions."""
    imp, gen = np.asarray(imp, float), np.asarray(gen, float)
    u = np.unique(np.concatenate([imp, gen]))
    stop = min(imp.max(), gen.max())
    best, best_t, best_k = None, None, None
    for k in range(len(u)):
        c = u[0] if k == 0 else (u[k - 1] + u[k]) / 2
        far = Fraction(int((imp >= u[k]).sum()), len(imp))
        frr = Fraction(int((gen < u[k]).sum()), len(gen))
        d = abs(far - frr)
        if u[k] <= stop:
            if best is None or d <= best:
                best, best_t, best_k = d, c, (far, frr)
        else:
            if d < best:
                best, best_t, best_k = d, c, (far, frr)
            break
    return float((best_k[0] + best_k[1]) / 2), best_t


def ref_rocch_eer(imp, gen):
    """Bosaris: PAV on the label sequence sorted by score (targets first within ties), hull
    points from the PAV bins, then the largest diagonal crossing of the segment lines."""
    imp, gen = np.asarray(imp, float), np.asarray(gen, float)
    scores = np.concatenate([gen, imp])
    lab = np.concatenate([np.ones(len(gen)), np.zeros(len(imp))])
    order = np.argsort(scores, kind="stable")
    y = lab[order]
    blocks = []  # [mean, width]
    for v in y:
        blocks.append([v, 1])
        while len(blocks) > 1 and blocks[-2][0] >= blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    nt, nn = len(gen), len(imp)
    pmiss, pfa = [0.0], [1.0]
    left = 0
    for _, w in blocks:
        left += w
        pmiss.append(y[:left].sum() / nt)
        pfa.append((len(y) - left - y[left:].sum()) / nn)
    eer = 0.0
    for i in range(len(pfa) - 1):
        x0, x1, y0, y1 = pfa[i], pfa[i + 1], pmiss[i], pmiss[i + 1]
        if min(abs(x0 - x1), abs(y0 - y1)) < np.finfo(float).eps:
            continue
        a, b = np.linalg.solve([[x0, y0], [x1, y1]], [1.0, 1.0])
        eer = max(eer, 1 / (a + b))
    return eer


def _random_scores(rng, n_imp, n_gen, ties):
    imp = rng.normal(0, 1, n_imp)
    gen = rng.normal(1.5, 1, n_gen)
    if ties:
        imp, gen = np.round(imp, 1), np.round(gen, 1)
    return imp, gen


@pytest.mark.parametrize("seed", range(6))
def test_against_rule_references(seed):
    rng = np.random.default_rng(seed)
    imp, gen = _random_scores(rng, 60 + 10 * seed, 40, ties=seed % 2 == 0)
    t = ScoreTable.from_scores(imp, gen)
    for far in (0.0, 0.01, 0.05, 0.1, 0.333, 0.5, 1.0):
        assert t.far_threshold(far)[0] == ref_far_threshold(imp, far)
    e = t.eer()
    v, thr = ref_eer(imp, gen)
    assert e.value == pytest.approx(v, abs=1e-15) and e.threshold == thr
    assert t.eer_rocch() == pytest.approx(ref_rocch_eer(imp, gen), abs=1e-12)
    assert t.eer_rocch() <= max(e.far, e.frr) + 1e-12  # the hull lies on or below every ROC point


@pytest.mark.parametrize("seed", range(4))
def test_against_sklearn(seed):
    rng = np.random.default_rng(100 + seed)
    imp, gen = _random_scores(rng, 500, 300, ties=seed >= 2)
    y = np.r_[np.zeros(len(imp)), np.ones(len(gen))]
    s = np.r_[imp, gen]
    fpr, tpr, thr = roc_curve(y, s, drop_intermediate=False)
    assert metrics.auc(imp, gen) == pytest.approx(sk_auc(fpr, tpr), abs=1e-12)
    assert metrics.auc(imp, gen) == pytest.approx(roc_auc_score(y, s), abs=1e-12)
    far, tar, thresholds = metrics.roc(imp, gen)
    assert np.allclose(far, fpr) and np.allclose(tar, tpr)
    assert np.array_equal(thresholds[1:], thr[1:])
    from scipy.interpolate import interp1d

    sk_eer = brentq(lambda x: 1.0 - x - interp1d(fpr, tpr)(x), 0.0, 1.0)
    assert metrics.eer_interp(imp, gen)[0] == pytest.approx(sk_eer, abs=1e-9)
    # FAR/FRR at arbitrary thresholds
    t = ScoreTable.from_scores(imp, gen)
    for th in np.quantile(s, [0.1, 0.5, 0.9]):
        far_v, frr_v = t.rates_at(th)
        assert far_v == np.mean(imp >= th) and frr_v == np.mean(gen < th)


def test_weights_equal_repetition():
    rng = np.random.default_rng(7)
    imp, gen = _random_scores(rng, 50, 30, ties=True)
    wi, wg = rng.integers(0, 4, len(imp)), rng.integers(0, 4, len(gen))
    wt = ScoreTable.from_scores(imp, gen, wi, wg)
    rt = ScoreTable.from_scores(np.repeat(imp, wi), np.repeat(gen, wg))
    assert wt.eer() == rt.eer()
    assert wt.frr_at_far(0.05) == rt.frr_at_far(0.05)
    assert wt.eer_rocch() == pytest.approx(rt.eer_rocch())


def test_not_measurable_flag():
    imp = np.linspace(0, 1, 1000)
    gen = np.linspace(0.5, 1.5, 10)
    assert metrics.frr_at_far(imp, gen, 1e-3).measurable
    assert not metrics.frr_at_far(imp, gen, 9e-4).measurable


def test_intersection_threshold():
    rng = np.random.default_rng(3)
    imp, gen = rng.normal(0, 1, 20000), rng.normal(3, 1, 20000)
    # equal variances and sizes: the densities cross half-way
    assert metrics.intersection_threshold(imp, gen, bins=60) == pytest.approx(1.5, abs=0.1)
    assert metrics.intersection_threshold(gen, imp) is None  # genuine mode below impostor mode


def test_errors():
    with pytest.raises(ValueError):
        metrics.eer([], [1.0])
    with pytest.raises(ValueError):
        metrics.far_threshold([0.1, 0.2], 1.5)
    with pytest.raises(ValueError):
        metrics.eer([np.nan], [1.0])


# ---------------------------------------------------------------------------------------------
# k-fold: insightface loop, exact variant, facenet VAL


def ref_insightface(dist, same, folds, thresholds):
    accs, thrs = [], []
    for f in np.unique(folds):
        tr, te = folds != f, folds == f
        acc_train = [np.mean((dist[tr] < t) == same[tr]) for t in thresholds]
        best = thresholds[int(np.argmax(acc_train))]
        accs.append(np.mean((dist[te] < best) == same[te]))
        thrs.append(best)
    return accs, thrs


@pytest.mark.parametrize("seed", range(3))
def test_kfold_matches_insightface_loop(seed):
    rng = np.random.default_rng(seed)
    n = 600
    same = rng.random(n) < 0.5
    dist = np.clip(np.where(same, rng.normal(0.9, 0.35, n), rng.normal(1.6, 0.3, n)), 0, 4)
    folds = kfold.contiguous_folds(n, 10)
    r = kfold.kfold_accuracy(dist, same, folds)
    accs, thrs = ref_insightface(dist, same, folds, np.arange(0, 4, 0.01))
    assert r.fold_accuracy == pytest.approx(accs) and r.fold_threshold == pytest.approx(thrs)
    assert r.accuracy_std == pytest.approx(np.std(accs))
    # exact variant: no grid can do better on the training folds
    ex = kfold.kfold_accuracy(dist, same, folds, exact=True)
    for f, t in zip(np.unique(folds), ex.fold_threshold, strict=True):
        tr = folds != f
        best_grid = max(np.mean((dist[tr] < g) == same[tr]) for g in np.arange(0, 4, 0.01))
        assert np.mean((dist[tr] < t) == same[tr]) >= best_grid


def test_facenet_val_bracket_rule():
    grid = np.array([0.0, 0.1, 0.2, 0.3])
    far = np.array([0.0, 0.0, 0.002, 0.01])
    # target 1e-3 lies between grid 0.1 (FAR 0) and 0.2 (FAR 0.002): half way
    assert kfold.bracket_threshold(far, grid, 1e-3) == pytest.approx(0.15)
    assert kfold.bracket_threshold(far, grid, 0.02) == 0.0  # never reached
    assert kfold.bracket_threshold(far, grid, 0.002) == pytest.approx(0.2)


def test_facenet_val_on_data():
    rng = np.random.default_rng(5)
    n = 2000
    same = rng.random(n) < 0.5
    dist = np.clip(np.where(same, rng.normal(0.9, 0.3, n), rng.normal(1.7, 0.25, n)), 0, 4)
    folds = kfold.contiguous_folds(n, 10)
    v = kfold.facenet_val(dist, same, folds, 1e-2)
    # recompute every fold by hand (broadcast comparisons against the whole grid)
    grid = np.arange(0, 4, 0.001)
    vals = []
    for f in range(10):
        tr, te = folds != f, folds == f
        far_train = (dist[tr][~same[tr]][:, None] < grid[None, :]).mean(axis=0)
        j = int(np.argmax(far_train >= 1e-2))
        t = grid[j - 1] + (1e-2 - far_train[j - 1]) * (grid[j] - grid[j - 1]) / (far_train[j] - far_train[j - 1])
        vals.append(np.mean(dist[te][same[te]] < t))
    assert v["val_mean"] == pytest.approx(np.mean(vals)) and v["val_std"] == pytest.approx(np.std(vals))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_min_hter_threshold_brute_force(seed: int) -> None:
    """Lowest FAR + FRR over every possible cut (brute force on rounded scores, so ties occur);
    on a balanced list it is also the best-accuracy threshold."""
    rng = np.random.default_rng(seed)
    imp = np.round(rng.normal(0, 1, 300 if seed else 500), 1)
    gen = np.round(rng.normal(1.5, 1, 300 if seed else 60), 1)
    t = ScoreTable.from_scores(imp, gen).min_hter_threshold()
    cuts = np.concatenate([np.unique(np.concatenate([imp, gen])), [np.inf]])
    cost = [np.mean(imp >= c) + np.mean(gen < c) for c in cuts]
    best = cuts[int(np.argmin(cost))]
    assert np.mean(imp >= t) + np.mean(gen < t) == pytest.approx(min(cost))
    assert (t < best and not np.isin(t, np.concatenate([imp, gen]))) or t == cuts[0]
    if len(imp) == len(gen):
        acc = [(np.sum(gen >= c) + np.sum(imp < c)) / 600 for c in cuts]
        assert (np.sum(gen >= t) + np.sum(imp < t)) / 600 == pytest.approx(max(acc))
    # everything separable: the cut lies strictly between the two classes
    assert ScoreTable.from_scores(np.zeros(3), np.ones(2)).min_hter_threshold() == 0.5


def test_probit_equals_scipy_ndtri_including_the_ends():
    """probit is the standard library's inverse normal CDF (no scipy import at start-up); it must
    agree with scipy's ndtri, the reference, to double precision, with its +-inf/nan at the ends."""
    from scipy.special import ndtri

    p = np.concatenate([[0.0, 1.0, -0.1, 1.1, np.nan, 1e-300, 1e-17, 1 - 1e-16],
                        np.logspace(-12, 0, 200, endpoint=False), np.linspace(0.01, 0.99, 99)])
    got, want = metrics.probit(p), ndtri(p)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    np.testing.assert_array_equal(got[np.isinf(want)], want[np.isinf(want)])
    finite = np.isfinite(want)
    np.testing.assert_allclose(got[finite], want[finite], rtol=1e-12, atol=1e-12)
    assert metrics.probit(np.array([[0.5, 0.025]])).shape == (1, 2) and float(metrics.probit(0.5)) == 0.0
