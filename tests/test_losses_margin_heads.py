"""AdaFace, MagFace and CurricularFace against a direct float64 re-computation of each paper's formula
(written out per sample, as the authors' heads compute it): loss value, gradients for the embeddings
and the class weights, and the running statistics (EMA) they keep."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from fvtool.errors import InputError
from fvtool.losses.registry import build_loss, loss_specs
from fvtool.training.loss_defaults import has_class_count_scale

pytestmark = pytest.mark.usefixtures("one_thread")

D, C, B = 6, 7, 10


def batch(seed: int = 3, lo: float = 4.0, hi: float = 40.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Embeddings with norms spread over [lo, hi] (the margins depend on them), every class present."""
    g = torch.Generator().manual_seed(seed)
    x = F.normalize(torch.randn(B, D, generator=g, dtype=torch.float64), dim=1)
    x = x * torch.linspace(lo, hi, B, dtype=torch.float64)[torch.randperm(B, generator=g)][:, None]
    y = torch.randint(0, C, (B,), generator=g)
    y[:C] = torch.arange(C)
    return x, y


def cosines(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return (x / x.norm(dim=1, keepdim=True)) @ (w / w.norm(dim=1, keepdim=True)).T


def ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.logsumexp(row, 0) - row[t] for row, t in zip(logits, y.tolist(), strict=True)]).mean()


def ref_adaface(x, w, y, mu, sd, m=0.4, h=0.333, s=64.0, alpha=0.01):
    """Kim et al. 2022 with the authors' head.py order: update the norm EMA, then the margins."""
    eps = 1e-3
    safe = x.norm(dim=1).detach().clamp(0.001, 100)
    mu = alpha * safe.mean() + (1 - alpha) * mu
    sd = alpha * safe.std() + (1 - alpha) * sd
    cos = cosines(x, w).clamp(-1 + eps, 1 - eps)
    rows = []
    for i, t in enumerate(y.tolist()):
        z = float(((safe[i] - mu) / (sd + eps) * h).clamp(-1, 1))
        theta = torch.acos(cos[i, t])
        target = torch.cos(torch.clamp(theta - m * z, eps, math.pi - eps)) - (m + m * z)
        rows.append(torch.cat([cos[i, :t], target[None], cos[i, t + 1:]]))
    return ce(s * torch.stack(rows), y), mu, sd


def ref_magface(x, w, y, s=64.0, l_a=10.0, u_a=110.0, l_m=0.45, u_m=0.8, lam=35.0):
    """Meng et al. 2021 (easy margin, the authors' default): s cos(theta + m(a)) + lambda_g mean g(a)."""
    cos = cosines(x, w).clamp(-1, 1)
    a = x.norm(dim=1).clamp(l_a, u_a)
    rows, g = [], []
    for i, t in enumerate(y.tolist()):
        m = (u_m - l_m) / (u_a - l_a) * (a[i] - l_a) + l_m
        c = cos[i, t]
        target = torch.cos(torch.acos(c.clamp(-1 + 1e-12, 1 - 1e-12)) + m) if c > 0 else c
        rows.append(torch.cat([cos[i, :t], target[None], cos[i, t + 1:]]))
        g.append(1 / a[i] + a[i] / u_a ** 2)
    return ce(s * torch.stack(rows), y) + lam * torch.stack(g).mean()


def ref_curricular(x, w, y, t_prev, m=0.5, s=64.0, alpha=0.01):
    """Huang et al. 2020: t EMA of the mean target cosine, then N(t, cos) = cos (t + cos) on hard negatives."""
    cos = cosines(x, w).clamp(-1, 1)
    cy = cos[torch.arange(B), y]
    t = alpha * float(cy.detach().mean()) + (1 - alpha) * t_prev
    rows = []
    for i, k in enumerate(y.tolist()):
        theta = torch.acos(cy[i].clamp(-1 + 1e-12, 1 - 1e-12))
        ctm = torch.cos(theta + m)
        row = []
        for j in range(C):
            if j == k:
                row.append(ctm if theta < math.pi - m else cy[i] - m * math.sin(math.pi - m))
            elif cos[i, j] > ctm.detach():
                row.append(cos[i, j] * (t + cos[i, j]))
            else:
                row.append(cos[i, j])
        rows.append(torch.stack(row))
    return ce(s * torch.stack(rows), y), t


def run(loss: torch.nn.Module, x: torch.Tensor, y: torch.Tensor):
    xv = x.clone().requires_grad_(True)
    out = loss(xv, y)
    loss.weight.grad = None
    out.loss.backward()
    return out, xv.grad, loss.weight.grad.double()


def ref_grads(fn, x, w):
    xr, wr = x.clone().requires_grad_(True), w.detach().double().clone().requires_grad_(True)
    value = fn(xr, wr)
    value.backward()
    return value, xr.grad, wr.grad


def test_registered() -> None:
    specs = loss_specs()
    for name in ("adaface", "magface", "curricularface"):
        assert specs[name].family == "classification" and specs[name].summary
        # the class-count scale of the cosine losses (AdaCos), and fvtool train's warm-up with it
        s = build_loss(name, embedding_size=D, num_classes=1001).scale
        assert s == pytest.approx(math.sqrt(2) * math.log(1000))
        assert has_class_count_scale(name)


