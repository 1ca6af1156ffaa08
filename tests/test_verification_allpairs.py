"""Streaming all-pairs: exact metrics given its scores, and scores within float32 rounding of the
naive full matrix.

Two promises, tested separately because only the first one is exact:
1. Given the scores the stream computed, its impostor histogram, FAR thresholds, FRR/FAR and EER
   are exactly what the ordinary metric code gives over all of them. The reference is the same
   stream with every bin kept (`KEEP_ALL_BELOW` above the trial size): the same blocks and the same
   GEMMs, so the same bits, but nothing binned.
2. Those scores equal the naive full-matrix ones up to float32 rounding, not bit for bit: the BLAS
   picks its kernel (and the summation order of a dot product) by the matrix shape and the CPU, so a
   stream block and the full matrix can round differently (0.9247471 vs 0.9247472 with OpenBLAS's
   AVX2 kernels; `OPENBLAS_CORETYPE=Haswell` reproduces that on an AVX-512 CPU). `_tolerance` bounds
   the difference from the dot-product length.
"""

from __future__ import annotations

import numpy as np
import pytest

from fvtool.verification import allpairs as ap
from fvtool.verification.metrics import ScoreTable
from fvtool.verification.scoring import Scoring, prepare
from fvtool.verification.synthetic import clustered_embeddings, lfw_like_sizes

FARS = [1e-2, 1e-3, 1e-4, 1e-5]
U = 2.0 ** -24  # float32 unit roundoff


@pytest.fixture(scope="module")
def data():
    sizes = lfw_like_sizes(2000, seed=3)
    x, lab = clustered_embeddings(sizes, dim=64, seed=3, center_dim=24)
    return x, lab


def _tolerance(x: np.ndarray, a: np.ndarray, b: np.ndarray, sc: Scoring, ref: np.ndarray) -> np.ndarray:
    """Bound on |s - ref| for a float32 score s of the pairs (a, b) of embedding rows, computed in any
    summation order, against `ref` (another such float32 score, or the exact value).

    Higham, Accuracy and Stability of Numerical Algorithms, (3.5): a float32 dot product of length D
    in any order is within gamma_D * |x|.|y| <= gamma_D ||x|| ||y|| of the exact one (gamma_D =
    D u / (1 - D u), Cauchy-Schwarz), so two of them differ by at most twice that. The steps after the
    product are the same elementwise operations in both: x2 is exact, subtracting 2 (or the squared
    norms, computed once and shared) rounds once (u of the result, each side), the clamp at 0 does not
    widen a difference, and sqrt maps a difference t of squared distances to at most
    min(sqrt(t), t / d) for the reference distance d, plus one rounding each side.
    """
    d = x.shape[1]
    gamma = d * U / (1 - d * U)
    norms = np.linalg.norm(prepare(x, sc).astype(np.float64), axis=1)
    e = 2 * gamma * norms[a] * norms[b]
    ref = np.abs(np.asarray(ref, np.float64))
    if sc.metric == "cosine":
        return e
    d2 = ref * ref if sc.metric == "euclidean" else ref
    t = 2 * e + 2 * U * (d2 + 2 * e)
    if sc.metric == "sqeuclidean":
        return t
    return np.minimum(np.sqrt(t), t / np.maximum(ref, 1e-30)) + 2 * U * (ref + np.sqrt(t))


def _pair_keys(a: np.ndarray, b: np.ndarray, n: int) -> np.ndarray:
    a, b = np.asarray(a, np.int64), np.asarray(b, np.int64)
    return np.minimum(a, b) * n + np.maximum(a, b)


