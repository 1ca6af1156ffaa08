"""Identity bootstrap: intervals cover the population value in a simulation where identities matter
(and pair resampling does not), paired comparisons, and the all-pairs 'rest block' equivalence."""

from __future__ import annotations

import numpy as np
import pytest

from fvtool.verification import allpairs as ap
from fvtool.verification.bootstrap import Comparisons, Resampler, bootstrap_ci, multiplicities, paired_comparison
from fvtool.verification.metrics import ScoreTable
from fvtool.verification.scoring import Scoring
from fvtool.verification.synthetic import clustered_embeddings, lfw_like_sizes


def _population(rng, n_ids, gen_per_id, n_imp):
    """Scores with strong identity effects: a 'goat' identity has low genuine scores, a 'wolf'
    identity attracts high impostor scores."""
    goat = rng.normal(0, 0.9, n_ids)
    wolf = rng.normal(0, 0.6, n_ids)
    gid = np.repeat(np.arange(n_ids), gen_per_id)
    gen = 2.2 + goat[gid] + rng.normal(0, 0.7, len(gid))
    ia = rng.integers(0, n_ids, n_imp)
    ib = (ia + rng.integers(1, n_ids, n_imp)) % n_ids
    imp = wolf[ia] + wolf[ib] + rng.normal(0, 0.7, n_imp)
    return Comparisons(genuine=gen, gen_id=gid, impostor=imp, imp_ia=ia, imp_ib=ib, n_ids=n_ids)


def test_identity_bootstrap_covers_the_population_value():
    rng = np.random.default_rng(11)
    big = _population(rng, 20000, 4, 400000)
    truth = ScoreTable.from_scores(big.impostor, big.genuine)
    true_eer, true_frr = truth.eer().value, truth.frr_at_far(0.05).frr
    sims, hits_eer, hits_frr, hits_pairs = 40, 0, 0, 0
    for s in range(sims):
        c = _population(np.random.default_rng(1000 + s), 80, 4, 800)
        res = bootstrap_ci(c, [0.05], replicates=150, seed=s)
        hits_eer += res["eer"]["lo"] <= true_eer <= res["eer"]["hi"]
        f = res["frr_at_far"][0]
        hits_frr += f["lo"] <= true_frr <= f["hi"]
        # the naive alternative: every comparison its own 'identity' (pair resampling)
        n_g, n_i = len(c.genuine), len(c.impostor)
        naive = Comparisons(genuine=c.genuine, gen_id=np.arange(n_g), impostor=c.impostor,
                            imp_ia=np.arange(n_g, n_g + n_i), imp_ib=np.arange(n_g, n_g + n_i), n_ids=n_g + n_i)
        # an impostor weight m_i * m_i would square; give impostors their own index and a dummy partner
        naive.imp_ib = np.full(n_i, n_g + n_i)
        naive.n_ids = n_g + n_i + 1
        r = bootstrap_ci(naive, [], replicates=150, seed=s)
        hits_pairs += r["eer"]["lo"] <= true_eer <= r["eer"]["hi"]
    assert hits_eer / sims >= 0.85
    assert hits_frr / sims >= 0.85
    assert hits_pairs < hits_eer  # resampling pairs ignores the identity correlation: too narrow


def test_same_seed_same_interval_and_point_estimate():
    c = _population(np.random.default_rng(0), 60, 3, 500)
    a = bootstrap_ci(c, [0.01, 0.1], replicates=50, seed=3)
    b = bootstrap_ci(c, [0.01, 0.1], replicates=50, seed=3)
    assert a == b
    assert a["eer"]["estimate"] == ScoreTable.from_scores(c.impostor, c.genuine).eer().value
    assert multiplicities(60, 5, 1).sum(axis=1).tolist() == [60] * 5


def test_paired_comparison():
    rng = np.random.default_rng(4)
    a = _population(rng, 80, 4, 1500)
    same = paired_comparison(a, a, [0.05], replicates=100, seed=0)
    assert same["eer"]["diff"] == 0 and same["eer"]["lo"] == 0 and same["eer"]["hi"] == 0
    assert not same["eer"]["significant"]
    better = Comparisons(genuine=a.genuine + 0.8, gen_id=a.gen_id, impostor=a.impostor, imp_ia=a.imp_ia,
                         imp_ib=a.imp_ib, n_ids=a.n_ids)
    d = paired_comparison(better, a, [0.05], replicates=100, seed=0)
    assert d["eer"]["diff"] < 0 and d["eer"]["hi"] < 0 and d["eer"]["significant"]
    assert d["frr_at_far"][0]["diff"] < 0


def test_allpairs_rest_block_gives_the_same_replicates(monkeypatch):
    """With the impostors below the kept bins folded into one weighted block, a replicate's
    EER/FRR equal those computed from every impostor with its pair (when evaluable)."""
    monkeypatch.setattr(ap, "KEEP_ALL_BELOW", 100)
    sizes = lfw_like_sizes(600, seed=2)
    x, lab = clustered_embeddings(sizes, dim=32, seed=2, center_dim=16)
    trials = [np.arange(len(lab))]
    r = ap.allpairs_scores(x, lab, trials, Scoring(), [1e-2, 1e-3], keep_above=True, block_elems=1 << 16)
    floor = int(np.argmax(r.keep))
    n_ids = int(lab.max()) + 1
    rest = Comparisons(genuine=r.genuine, gen_id=lab[r.genuine_a], impostor=r.kept, imp_ia=lab[r.kept_a],
                       imp_ib=lab[r.kept_b], n_ids=n_ids,
                       rest_value=float(np.nextafter(np.float64(r.edges[floor]), -np.inf)),
                       trial_counts=[np.unique(lab[t], return_counts=True) for t in trials])
    # full listing from the naive matrix
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    s = xn @ xn.T
    iu = np.triu_indices(len(lab), 1)
    imp_mask = lab[iu[0]] != lab[iu[1]]
    full = Comparisons(genuine=s[iu][~imp_mask], gen_id=lab[iu[0]][~imp_mask], impostor=s[iu][imp_mask],
                       imp_ia=lab[iu[0]][imp_mask], imp_ib=lab[iu[1]][imp_mask], n_ids=n_ids)
    ra, rb = Resampler(rest), Resampler(full)
    checked = 0
    for m in multiplicities(n_ids, 8, 0):
        ta, tb = ra.table(m), rb.table(m)
        assert ta.n_imp == tb.n_imp and ta.n_gen == tb.n_gen
        for f in (1e-2, 1e-3):
            oa, ob = ta.frr_at_far(f), tb.frr_at_far(f)
            if ra.far_ok(ta, oa.threshold, oa.above_max):
                assert oa == ob
                checked += 1
    assert checked >= 12


def test_rejects_mismatched_identity_sets():
    a = _population(np.random.default_rng(0), 30, 2, 100)
    b = _population(np.random.default_rng(0), 31, 2, 100)
    with pytest.raises(ValueError):
        paired_comparison(a, b, [0.1], replicates=2)