def test_adaface_matches_paper_formula_and_keeps_norm_statistics() -> None:
    torch.manual_seed(0)
    loss = build_loss("adaface", embedding_size=D, num_classes=C, scale=16.0, t_alpha=0.3)
    mu, sd = 20.0, 100.0
    for seed in (3, 4):  # two steps: the second uses statistics moved by the first
        x, y = batch(seed)
        out, gx, gw = run(loss, x, y)
        value, rgx, rgw = ref_grads(lambda xr, wr, y=y, mu=mu, sd=sd: ref_adaface(xr, wr, y, mu, sd, s=16.0,
                                                                                 alpha=0.3)[0], x, loss.weight)
        _, mu, sd = ref_adaface(x, loss.weight.double(), y, mu, sd, s=16.0, alpha=0.3)
        assert float(out.loss.detach()) == pytest.approx(float(value), rel=1e-5)
        torch.testing.assert_close(gx, rgx, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gw, rgw, rtol=1e-4, atol=1e-6)
        assert float(loss.batch_mean) == pytest.approx(float(mu), rel=1e-6)
        assert float(loss.batch_std) == pytest.approx(float(sd), rel=1e-6)
    loss.eval()
    before = float(loss.batch_mean)
    loss(*batch(5))
    assert float(loss.batch_mean) == before  # evaluation does not move the statistics
    assert set(loss.state_dict()) >= {"batch_mean", "batch_std"}


def test_adaface_margin_follows_the_norm() -> None:
    """z = -1 is ArcFace's margin m, z = +1 is angle -m with additive 2m (the paper's Fig. 3)."""
    loss = build_loss("adaface", embedding_size=D, num_classes=C, margin=0.4, h=1.0, t_alpha=1.0)
    loss.batch_mean.fill_(20.0)
    loss.batch_std.fill_(1.0)
    cos = torch.tensor([[0.5, 0.1], [0.5, 0.1]])
    logits = loss.margin_logits(cos, torch.tensor([0, 0]), cos[:, 0], torch.tensor([10.0, 30.0])) / loss.scale
    theta = math.acos(0.5)
    assert float(logits[0, 0]) == pytest.approx(math.cos(theta + 0.4), abs=1e-6)
    assert float(logits[1, 0]) == pytest.approx(math.cos(theta - 0.4) - 0.8, abs=1e-6)
    assert torch.equal(logits[:, 1], torch.tensor([0.1, 0.1]))


def test_magface_matches_paper_formula() -> None:
    torch.manual_seed(0)
    loss = build_loss("magface", embedding_size=D, num_classes=C, scale=16.0)
    x, y = batch(3, lo=5.0, hi=130.0)  # both clamps of a = |x| exercised
    out, gx, gw = run(loss, x, y)
    value, rgx, rgw = ref_grads(lambda xr, wr: ref_magface(xr, wr, y, s=16.0), x, loss.weight)
    assert float(out.loss.detach()) == pytest.approx(float(value), rel=1e-5)
    assert out.components["g"] > 0 and set(out.components) >= {"ce", "g"}
    torch.testing.assert_close(gx, rgx, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, rgw, rtol=1e-4, atol=1e-6)
    assert loss.min_lambda_g() == pytest.approx(16 * 0.0035 * 110 ** 2 * 100 / (110 ** 2 - 100))


def test_magface_regulariser_pulls_the_magnitude_up_and_margin_grows_with_it() -> None:
    loss = build_loss("magface", embedding_size=D, num_classes=C)
    x = torch.full((2, D), 1.0, requires_grad=True)  # |x| = sqrt(6) < l_a: clamped, no gradient from g
    assert float(loss.regularisers(x)["g"]) == pytest.approx(35 * (1 / 10 + 10 / 110 ** 2))
    cos = torch.tensor([[0.6, 0.0], [0.6, 0.0]])
    logits = loss.margin_logits(cos, torch.tensor([0, 0]), cos[:, 0], torch.tensor([10.0, 110.0])) / loss.scale
    assert float(logits[0, 0]) == pytest.approx(math.cos(math.acos(0.6) + 0.45), abs=1e-6)
    assert float(logits[1, 0]) == pytest.approx(math.cos(math.acos(0.6) + 0.8), abs=1e-6)


def test_curricularface_matches_paper_formula_and_updates_t() -> None:
    torch.manual_seed(0)
    loss = build_loss("curricularface", embedding_size=D, num_classes=C, scale=16.0, t_alpha=0.4)
    t = 0.0
    for seed in (3, 4):
        x, y = batch(seed)
        out, gx, gw = run(loss, x, y)
        value, rgx, rgw = ref_grads(lambda xr, wr, y=y, t=t: ref_curricular(xr, wr, y, t, s=16.0, alpha=0.4)[0],
                                    x, loss.weight)
        t = ref_curricular(x, loss.weight.double(), y, t, s=16.0, alpha=0.4)[1]
        assert float(out.loss.detach()) == pytest.approx(float(value), rel=1e-5)
        torch.testing.assert_close(gx, rgx, rtol=1e-4, atol=1e-6)
        torch.testing.assert_close(gw, rgw, rtol=1e-4, atol=1e-6)
        assert float(loss.t) == pytest.approx(t, rel=1e-6) and out.components["t"] == pytest.approx(t, rel=1e-6)
    assert t != 0.0


def test_options_are_checked() -> None:
    with pytest.raises(InputError, match="u_a"):
        build_loss("magface", embedding_size=D, num_classes=C, l_a=50, u_a=20)
    with pytest.raises(InputError, match="t_alpha"):
        build_loss("adaface", embedding_size=D, num_classes=C, t_alpha=0)
    with pytest.raises(InputError, match="does not take"):
        build_loss("curricularface", embedding_size=D, num_classes=C, h=0.3)
    loss = build_loss("adaface", embedding_size=D, num_classes=C)
    with pytest.raises(InputError, match="at least 2"):
        loss(torch.randn(1, D), torch.tensor([0]))