def _match_rounding(x: np.ndarray, sc: Scoring, vals, a, b, ref_vals, ref_a, ref_b) -> None:
    """The same set of pairs on both sides (each once), scores within `_tolerance`. Pairs are
    looked up in a dense N x N table (N = 2,000 here): far faster than sorting millions of keys."""
    n = len(x)
    k, rk = _pair_keys(a, b, n), _pair_keys(ref_a, ref_b, n)
    count = np.bincount(k, minlength=n * n)
    assert count.max() <= 1 and np.array_equal(count, np.bincount(rk, minlength=n * n))
    lookup = np.zeros(n * n)
    lookup[rk] = ref_vals
    rv = lookup[k]
    diff = np.abs(np.asarray(vals, np.float64) - rv)
    tol = _tolerance(x, a, b, sc, rv)
    assert (diff <= tol).all(), float(np.max(diff - tol))


def _every_score(x, lab, trials, sc, *, device: str = "cpu", **kw) -> ap.AllPairsScores:
    """The stream with every bin kept: every score it computes, with its pair."""
    with pytest.MonkeyPatch.context() as m:
        m.setattr(ap, "KEEP_ALL_BELOW", 1 << 62)
        r = ap.allpairs_scores(x, lab, trials, sc, FARS, device=device, **kw)
    assert r.complete and len(r.kept) == r.n_imp
    return r


def _check(r: ap.AllPairsScores, full: ap.AllPairsScores, naive: ap.NaiveScores, x: np.ndarray,
           sc: Scoring, fars=FARS) -> ScoreTable:
    """`r` is exact given its scores (`full`: the same scores, all kept), and those scores are the
    naive ones up to rounding. Returns the reference table over all the stream's scores."""
    # 1. exact, given the scores
    assert np.array_equal(r.genuine, full.genuine)  # the same pass, the same order
    assert r.n_imp == full.n_imp == len(full.kept) and r.n_gen == len(r.genuine)
    assert np.array_equal(r.hist_imp, np.bincount(r.quant.q(full.kept), minlength=r.quant.bins))
    ref = ScoreTable.from_scores(full.kept, full.genuine)
    tab = r.table()
    for f in fars:
        a, b = ref.frr_at_far(f), tab.frr_at_far(f)
        assert a == b, f
        assert r.far_exact(tab, b.threshold, b.above_max)
    ea, eb = ref.eer(), tab.eer()
    assert ea == eb
    assert r.around_exact(tab, eb.threshold)
    assert tab.eer_interp() == ref.eer_interp()
    # 2. the scores are the naive full matrix's, up to float32 rounding
    _match_rounding(x, sc, full.genuine, full.genuine_a, full.genuine_b, naive.gen, naive.gen_a, naive.gen_b)
    _match_rounding(x, sc, full.kept, full.kept_a, full.kept_b, naive.imp, naive.imp_a, naive.imp_b)
    return ref


@pytest.mark.parametrize("metric,normalise", [("cosine", True), ("sqeuclidean", False), ("euclidean", True)])
def test_stream_equals_naive(data, monkeypatch, metric, normalise):
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)  # force planning + kept bins at this size
    sc = Scoring(metric, normalise)
    trial = [np.arange(len(lab))]
    bins = ap.DEFAULT_BINS if metric == "cosine" else 1 << 16
    kw = dict(block_elems=1 << 18, bins=bins)
    r = ap.allpairs_scores(x, lab, trial, sc, FARS, sample_pairs=1 << 16, **kw)
    naive = ap.naive_allpairs(x, lab, trial, sc)
    assert not r.complete and len(r.kept) < len(naive.imp) // 2  # (a wide EER band for the weak raw metric)
    ref = _check(r, _every_score(x, lab, trial, sc, **kw), naive, x, sc)
    # the AUC from the table is within its stated bound of the exact one
    nk = ~r.keep
    bound = (r.hist_imp[nk].astype(float) * r.hist_gen[nk]).sum() / (r.n_imp * r.n_gen)
    assert abs(r.table().auc() - ref.auc()) <= bound + 1e-12


