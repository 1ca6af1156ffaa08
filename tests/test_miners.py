"""Miners select exactly the triplets/pairs their definitions say, on hand-built batches whose
answers are written out by hand, and agree with pytorch-metric-learning's miners where those
implement the same definition (BatchHardMiner, TripletMarginMiner semihard, DistanceWeightedMiner
in distribution)."""

from __future__ import annotations

import math

import pytest
import torch
from pytorch_metric_learning import miners as pml_miners
from pytorch_metric_learning.distances import LpDistance

from fvtool.errors import InputError
from fvtool.mining import build_miner, miner_specs, resolve_miner_name
from fvtool.mining.base import euclidean_distances
from fvtool.mining.distance_weighted import DistanceWeightedMiner

# Hand-built batch: points on a line, so every distance is |x_i - x_j| and the answers can be
# read off by hand.   index:   0     1     2     3     4     5
POS = torch.tensor([[0.0], [0.3], [1.0], [1.2], [0.5], [2.0]])
LAB = torch.tensor([0, 0, 1, 1, 2, 2])
D = euclidean_distances(POS)


def test_registry_resolves_user_spellings() -> None:
    assert resolve_miner_name("hard") == "batch-hard"
    assert resolve_miner_name("semihard") == "semihard"
    assert resolve_miner_name("semi-hard") == "semihard"
    assert resolve_miner_name("all") == "batch-all"
    assert resolve_miner_name("random") == "random"
    assert resolve_miner_name("hard-negative") == "hard-negative"
    assert resolve_miner_name("hard_negative") == "hard-negative"
    assert resolve_miner_name("distance-weighted") == "distance-weighted"
    assert set(miner_specs()) == {"random", "semihard", "batch-hard", "batch-all", "hard-negative",
                                  "distance-weighted"}
    with pytest.raises(InputError, match="unknown miner 'hardest'"):
        resolve_miner_name("hardest")
    with pytest.raises(InputError, match="does not take"):
        build_miner("hard", margin=0.1)


def test_batch_hard_on_hand_built_batch() -> None:
    # anchor: farthest positive, closest negative
    # 0 (x=0):   p=1 (0.3);  negatives 2:1.0 3:1.2 4:0.5 5:2.0 -> 4
    # 1 (x=.3):  p=0;        negatives 2:.7 3:.9 4:.2 5:1.7       -> 4
    # 2 (x=1):   p=3;        negatives 0:1 1:.7 4:.5 5:1          -> 4
    # 3 (x=1.2): p=2;        negatives 0:1.2 1:.9 4:.7 5:.8       -> 4
    # 4 (x=.5):  p=5;        negatives 0:.5 1:.2 2:.5 3:.7        -> 1
    # 5 (x=2):   p=4;        negatives 0:2 1:1.7 2:1 3:.8         -> 3
    t = build_miner("hard")(POS, LAB, D)
    assert t.as_set() == {(0, 1, 4), (1, 0, 4), (2, 3, 4), (3, 2, 4), (4, 5, 1), (5, 4, 3)}


def test_hard_negative_on_hand_built_batch() -> None:
    # every positive pair, with its anchor's closest negative (same negatives as above)
    t = build_miner("hard-negative")(POS, LAB, D)
    assert t.as_set() == {(0, 1, 4), (1, 0, 4), (2, 3, 4), (3, 2, 4), (4, 5, 1), (5, 4, 3)}
    labels = torch.tensor([0, 0, 0, 1, 1, 2])  # three positives per class-0 anchor pair
    pos = torch.tensor([[0.0], [0.1], [0.9], [1.0], [3.0], [0.4]])
    t = build_miner("hard-negative")(pos, labels, euclidean_distances(pos))
    assert t.as_set() == {(0, 1, 5), (0, 2, 5), (1, 0, 5), (1, 2, 5), (2, 0, 3), (2, 1, 3),
                          (3, 4, 2), (4, 3, 3 - 1)}  # 4 (x=3): negatives 0:3 1:2.9 2:2.1 5:2.6 -> 2


