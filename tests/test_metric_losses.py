"""Pair/triplet/N-pair/circle/SupCon losses: each equals a direct re-computation of its paper's
formula on small hand-made batches (plain Python loops, float64), and agrees with
pytorch-metric-learning where it implements the same loss (conventions mapped explicitly)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pytorch_metric_learning import losses as pml_losses
from pytorch_metric_learning.distances import DotProductSimilarity, LpDistance

from fvtool.errors import InputError
from fvtool.losses.registry import build_loss, loss_specs
from fvtool.mining import build_miner

METRIC_LOSSES = ("contrastive", "triplet", "margin", "hard-margin", "npair", "circle", "supcon")


def batch(seed: int = 0, n_classes: int = 3, k: int = 3, dim: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_classes * k, dim, generator=g, dtype=torch.float64)
    y = torch.arange(n_classes).repeat_interleave(k)
    return x, y


def unit(v: torch.Tensor) -> list[float]:
    n = math.sqrt(sum(float(a) ** 2 for a in v))
    return [float(a) / n for a in v]


def dist(u: list[float], v: list[float]) -> float:
    return math.sqrt(sum((a - b) ** 2 for a, b in zip(u, v, strict=True)))


def dot(u: list[float], v: list[float]) -> float:
    return sum(a * b for a, b in zip(u, v, strict=True))


def all_pairs(y: torch.Tensor) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
    n = len(y)
    pos = [(i, j) for i in range(n) for j in range(n) if i != j and y[i] == y[j]]
    neg = [(i, j) for i in range(n) for j in range(n) if y[i] != y[j]]
    return pos, neg


def reduce(pos: list[float], neg: list[float], how: str) -> float:
    def mean(v: list[float], active: bool) -> float:
        v = [t for t in v if t > 0] if active else v
        return sum(v) / len(v) if v else 0.0

    if how == "balanced":
        return mean(pos, False) + mean(neg, False)
    if how == "balanced_active":
        return mean(pos, True) + mean(neg, True)
    allv = pos + neg
    if how == "mean":
        return sum(allv) / len(allv)
    return sum(allv) / max(1, sum(t > 0 for t in allv))


def test_all_metric_losses_registered_with_family_metric() -> None:
    specs = loss_specs()
    for name in METRIC_LOSSES:
        assert specs[name].family == "metric", name


# ---- contrastive -----------------------------------------------------------------------

@pytest.mark.parametrize("reduction", ["mean", "mean_active", "balanced", "balanced_active"])
@pytest.mark.parametrize("squared", [True, False])
def test_contrastive_equals_hadsell_formula(reduction: str, squared: bool) -> None:
    x, y = batch(1)
    m = 1.1
    f = [unit(v) for v in x]
    pos_pairs, neg_pairs = all_pairs(y)
    p = 2 if squared else 1
    pos = [dist(f[i], f[j]) ** p for i, j in pos_pairs]                 # y d^2
    neg = [max(0.0, m - dist(f[i], f[j])) ** p for i, j in neg_pairs]   # (1 - y) max(0, m - d)^2
    want = reduce(pos, neg, reduction)
    out = build_loss("contrastive", margin=m, squared=squared, reduction=reduction)(x, y)
    assert out.loss.item() == pytest.approx(want, rel=1e-9, abs=1e-12)
    assert out.stats["n_pairs"] == len(pos_pairs) + len(neg_pairs)
    assert out.stats["active_fraction"] == pytest.approx(
        (sum(t > 0 for t in pos) + sum(t > 0 for t in neg)) / (len(pos) + len(neg)))


def test_contrastive_unnormalised_uses_raw_distances() -> None:
    x, y = batch(2)
    pos_pairs, neg_pairs = all_pairs(y)
    f = [[float(a) for a in v] for v in x]
    pos = [dist(f[i], f[j]) ** 2 for i, j in pos_pairs]
    neg = [max(0.0, 3.0 - dist(f[i], f[j])) ** 2 for i, j in neg_pairs]
    out = build_loss("contrastive", margin=3.0, normalize=False, reduction="mean")(x, y)
    assert out.loss.item() == pytest.approx(reduce(pos, neg, "mean"), rel=1e-9)


@pytest.mark.parametrize("mining", [None, "hard", "semihard"])
def test_contrastive_agrees_with_pml(mining: str | None) -> None:
    """pml's ContrastiveLoss(pos_margin=0, neg_margin=m) is our unsquared variant, reduced per side
    over non-zero terms (AvgNonZeroReducer) = balanced_active."""
    x, y = batch(3, n_classes=4, k=4, dim=6)
    ours = build_loss("contrastive", margin=0.9, squared=False, reduction="balanced_active", miner=mining)
    out = ours(x, y)
    pml = pml_losses.ContrastiveLoss(pos_margin=0, neg_margin=0.9)
    if mining is None:
        ref = pml(x, y)
    else:
        xn = torch.nn.functional.normalize(x, dim=1)
        from fvtool.mining.base import euclidean_distances

        miner = build_miner(mining, seed=0)
        miner.margin = 0.9
        t = miner(xn, y, euclidean_distances(xn))
        ref = pml(x, y, (t.anchor, t.positive, t.anchor, t.negative))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-7)


# ---- triplet ---------------------------------------------------------------------------

def test_triplet_equals_facenet_formula_over_all_triplets() -> None:
    x, y = batch(4)
    alpha = 0.3
    f = [unit(v) for v in x]
    n = len(y)
    terms = [max(0.0, dist(f[a], f[p]) ** 2 - dist(f[a], f[q]) ** 2 + alpha)
             for a in range(n) for p in range(n) for q in range(n)
             if a != p and y[a] == y[p] and y[q] != y[a]]
    for reduction, want in (("mean", sum(terms) / len(terms)),
                            ("mean_active", sum(terms) / sum(t > 0 for t in terms))):
        out = build_loss("triplet", margin=alpha, miner="all", reduction=reduction)(x, y)
        assert out.loss.item() == pytest.approx(want, rel=1e-9)
        assert out.stats["n_triplets"] == len(terms)
        assert out.stats["active_fraction"] == pytest.approx(sum(t > 0 for t in terms) / len(terms))


@pytest.mark.parametrize("mining", ["all", "hard", "semihard", "hard-negative"])
@pytest.mark.parametrize("squared", [True, False])
def test_triplet_agrees_with_pml(mining: str, squared: bool) -> None:
    x, y = batch(5, n_classes=4, k=3, dim=8)
    ours = build_loss("triplet", margin=0.25, squared=squared, miner=mining, seed=3)
    out = ours(x, y)
    from fvtool.mining.base import euclidean_distances

    xn = torch.nn.functional.normalize(x, dim=1)
    miner = build_miner(mining, seed=3)
    miner.margin = 0.25
    t = miner(xn, y, euclidean_distances(xn, squared=squared))
    pml = pml_losses.TripletMarginLoss(margin=0.25, distance=LpDistance(power=2 if squared else 1))
    ref = pml(x, y, (t.anchor, t.positive, t.negative))
    assert out.loss.item() == pytest.approx(ref.item(), rel=1e-7, abs=1e-12)


# ---- margin and hard-margin --------------------------------------------------------------

@pytest.mark.parametrize("name,term", [("margin", lambda z: max(0.0, z)),
                                       ("hard-margin", lambda z: math.log1p(max(0.0, z)))])
def test_margin_losses_equal_formula(name: str, term) -> None:
    x, y = batch(6)
    alpha, beta = 0.2, 1.1
    f = [unit(v) for v in x]
    pos_pairs, neg_pairs = all_pairs(y)
    pos = [term(alpha + (dist(f[i], f[j]) - beta)) for i, j in pos_pairs]    # y = +1
    neg = [term(alpha - (dist(f[i], f[j]) - beta)) for i, j in neg_pairs]    # y = -1
    for reduction in ("mean", "mean_active", "balanced"):
        out = build_loss(name, margin=alpha, beta=beta, miner="all", reduction=reduction)(x, y)
        assert out.loss.item() == pytest.approx(reduce(pos, neg, reduction), rel=1e-6)  # beta is float32


def test_margin_class_specific_beta_and_regulariser() -> None:
    x, y = batch(7)
    alpha, nu = 0.2, 0.05
    betas = [1.0, 1.2, 1.4]
    f = [unit(v) for v in x]
    pos_pairs, neg_pairs = all_pairs(y)
    pos = [max(0.0, alpha + dist(f[i], f[j]) - betas[y[i]]) for i, j in pos_pairs]
    neg = [max(0.0, alpha - dist(f[i], f[j]) + betas[y[i]]) for i, j in neg_pairs]
    reg = nu * sum(betas[y[i]] for i, _ in pos_pairs + neg_pairs) / (len(pos_pairs) + len(neg_pairs))
    loss = build_loss("margin", margin=alpha, class_specific_beta=True, num_classes=3, nu=nu, miner="all")
    with torch.no_grad():
        loss.beta.copy_(torch.tensor(betas))
    out = loss(x, y)
    assert out.loss.item() == pytest.approx(reduce(pos, neg, "mean_active") + reg, rel=1e-6)
    out.loss.backward()
    assert loss.beta.grad is not None and loss.beta.grad.abs().sum() > 0  # beta is learned


@pytest.mark.parametrize("mining", ["hard", "distance-weighted", "semihard"])
def test_margin_agrees_with_pml(mining: str) -> None:
    x, y = batch(8, n_classes=4, k=3, dim=8)
    from fvtool.mining.base import euclidean_distances

    xn = torch.nn.functional.normalize(x, dim=1)
    miner = build_miner(mining, seed=1)
    miner.margin = 0.2
    t = miner(xn, y, euclidean_distances(xn))
    ours = build_loss("margin", margin=0.2, beta=1.2, miner=build_miner(mining, seed=1))(x, y)
    ref = pml_losses.MarginLoss(margin=0.2, beta=1.2, learn_beta=True)(x, y, (t.anchor, t.positive, t.negative))
    assert ours.loss.item() == pytest.approx(ref.item(), rel=1e-7)


# ---- N-pair -----------------------------------------------------------------------------

def npair_formula(x: torch.Tensor, anchors: list[int], positives: list[int]) -> list[float]:
    f = [[float(a) for a in v] for v in x]
    out = []
    for i, a in enumerate(anchors):
        s = sum(math.exp(dot(f[a], f[positives[j]]) - dot(f[a], f[positives[i]]))
                for j in range(len(anchors)) if j != i)
        out.append(math.log1p(s))  # log(1 + sum_{j != i} exp(f_i.f_j+ - f_i.f_i+))
    return out


def test_npair_equals_sohn_formula_and_pml_for_k2() -> None:
    x, y = batch(9, n_classes=5, k=2, dim=4)
    terms = npair_formula(x, [0, 2, 4, 6, 8], [1, 3, 5, 7, 9])
    out = build_loss("npair", l2_reg=0.0)(x, y)
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    # pml normalises by default; Sohn's loss uses raw inner products
    pml = pml_losses.NPairsLoss(distance=DotProductSimilarity(normalize_embeddings=False))
    assert out.loss.item() == pytest.approx(pml(x, y).item(), rel=1e-9)
    reg = 0.01 * x.pow(2).sum(1).mean().item()
    assert build_loss("npair", l2_reg=0.01)(x, y).loss.item() == pytest.approx(sum(terms) / len(terms) + reg)


def test_npair_uses_every_sample_in_rounds_for_k4() -> None:
    x, y = batch(10, n_classes=3, k=4, dim=4)  # class c holds rows 4c..4c+3
    terms = npair_formula(x, [0, 4, 8], [1, 5, 9]) + npair_formula(x, [2, 6, 10], [3, 7, 11])
    out = build_loss("npair", l2_reg=0.0)(x, y)
    assert out.loss.item() == pytest.approx(sum(terms) / len(terms), rel=1e-9)
    assert out.stats["n_tuples"] == 6 and out.stats["n_rounds"] == 2


# ---- circle -----------------------------------------------------------------------------

def _anchor_mean(x: torch.Tensor, y: torch.Tensor, term) -> float:
    """Mean over anchors with a positive and a negative of term(positive sims, negative sims)."""
    f = [unit(v) for v in x]
    per = []
    for i in range(len(y)):
        sp = [dot(f[i], f[j]) for j in range(len(y)) if j != i and y[j] == y[i]]
        sn = [dot(f[i], f[j]) for j in range(len(y)) if y[j] != y[i]]
        if sp and sn:
            per.append(term(sp, sn))
    return sum(per) / len(per)


def circle_formula(x: torch.Tensor, y: torch.Tensor, m: float, gamma: float) -> float:
    return _anchor_mean(x, y, lambda sp, sn: math.log1p(
        sum(math.exp(gamma * max(0.0, s + m) * (s - m)) for s in sn)                     # a_n (s_n - D_n)
        * sum(math.exp(-gamma * max(0.0, 1 + m - s) * (s - (1 - m))) for s in sp)))     # a_p (s_p - D_p)


def test_circle_equals_formula_and_pml() -> None:
    x, y = batch(11)
    for m, gamma in ((0.25, 16.0), (0.4, 8.0)):
        out = build_loss("circle", margin=m, scale=gamma)(x, y)
        assert out.loss.item() == pytest.approx(circle_formula(x, y, m, gamma), rel=1e-9)
        assert out.loss.item() == pytest.approx(pml_losses.CircleLoss(m=m, gamma=gamma)(x, y).item(), rel=1e-7)


def test_circle_gradient_treats_weights_as_constants() -> None:
    """d/ds of gamma * a_p(s) * (s - D_p) with a_p detached is gamma * a_p (not the full product rule)."""
    x = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.1], [-0.8, -0.6]], dtype=torch.float64, requires_grad=True)
    y = torch.tensor([0, 0, 1, 1])
    ours = build_loss("circle", margin=0.25, scale=4.0)(x, y).loss
    ref = pml_losses.CircleLoss(m=0.25, gamma=4.0)(x, y)
    g1, = torch.autograd.grad(ours, x)
    g2, = torch.autograd.grad(ref, x)
    assert torch.allclose(g1, g2, rtol=1e-7)


# ---- SupCon -----------------------------------------------------------------------------

def test_supcon_equals_khosla_formula_and_pml() -> None:
    x, y = batch(12, n_classes=3, k=3)
    y = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 3])  # class 3 has no positive: not an anchor
    tau = 0.2
    f = [unit(v) for v in x]
    per = []
    for i in range(len(y)):
        P = [p for p in range(len(y)) if p != i and y[p] == y[i]]
        if not P:
            continue
        denom = sum(math.exp(dot(f[i], f[a]) / tau) for a in range(len(y)) if a != i)
        per.append(-sum(math.log(math.exp(dot(f[i], f[p]) / tau) / denom) for p in P) / len(P))
    out = build_loss("supcon", temperature=tau)(x, y)
    assert out.loss.item() == pytest.approx(sum(per) / len(per), rel=1e-9)
    assert out.stats["n_anchors"] == len(per)
    assert out.loss.item() == pytest.approx(pml_losses.SupConLoss(temperature=tau)(x, y).item(), rel=1e-7)


# ---- shared behaviour --------------------------------------------------------------------

@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_no_tuples_gives_zero_loss_that_backpropagates(name: str) -> None:
    cases = [torch.arange(1)]  # a single sample: no pair at all
    if name != "contrastive":  # contrastive trains on negative pairs alone
        cases.append(torch.arange(4))  # every sample its own identity: no positive pair
    for y in cases:
        x = torch.randn(len(y), 6, requires_grad=True)
        out = build_loss(name)(x, y)
        assert out.loss.item() == 0.0
        out.loss.backward()
        assert x.grad is not None and torch.all(x.grad == 0)


@pytest.mark.parametrize("name", METRIC_LOSSES)
def test_collapsed_embeddings_give_finite_gradients(name: str) -> None:
    x = torch.ones(8, 6, requires_grad=True)  # every embedding identical
    y = torch.arange(4).repeat_interleave(2)
    out = build_loss(name)(x, y)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.all(torch.isfinite(x.grad))


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(InputError, match="reduction"):
        build_loss("triplet", reduction="sum")
    with pytest.raises(InputError, match="num_classes"):
        build_loss("margin", class_specific_beta=True)
    with pytest.raises(InputError, match="unknown miner"):
        build_loss("triplet", miner="hardest-ever")
    with pytest.raises(InputError, match="needs a margin"):
        build_loss("circle", miner="semihard")
    with pytest.raises(InputError, match="labels"):
        build_loss("triplet")(torch.randn(4, 3), torch.arange(3))


def test_miner_state_travels_in_the_loss_state_dict() -> None:
    """A resumed run draws the same random tuples: the generator state is in state_dict()."""
    x, y = batch(13, n_classes=4, k=4)
    a = build_loss("margin", seed=5)
    a(x, y)  # advance the generator
    b = build_loss("margin", seed=5)
    b.load_state_dict(a.state_dict())
    ta = a.miner(torch.nn.functional.normalize(x, dim=1), y, torch.zeros(16, 16))
    tb = b.miner(torch.nn.functional.normalize(x, dim=1), y, torch.zeros(16, 16))
    assert torch.equal(ta.negative, tb.negative)


# ---- siamese BCE ----------------------------------------------------------------------------

@pytest.mark.parametrize("head", ["linear", "mlp", "distance"])
def test_siamese_bce_equals_formula(head: str) -> None:
    """L = -[y log p + (1 - y) log(1 - p)], p = sigmoid(h(f1, f2)) on L2-normalised embeddings."""
    torch.manual_seed(0)
    x, _ = batch(14, n_classes=4, k=2)  # 8 embeddings = 4 pairs: rows 0-3 left, 4-7 right
    labels = torch.tensor([0, 1, 2, 3, 0, 5, 2, 7])  # pairs 0 and 2 genuine
    loss = build_loss("siamese-bce", embedding_size=5, head=head).double()
    f = [unit(v) for v in x]
    total = 0.0
    for i in range(4):
        a, b = f[i], f[i + 4]
        if head == "distance":
            sp = float(torch.nn.functional.softplus(loss.head.log_a.detach()))
            z = -sp * dist(a, b) + float(loss.head.b.detach())
        else:
            diff = torch.tensor([abs(u - v) for u, v in zip(a, b, strict=True)], dtype=torch.float64)
            z = float(loss.head.net(diff[None]).detach()[0, 0])
        p = 1 / (1 + math.exp(-z))
        y = 1.0 if labels[i] == labels[i + 4] else 0.0
        total += -(y * math.log(p) + (1 - y) * math.log(1 - p))
    out = loss(x, labels)
    assert out.loss.item() == pytest.approx(total / 4, rel=1e-9)
    same = torch.tensor([True, False, True, False])
    assert loss(x, labels, same=same).loss.item() == pytest.approx(total / 4, rel=1e-9)
    assert out.stats["n_pairs"] == 4
    with pytest.raises(InputError, match="pair labels"):
        loss(x, labels, same=torch.tensor([True, False]))
    with pytest.raises(InputError, match="pair batch"):
        loss(x[:7], labels[:7])


def simple_circle_formula(x: torch.Tensor, y: torch.Tensor, m: float, gamma: float) -> float:
    """Study 3's eq. 12, log[1 + sum_p exp(-gamma (s_p - m)) sum_n exp(gamma (s_n + m))] (the positive
    term's sign read as Sun et al.'s unified form; fvtool/losses/circle.py says why), per anchor."""
    return _anchor_mean(x, y, lambda sp, sn: math.log1p(
        sum(math.exp(-gamma * (s - m)) for s in sp) * sum(math.exp(gamma * (s + m)) for s in sn)))


def test_simple_circle_equals_the_source_formula_and_pulls_positives_together() -> None:
    x, y = batch(11)
    for m, gamma in ((0.25, 16.0), (0.1, 4.0)):
        out = build_loss("circle", margin=m, scale=gamma, form="simple")(x, y)
        assert out.loss.item() == pytest.approx(simple_circle_formula(x, y, m, gamma), rel=1e-9)
    # equals Sun et al.'s unified loss log[1 + sum_ij exp(gamma (s_n^j - s_p^i + 2m))] with margin 2m
    f = F.normalize(x, dim=1)
    s = f @ f.t()
    per = []
    for i in range(len(y)):
        pos = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        neg = [j for j in range(len(y)) if y[j] != y[i]]
        if pos and neg:
            per.append(math.log1p(sum(math.exp(4.0 * (s[i, n] - s[i, p] + 0.2)) for p in pos for n in neg)))
    assert build_loss("circle", margin=0.1, scale=4.0, form="simple")(x, y).loss.item() == pytest.approx(
        sum(per) / len(per), rel=1e-9)
    # a gradient step raises the positive similarity (the printed sign would lower it)
    a = torch.tensor([[1.0, 0.0], [0.6, 0.8], [-1.0, 0.1]], dtype=torch.float64, requires_grad=True)
    lab = torch.tensor([0, 0, 1])
    loss = build_loss("circle", margin=0.25, scale=4.0, form="simple")(a, lab).loss
    g, = torch.autograd.grad(loss, a)
    moved = F.normalize(a.detach() - 0.1 * g, dim=1)
    assert float(moved[0] @ moved[1]) > float(F.normalize(a.detach(), dim=1)[0] @ F.normalize(a.detach(), dim=1)[1])
    with pytest.raises(InputError, match="form must be one of sun, simple"):
        build_loss("circle", form="plain")