def test_second_pass_when_the_plan_misses(data, monkeypatch):
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)
    monkeypatch.setattr(ap, "_plan", lambda *a, **k: np.zeros(a[4].bins, bool))  # a plan that keeps nothing
    sc = Scoring()
    trial = [np.arange(len(lab))]
    kw = dict(block_elems=1 << 18, bins=1 << 16)
    r = ap.allpairs_scores(x, lab, trial, sc, FARS, **kw)
    assert r.passes == 2
    _check(r, _every_score(x, lab, trial, sc, **kw), ap.naive_allpairs(x, lab, trial, sc), x, sc)


def test_several_trials_and_small_trials_keep_everything(data):
    x, lab = data
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(lab))
    trials = [np.sort(idx[:700]), np.sort(idx[700:1500]), idx[1500:1501]]  # a 1-image trial has no pairs
    sc = Scoring()
    r = ap.allpairs_scores(x, lab, trials, sc, FARS, block_elems=1 << 16, bins=1 << 16)
    naive = ap.naive_allpairs(x, lab, trials[:2], sc)
    assert r.complete and len(r.kept) == len(naive.imp)
    ref = _check(r, r, naive, x, sc)
    assert ref.eer_rocch() == pytest.approx(r.table().eer_rocch())


def test_torch_backend_matches_numpy(data, monkeypatch):
    """The torch code path (CUDA's, run on the CPU) is exact given its own scores, and its scores
    agree with the numpy backend's within float32 rounding: a different BLAS (and on a GPU a
    different GEMM) sums in another order, so bit-equality between backends is not promised."""
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)
    trial = [np.arange(800)]
    sc = Scoring()
    kw = dict(block_elems=1 << 17, bins=1 << 16)
    a = ap.allpairs_scores(x, lab, trial, sc, FARS, **kw)
    b = ap.allpairs_scores(x, lab, trial, sc, FARS, device="torch-cpu", **kw)
    assert a.backend == "numpy" and b.backend == "torch:cpu"
    assert a.n_imp == b.n_imp and a.hist_imp.sum() == b.hist_imp.sum() == b.n_imp
    _check(b, _every_score(x, lab, trial, sc, device="torch-cpu", **kw), ap.naive_allpairs(x, lab, trial, sc), x, sc)
    assert np.array_equal(a.genuine_a, b.genuine_a) and np.array_equal(a.genuine_b, b.genuine_b)
    assert (np.abs(a.genuine.astype(float) - b.genuine) <= _tolerance(x, a.genuine_a, a.genuine_b, sc, a.genuine)).all()


def test_keep_above_keeps_every_higher_impostor(data, monkeypatch):
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)
    trial = [np.arange(len(lab))]
    sc = Scoring()
    r = ap.allpairs_scores(x, lab, trial, sc, FARS, keep_above=True, block_elems=1 << 18)
    floor = int(np.argmax(r.keep))
    assert (r.keep[floor:] | (r.hist_imp[floor:] == 0)).all()
    assert len(r.kept) == r.hist_imp[floor:].sum()
    # every kept score has its pair, and the pair really is an impostor pair with that score
    imp_pairs = lab[r.kept_a] != lab[r.kept_b]
    assert imp_pairs.all()
    xn = prepare(x, sc).astype(float)
    a, b = r.kept_a[:500], r.kept_b[:500]
    exact = np.einsum("ij,ij->i", xn[a], xn[b])
    assert (np.abs(r.kept[:500] - exact) <= _tolerance(x, a, b, sc, exact)).all()


def test_quantizer_edges_are_exact():
    for lo, hi in [(-1.0, 1.0), (-4.0, 0.0), (-123.4, 0.0)]:
        q = ap.Quantizer(lo, hi, 1 << 14)
        e = q.edges()
        i = np.arange(1, q.bins)
        below = ap._key_f32(ap._f32_key(e[1:]) - 1)
        assert (q.q(e[1:]) >= i).all() and (q.q(below) < i).all()
        v = np.random.default_rng(0).uniform(lo, hi, 10000).astype(np.float32)
        assert (q.q(v) > 0).all()  # bin 0 is only the sentinel's
