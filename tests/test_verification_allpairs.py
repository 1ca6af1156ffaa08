"""Streaming all-pairs == the naive full matrix (same GEMM), bin for bin and threshold for threshold."""

from __future__ import annotations

import numpy as np
import pytest

from fvtool.verification import allpairs as ap
from fvtool.verification.metrics import ScoreTable
from fvtool.verification.scoring import Scoring
from fvtool.verification.synthetic import clustered_embeddings, lfw_like_sizes

FARS = [1e-2, 1e-3, 1e-4, 1e-5]


@pytest.fixture(scope="module")
def data():
    sizes = lfw_like_sizes(2000, seed=3)
    x, lab = clustered_embeddings(sizes, dim=64, seed=3, center_dim=24)
    return x, lab


def _check(r: ap.AllPairsScores, ref: ScoreTable, imp: np.ndarray, gen: np.ndarray, fars=FARS) -> None:
    assert np.array_equal(np.sort(r.genuine), np.sort(gen.astype(np.float32)))
    assert r.n_imp == len(imp) and r.n_gen == len(gen)
    assert np.array_equal(r.hist_imp, np.bincount(r.quant.q(imp), minlength=r.quant.bins))
    tab = r.table()
    for f in fars:
        a, b = ref.frr_at_far(f), tab.frr_at_far(f)
        assert a == b, f
        assert r.far_exact(tab, b.threshold, b.above_max)
    ea, eb = ref.eer(), tab.eer()
    assert ea == eb
    assert r.around_exact(tab, eb.threshold)
    assert tab.eer_interp() == ref.eer_interp()


@pytest.mark.parametrize("metric,normalise", [("cosine", True), ("sqeuclidean", False), ("euclidean", True)])
def test_stream_equals_naive(data, monkeypatch, metric, normalise):
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)  # force planning + kept bins at this size
    sc = Scoring(metric, normalise)
    trial = [np.arange(len(lab))]
    bins = ap.DEFAULT_BINS if metric == "cosine" else 1 << 16
    r = ap.allpairs_scores(x, lab, trial, sc, FARS, sample_pairs=1 << 16, block_elems=1 << 18, bins=bins)
    imp, gen = ap.naive_allpairs(x, lab, trial, sc)
    assert not r.complete and len(r.kept) < len(imp) // 2  # (a wide EER band for the weak raw metric)
    ref = ScoreTable.from_scores(imp, gen)
    _check(r, ref, imp, gen)
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
    r = ap.allpairs_scores(x, lab, trial, sc, FARS, block_elems=1 << 18, bins=1 << 16)
    assert r.passes == 2
    imp, gen = ap.naive_allpairs(x, lab, trial, sc)
    _check(r, ScoreTable.from_scores(imp, gen), imp, gen)


def test_several_trials_and_small_trials_keep_everything(data):
    x, lab = data
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(lab))
    trials = [np.sort(idx[:700]), np.sort(idx[700:1500]), idx[1500:1501]]  # a 1-image trial has no pairs
    sc = Scoring()
    r = ap.allpairs_scores(x, lab, trials, sc, FARS, block_elems=1 << 16, bins=1 << 16)
    imp, gen = ap.naive_allpairs(x, lab, trials[:2], sc)
    assert r.complete and len(r.kept) == len(imp)
    _check(r, ScoreTable.from_scores(imp, gen), imp, gen)
    assert ScoreTable.from_scores(imp, gen).eer_rocch() == pytest.approx(r.table().eer_rocch())


def test_torch_backend_matches_numpy(data, monkeypatch):
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)
    trial = [np.arange(800)]
    sc = Scoring()
    a = ap.allpairs_scores(x, lab, trial, sc, FARS, block_elems=1 << 17, bins=1 << 16)
    b = ap.allpairs_scores(x, lab, trial, sc, FARS, block_elems=1 << 17, bins=1 << 16, device="torch-cpu")
    assert np.array_equal(a.hist_imp, b.hist_imp)
    assert a.table().eer() == b.table().eer()
    assert a.table().frr_at_far(1e-3) == b.table().frr_at_far(1e-3)


def test_keep_above_keeps_every_higher_impostor(data, monkeypatch):
    x, lab = data
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 1000)
    trial = [np.arange(len(lab))]
    r = ap.allpairs_scores(x, lab, trial, Scoring(), FARS, keep_above=True, block_elems=1 << 18)
    floor = int(np.argmax(r.keep))
    assert (r.keep[floor:] | (r.hist_imp[floor:] == 0)).all()
    assert len(r.kept) == r.hist_imp[floor:].sum()
    # every kept score has its pair, and the pair really is an impostor pair with that score
    imp_pairs = lab[r.kept_a] != lab[r.kept_b]
    assert imp_pairs.all()
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = np.einsum("ij,ij->i", xn[r.kept_a[:500]].astype(float), xn[r.kept_b[:500]].astype(float))
    assert np.allclose(s, r.kept[:500], atol=1e-5)


def test_quantizer_edges_are_exact():
    for lo, hi in [(-1.0, 1.0), (-4.0, 0.0), (-123.4, 0.0)]:
        q = ap.Quantizer(lo, hi, 1 << 14)
        e = q.edges()
        i = np.arange(1, q.bins)
        below = ap._key_f32(ap._f32_key(e[1:]) - 1)
        assert (q.q(e[1:]) >= i).all() and (q.q(below) < i).all()
        v = np.random.default_rng(0).uniform(lo, hi, 10000).astype(np.float32)
        assert (q.q(v) > 0).all()  # bin 0 is only the sentinel's