def test_semihard_on_hand_built_batch() -> None:
    # d(a,p) < d(a,n) < d(a,p) + 0.35
    # (0,1) d=.3: negatives 2:1.0 3:1.2 4:.5 5:2 -> {4}
    # (1,0) d=.3: 2:.7 3:.9 4:.2 5:1.7           -> {}   (4 is hard: .2 < .3)
    # (2,3) d=.2: 0:1 1:.7 4:.5 5:1              -> {4}
    # (3,2) d=.2: 0:1.2 1:.9 4:.7 5:.8           -> {}
    # (4,5) d=1.5: 0:.5 1:.2 2:.5 3:.7           -> {}   (all hard)
    # (5,4) d=1.5: 0:2 1:1.7 2:1 3:.8            -> {1 (1.7)}
    m = build_miner("semihard", margin=0.35, select="all")
    assert m(POS, LAB, D).as_set() == {(0, 1, 4), (2, 3, 4), (5, 4, 1)}
    for select in ("random", "hardest"):
        m = build_miner("semihard", margin=0.35, select=select)
        assert m(POS, LAB, D).as_set() == {(0, 1, 4), (2, 3, 4), (5, 4, 1)}
    # with a wider margin (5,4) has two semi-hard negatives: 1 (1.7) and 0 (2.0); hardest is 1
    wide = build_miner("semihard", margin=0.6, select="all")(POS, LAB, D).as_set()
    assert {(5, 4, 0), (5, 4, 1)} <= wide
    hardest = build_miner("semihard", margin=0.6, select="hardest")(POS, LAB, D).as_set()
    assert (5, 4, 1) in hardest and (5, 4, 0) not in hardest


def test_semihard_random_picks_one_valid_negative_per_pair_uniformly() -> None:
    m = build_miner("semihard", margin=0.6, select="random", seed=0)
    counts = {0: 0, 1: 0}
    for _ in range(400):
        t = m(POS, LAB, D)
        rows = [(p, n) for a, p, n in t.as_set() if a == 5]
        assert len(rows) == 1
        counts[rows[0][1]] += 1
    assert 140 < counts[0] < 260 and counts[0] + counts[1] == 400


def test_semihard_needs_a_margin() -> None:
    with pytest.raises(InputError, match="margin"):
        build_miner("semihard")(POS, LAB, D)


def test_batch_all_triplets_and_pairs() -> None:
    t = build_miner("all")(POS, LAB, D)
    want = {(a, p, n) for a in range(6) for p in range(6) for n in range(6)
            if a != p and LAB[a] == LAB[p] and LAB[n] != LAB[a]}
    assert t.as_set() == want and len(want) == 6 * 1 * 4
    pairs = build_miner("all").mine_pairs(POS, LAB, D)
    assert pairs.n_pos == 6 and pairs.n_neg == 24  # ordered pairs


def test_random_miner_one_valid_negative_per_positive_pair_and_seeded() -> None:
    a = build_miner("random", seed=1)(POS, LAB, D)
    assert sorted(zip(a.anchor.tolist(), a.positive.tolist(), strict=True)) == [
        (0, 1), (1, 0), (2, 3), (3, 2), (4, 5), (5, 4)]
    assert all(LAB[n] != LAB[i] for i, n in zip(a.anchor.tolist(), a.negative.tolist(), strict=True))
    b = build_miner("random", seed=1)(POS, LAB, D)
    assert torch.equal(a.negative, b.negative)
    draws = torch.stack([build_miner("random", seed=s)(POS, LAB, D).negative for s in range(200)])
    counts = torch.bincount(draws[:, 0], minlength=6)  # anchor 0's negatives: 2, 3, 4, 5 uniformly
    assert counts[0] == counts[1] == 0 and all(30 < int(c) < 70 for c in counts[2:])


def test_miners_agree_with_brute_force_on_random_batches() -> None:
    g = torch.Generator().manual_seed(0)
    for _ in range(5):
        x = torch.randn(12, 3, generator=g)
        y = torch.randint(0, 4, (12,), generator=g)
        d = euclidean_distances(x)
        n = len(y)
        hard = set()
        for a in range(n):
            ps = [p for p in range(n) if p != a and y[p] == y[a]]
            ns = [q for q in range(n) if y[q] != y[a]]
            if ps and ns:
                hard.add((a, max(ps, key=lambda p: d[a, p]), min(ns, key=lambda q: d[a, q])))
        assert build_miner("hard")(x, y, d).as_set() == hard
        semi = {(a, p, q) for a in range(n) for p in range(n) for q in range(n)
                if a != p and y[a] == y[p] and y[q] != y[a] and d[a, p] < d[a, q] < d[a, p] + 0.5}
        assert build_miner("semihard", margin=0.5, select="all")(x, y, d).as_set() == semi


def test_batch_hard_and_semihard_agree_with_pml() -> None:
    g = torch.Generator().manual_seed(1)
    x = torch.nn.functional.normalize(torch.randn(24, 8, generator=g), dim=1)
    y = torch.arange(6).repeat_interleave(4)
    d = euclidean_distances(x)
    a, p, n = pml_miners.BatchHardMiner()(x, y)
    assert build_miner("hard")(x, y, d).as_set() == set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))
    # pml's semihard is margin-inclusive (<=); random floats never sit on the boundary
    for squared, margin in ((False, 0.3), (True, 0.2)):
        dm = euclidean_distances(x, squared=squared)
        pml = pml_miners.TripletMarginMiner(margin=margin, type_of_triplets="semihard",
                                           distance=LpDistance(power=2 if squared else 1))
        a, p, n = pml(x, y)
        ours = build_miner("semihard", margin=margin, select="all")(x, y, dm).as_set()
        assert ours == set(zip(a.tolist(), p.tolist(), n.tolist(), strict=True))


# ---- distance-weighted ------------------------------------------------------------------

def test_distance_weights_equal_wu_formula() -> None:
    """Pr(n | a) ∝ q(d_an)^-1 = d^(2-n) (1 - d^2/4)^(-(n-3)/2), d clipped at 0.5, zero beyond 1.4."""
    g = torch.Generator().manual_seed(2)
    dim = 5
    x = torch.nn.functional.normalize(torch.randn(10, dim, generator=g, dtype=torch.float64), dim=1)
    y = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3, 4, 4])
    w = DistanceWeightedMiner().negative_weights(x, y)
    for a in range(10):
        raw = []
        for q in range(10):
            d = math.sqrt(float(((x[a] - x[q]) ** 2).sum()))
            ok = y[q] != y[a] and d < 1.4
            dc = max(d, 0.5)
            raw.append(dc ** (2 - dim) * (1 - dc * dc / 4) ** (-(dim - 3) / 2) if ok else 0.0)
        if sum(raw) == 0:  # uniform fallback over the negatives
            raw = [1.0 if y[q] != y[a] else 0.0 for q in range(10)]
        want = [r / sum(raw) for r in raw]
        assert w[a].tolist() == pytest.approx(want, rel=1e-9, abs=1e-15)


def test_distance_weighted_sampling_matches_weights_and_pml_in_distribution() -> None:
    g = torch.Generator().manual_seed(3)
    dim = 6
    x = torch.nn.functional.normalize(torch.randn(15, dim, generator=g), dim=1)
    y = torch.arange(3).repeat_interleave(5)  # 4 draws per anchor per call
    miner = build_miner("distance-weighted", seed=0)
    w = miner.negative_weights(x, y)
    draws = 300
    ours = torch.zeros(15, 15)
    for _ in range(draws):
        t = miner(x, y, euclidean_distances(x))
        ours.index_put_((t.anchor, t.negative), torch.ones(len(t)), accumulate=True)
    ours /= ours.sum(1, keepdim=True)
    torch.manual_seed(0)
    pml = pml_miners.DistanceWeightedMiner()
    ref = torch.zeros(15, 15)
    for _ in range(draws):
        a, _, n = pml(x, y)
        ref.index_put_((a, n), torch.ones(len(a)), accumulate=True)
    ref /= ref.sum(1, keepdim=True).clamp_min(1)
    assert (ours - w).abs().max() < 0.06
    rows = ref.sum(1) > 0  # pml drops anchors whose negatives all lie beyond the cutoff
    assert (ref[rows] - w[rows].float()).abs().max() < 0.06
    # every positive pair gets one negative, and a negative is never of the anchor's class
    t = miner(x, y, euclidean_distances(x))
    assert len(t) == 15 * 4 and bool(torch.all(y[t.negative] != y[t.anchor]))


def test_distance_weighted_is_stable_in_high_dimension() -> None:
    """d^(2-n) is ~1e150 at d = 0.5 for n = 512: weights must stay finite, not NaN."""
    x = torch.nn.functional.normalize(torch.randn(16, 512), dim=1)
    y = torch.arange(8).repeat_interleave(2)
    w = DistanceWeightedMiner().negative_weights(x, y)
    assert torch.all(torch.isfinite(w)) and torch.allclose(w.sum(1), torch.ones(16, dtype=w.dtype))
